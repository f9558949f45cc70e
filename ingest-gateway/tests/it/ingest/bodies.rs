//! Request bodies: the size limit before and after gzip, content types and encodings, and
//! bodies or headers trickled in too slowly.

use std::io::Write;
use std::time::{Duration, Instant};

use http::Method;

use crate::helpers::Gateway;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("write");
    enc.finish().expect("finish")
}

#[tokio::test]
async fn body_size_limit_before_and_after_decompression() {
    let gw = Gateway::start(&[("MAX_BODY_BYTES", "16384")]).await;
    let auth = format!("Bearer {}", gw.app.ingest_key);
    let padded = |len: usize| {
        let base = r#"{"event_name":"a","metadata":{"p":""}}"#;
        let pad = "x".repeat(len - base.len());
        format!(r#"{{"event_name":"a","metadata":{{"p":"{pad}"}}}}"#)
    };
    assert_eq!(padded(16384).len(), 16384);
    assert_eq!(gw.post(padded(16384)).await.status, 202);
    let r = gw.post(padded(16385)).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (413, Some("body_too_large"))
    );
    let gz_headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let r = gw
        .request(
            Method::POST,
            "/v1/events",
            &gz_headers,
            gzip(padded(16384).as_bytes()),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = gw
        .request(
            Method::POST,
            "/v1/events",
            &gz_headers,
            gzip(padded(16385).as_bytes()),
        )
        .await;
    assert_eq!(r.status, 413, "limit holds after decompression");
    // A gzip bomb: 8 MiB of spaces in about 8 KB, under the limit, inflating far past it.
    let bomb = gzip(&vec![b' '; 8 << 20]);
    assert!(bomb.len() < 16384, "{}", bomb.len());
    let r = gw
        .request(Method::POST, "/v1/events", &gz_headers, bomb)
        .await;
    assert_eq!(r.status, 413);
    let r = gw
        .request(Method::POST, "/v1/events", &gz_headers, &b"not gzip"[..])
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("invalid_gzip"))
    );
    assert_eq!(gw.queued().await.len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn the_default_body_limit_is_1_mib() {
    let gw = Gateway::start(&[]).await;
    let base = r#"{"event_name":"a","user_id":"u"}"#;
    let body = format!("{base}{}", " ".repeat((1 << 20) - base.len()));
    assert_eq!(gw.post(body.clone()).await.status, 202);
    assert_eq!(gw.post(format!("{body} ")).await.status, 413);
    gw.stop().await;
}

#[tokio::test]
async fn other_content_types_and_encodings_get_415() {
    let gw = Gateway::start(&[]).await;
    let auth = format!("Bearer {}", gw.app.ingest_key);
    let body = r#"{"event_name":"a"}"#;
    for (ct, enc, code) in [
        (
            "application/x-www-form-urlencoded",
            None,
            "unsupported_content_type",
        ),
        ("application/xml", None, "unsupported_content_type"),
        (
            "application/json",
            Some("br"),
            "unsupported_content_encoding",
        ),
    ] {
        let mut h = vec![("authorization", auth.as_str()), ("content-type", ct)];
        if let Some(e) = enc {
            h.push(("content-encoding", e));
        }
        let r = gw.request(Method::POST, "/v1/events", &h, body).await;
        assert_eq!((r.status, r.body["error"].as_str()), (415, Some(code)));
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_with_408_and_slow_headers_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&[
        ("BODY_READ_TIMEOUT_MS", "500"),
        ("HEADER_READ_TIMEOUT_MS", "500"),
    ])
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        gw.app.ingest_key
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Headers that never finish: the connection is closed by the header timeout.
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf2 = vec![0u8; 1024];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf2))
        .await
        .expect("closed in time");
    match r {
        Ok(0) | Err(_) => {}
        Ok(n) => assert!(
            String::from_utf8_lossy(&buf2[..n]).contains(" 408 "),
            "{:?}",
            &buf2[..n]
        ),
    }
    // Meanwhile others are served.
    assert_eq!(gw.post(r#"{"event_name":"a"}"#).await.status, 202);
    gw.stop().await;
}

#[tokio::test]
async fn a_body_trickled_a_byte_at_a_time_is_cut_off_by_the_body_timeout_not_kept_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&[("BODY_READ_TIMEOUT_MS", "1000")]).await;
    let s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        gw.app.ingest_key
    );
    wr.write_all(head.as_bytes()).await.expect("write");
    // One byte every 200 ms: each arrives well within any idle timeout, but the body as a whole
    // takes far longer than BODY_READ_TIMEOUT_MS.
    let trickle = tokio::spawn(async move {
        for b in br#"[{"event_name":"slow","metadata":{"pad":""#.iter().cycle().take(100) {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
        .await
        .expect("answered before the trickle ends")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Others are served meanwhile and after.
    assert_eq!(gw.post(r#"{"event_name":"a"}"#).await.status, 202);
    trickle.abort();
    gw.stop().await;
}
