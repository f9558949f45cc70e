//! An SDK's retry after it lost the gateway's answer: the events are stored once.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{drive, run_id, segment_format, with_pipeline};

/// A proxy in front of the gateway that passes the first request on but drops the gateway's
/// answer (the client sees a broken connection after the events were queued), then passes
/// everything through. Returns its address and a counter of the requests it saw.
async fn answer_dropping_proxy(
    to: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                if n > 0 {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                // The first connection: forward one whole request, wait for the whole answer,
                // then close the client's connection without it.
                let request = read_message(&mut client).await;
                if server.write_all(&request).await.is_err() {
                    return;
                }
                let answer = read_message(&mut server).await;
                assert!(
                    answer.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&answer)
                );
            });
        }
    });
    (addr, seen)
}

/// One HTTP/1.1 message with a Content-Length body.
async fn read_message(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return buf;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_retries_after_a_lost_answer_are_stored_once() {
    with_pipeline(|gw| async move {
        let (proxy, seen) = answer_dropping_proxy(gw.addr).await;
        let via = format!("http://{proxy}");
        let run = run_id();
        drive(
            "node",
            &["sdk.js", "segment", &via, &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        assert!(
            seen.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "the SDK retried"
        );
        segment_format(&gw, "segment", &run, false).await;
        gw.db
            .client()
            .await
            .batch_execute("TRUNCATE analytics_events")
            .await
            .expect("truncate");
        let (proxy, seen) = answer_dropping_proxy(gw.addr).await;
        let via = format!("http://{proxy}");
        let run = run_id();
        let key = gw.app.ingest_key.clone();
        drive("python", &["sdk.py", "rudder", &via, &key, &run], &[]).await;
        assert!(
            seen.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "the SDK retried"
        );
        segment_format(&gw, "rudder", &run, true).await;
        gw
    })
    .await;
}
