//! The operations endpoint every daemon serves on `METRICS_ADDR`: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (the daemon can do its work).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::tasks::Tasks;

/// What `/readyz` reports: ready or not, with a JSON detail for the operator.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub ready: bool,
    pub detail: serde_json::Value,
}

/// Computes readiness on each `/readyz` request.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Readiness> + Send + Sync>;

/// A check that is always ready, for daemons with nothing to check yet.
pub fn always_ready() -> ReadyCheck {
    Arc::new(|| {
        Box::pin(async {
            Readiness {
                ready: true,
                detail: serde_json::json!({}),
            }
        })
    })
}

struct OpsState {
    metrics: PrometheusHandle,
    ready: ReadyCheck,
    shutdown: CancellationToken,
    tasks: Tasks,
}

/// Serves the operations endpoint until `shutdown` is cancelled. From the moment it is
/// cancelled `/readyz` answers 503, so load balancers stop sending work first. Once one of
/// `tasks` has died, `/healthz` and `/readyz` answer 503 naming it.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    ready: ReadyCheck,
    shutdown: CancellationToken,
    stopped: CancellationToken,
    tasks: Tasks,
) {
    spawn_upkeep(metrics.clone(), stopped.clone());
    let state = Arc::new(OpsState {
        metrics,
        ready,
        shutdown,
        tasks,
    });
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "Ops endpoint accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.cancelled() => return,
        };
        tokio::spawn(serve_connection(state.clone(), stream));
    }
}

/// The recorder's upkeep (histogram buckets drained) every 5 seconds until `stopped`.
fn spawn_upkeep(metrics: PrometheusHandle, stopped: CancellationToken) {
    tokio::spawn(crate::shutdown::every(
        Duration::from_secs(5),
        stopped,
        move || {
            metrics.run_upkeep();
            std::future::ready(())
        },
    ));
}

/// Answers the requests of one connection, for a minute at most.
async fn serve_connection(state: Arc<OpsState>, stream: tokio::net::TcpStream) {
    let svc = service_fn(move |req| handle(state.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
}

async fn handle(
    state: Arc<OpsState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"));
    }
    let resp = match req.uri().path() {
        "/metrics" => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(state.metrics.render())))
            .unwrap_or_default(),
        "/healthz" => healthz(&state),
        "/readyz" => readyz(&state).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// 200 while every watched task runs; 503 naming those that died.
fn healthz(state: &OpsState) -> Response<Full<Bytes>> {
    let dead = state.tasks.dead();
    if dead.is_empty() {
        json(StatusCode::OK, serde_json::json!({"status": "ok"}))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unhealthy", "dead_tasks": dead}),
        )
    }
}

/// The daemon's own check, unless a task died or shutdown began (503 either way).
async fn readyz(state: &OpsState) -> Response<Full<Bytes>> {
    let dead = state.tasks.dead();
    let r = if !dead.is_empty() {
        Readiness {
            ready: false,
            detail: serde_json::json!({"dead_tasks": dead}),
        }
    } else if state.shutdown.is_cancelled() {
        Readiness {
            ready: false,
            detail: serde_json::json!({"shutting_down": true}),
        }
    } else {
        (state.ready)().await
    };
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({"ready": r.ready, "detail": r.detail}),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}
