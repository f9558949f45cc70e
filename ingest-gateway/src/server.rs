//! The client-facing HTTP server: accept loop with a connection cap, HTTP/1.1 keep-alive, header
//! and body read timeouts, and graceful shutdown (stop accepting, finish in-flight requests, exit
//! within the grace period).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::routes::{self, AppState};

/// Serves until `shutdown` is cancelled, then drains connections for at most `grace`.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(state.config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    while let Some((permit, stream)) = accept(&listener, &permits, &shutdown).await {
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(routes::handle(state, req).await) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    drain(graceful, state.config.shutdown_grace).await;
}

/// The next connection, once a permit under the connection cap is free; `None` at shutdown.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<(OwnedSemaphorePermit, TcpStream)> {
    let permit = tokio::select! {
        p = permits.clone().acquire_owned() => p.ok()?,
        _ = shutdown.cancelled() => return None,
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => return Some((permit, stream)),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Waits for the open connections to finish, at most `grace`.
async fn drain(graceful: GracefulShutdown, grace: Duration) {
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("All connections drained."),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "Grace period over; closing remaining connections."),
    }
}
