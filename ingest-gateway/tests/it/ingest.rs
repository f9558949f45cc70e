use std::io::Write;
use std::time::{Duration, Instant};

use http::Method;

use crate::helpers::{cleanup, redis_conn, Gateway};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("write");
    enc.finish().expect("finish")
}

fn events(n: usize) -> String {
    let one = r#"{"event_name":"e"}"#;
    format!("[{}]", vec![one; n].join(","))
}

#[tokio::test]
async fn a_single_event_is_queued_with_a_uuid_v7_and_answered_202() {
    let gw = Gateway::start(&[]).await;
    let before = chrono::Utc::now().timestamp_micros();
    let r = gw
        .post(r#"{"event_name":"signup","user_id":"u1","metadata":{"plan":"pro"}}"#)
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body, serde_json::json!({"accepted": 1, "rejected": []}));
    let q = gw.queued().await;
    assert_eq!(q.len(), 1);
    let e = &q[0];
    assert_eq!(e.event_id.get_version_num(), 7);
    assert_eq!(e.app_id, gw.app.app_id);
    assert_eq!(e.event_name, "signup");
    assert_eq!(e.user_id.as_deref(), Some("u1"));
    assert_eq!(e.metadata.as_deref(), Some(r#"{"plan":"pro"}"#));
    assert!(e.received_at_us >= before && e.occurred_at_us == e.received_at_us);
    let mut conn = redis_conn().await;
    let depth: i64 = redis::cmd("GET")
        .arg(gw.keys().depth(0))
        .query_async(&mut conn)
        .await
        .unwrap_or(0);
    let depth1: i64 = redis::cmd("GET")
        .arg(gw.keys().depth(1))
        .query_async(&mut conn)
        .await
        .unwrap_or(0);
    assert_eq!(depth + depth1, 1, "the depth counter follows the queue");
    gw.stop().await;
}

#[tokio::test]
async fn a_mixed_batch_queues_the_valid_events_and_reports_the_others_by_index() {
    let gw = Gateway::start(&[]).await;
    let r = gw
        .post(
            r#"[{"event_name":"a","event_id":"0192f0c1-7c4a-7b3e-8f00-000000000001"},
                {"event_name":""},
                {"event_name":"b","colour":"red"},
                {"event_name":"c"},
                "text"]"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["accepted"], 2);
    let idx: Vec<u64> = r.body["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|x| x["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(idx, vec![1, 2, 4]);
    assert!(r.body["rejected"][1]["error"]
        .as_str()
        .expect("error")
        .contains("colour"));
    let mut names: Vec<String> = gw
        .queued()
        .await
        .into_iter()
        .map(|e| e.event_name)
        .collect();
    names.sort();
    assert_eq!(names, vec!["a", "c"]);
    gw.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_400_with_a_code() {
    let gw = Gateway::start(&[("MAX_EVENTS_PER_REQUEST", "3")]).await;
    for (body, code) in [
        ("not json", "invalid_json"),
        ("\"a string\"", "invalid_body"),
        ("[]", "empty_batch"),
        (
            r#"[{"event_name":"a"},{"event_name":"a"},{"event_name":"a"},{"event_name":"a"}]"#,
            "too_many_events",
        ),
        (r#"[{"event_name":""},{"x":1}]"#, "invalid_events"),
    ] {
        let r = gw.post(body.to_owned()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.body["error"], code, "{body}: {}", r.body);
        assert!(r.body["message"].is_string());
    }
    let r = gw.post(r#"[{"event_name":""},{"x":1}]"#).await;
    assert_eq!(r.body["rejected"].as_array().map(Vec::len), Some(2));
    let at_limit = gw.post(events(3)).await;
    assert_eq!(at_limit.status, 202);
    assert!(gw.queued().await.len() == 3, "nothing else was queued");
    gw.stop().await;
}

#[tokio::test]
async fn the_default_batch_limit_is_1000_events() {
    let gw = Gateway::start(&[]).await;
    assert_eq!(gw.post(events(1000)).await.status, 202);
    let r = gw.post(events(1001)).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("too_many_events"))
    );
    assert_eq!(gw.queued().await.len(), 1000);
    gw.stop().await;
}

#[tokio::test]
async fn keys_401_and_403() {
    let gw = Gateway::start(&[]).await;
    let body = r#"{"event_name":"a"}"#;
    let ct = ("content-type", "application/json");
    let r = gw.request(Method::POST, "/v1/events", &[ct], body).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("missing_key"))
    );
    let r = gw
        .request(
            Method::POST,
            "/v1/events",
            &[ct, ("x-api-key", "sk_ingest_nope")],
            body,
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("invalid_key"))
    );
    let r = gw
        .request(
            Method::POST,
            "/v1/events",
            &[ct, ("x-api-key", &gw.app.read_key)],
            body,
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("read_key"))
    );
    let r = gw
        .request(
            Method::POST,
            "/v1/events",
            &[ct, ("x-api-key", &gw.app.ingest_key)],
            body,
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(gw.queued().await.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_the_refresh_time() {
    let gw = Gateway::start(&[("KEY_REFRESH_MS", "200")]).await;
    assert_eq!(gw.post(r#"{"event_name":"a"}"#).await.status, 202);
    let pools = shared::db::Pools::new(&gw.db.config()).expect("pools");
    ingest_gateway::apps::revoke_key(&pools.write, &gw.app.ingest_key)
        .await
        .expect("revoke");
    let started = Instant::now();
    loop {
        let r = gw.post(r#"{"event_name":"a"}"#).await;
        if r.status == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still accepted after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await;
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
async fn send_beacon_form_text_plain_with_the_key_in_the_query() {
    let gw = Gateway::start(&[]).await;
    let path = format!("/v1/events?api_key={}", gw.app.ingest_key);
    let r = gw
        .request(
            Method::POST,
            &path,
            &[
                ("content-type", "text/plain;charset=UTF-8"),
                ("origin", "https://shop.example"),
            ],
            r#"[{"event_name":"page_view"}]"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"*"[..])
    );
    gw.stop().await;
}

#[tokio::test]
async fn cors_preflight_and_headers_follow_the_allowed_origins() {
    let gw = Gateway::start(&[(
        "CORS_ALLOWED_ORIGINS",
        "https://a.example,https://b.example",
    )])
    .await;
    let r = gw
        .request(
            Method::OPTIONS,
            "/v1/events",
            &[
                ("origin", "https://b.example"),
                ("access-control-request-method", "POST"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://b.example"
    );
    assert!(r.headers["access-control-allow-methods"]
        .to_str()
        .expect("ascii")
        .contains("POST"));
    assert!(r.headers["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .contains("content-type"));
    let r = gw
        .request(
            Method::OPTIONS,
            "/v1/events",
            &[("origin", "https://evil.example")],
            "",
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.headers.get("access-control-allow-origin").is_none());
    let auth = format!("Bearer {}", gw.app.ingest_key);
    let r = gw
        .request(
            Method::POST,
            "/v1/events",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("origin", "https://a.example"),
            ],
            r#"{"event_name":"a"}"#,
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://a.example"
    );
    gw.stop().await;
}

#[tokio::test]
async fn sent_at_corrects_the_client_clock() {
    let gw = Gateway::start(&[]).await;
    let now = chrono::Utc::now();
    // The client's clock runs 2 hours behind ours.
    let client_now = now - chrono::Duration::hours(2);
    let ts = (client_now - chrono::Duration::minutes(5)).to_rfc3339();
    let body = format!(
        r#"{{"event_name":"a","timestamp":"{ts}","sent_at":"{}"}}"#,
        client_now.to_rfc3339()
    );
    assert_eq!(gw.post(body).await.status, 202);
    let e = &gw.queued().await[0];
    let want = (now - chrono::Duration::minutes(5)).timestamp_micros();
    assert!(
        (e.occurred_at_us - want).abs() < 2_000_000,
        "{} vs {want}",
        e.occurred_at_us
    );
    gw.stop().await;
}

#[tokio::test]
async fn timestamps_outside_the_window_are_rejected_per_event() {
    let gw = Gateway::start(&[]).await;
    let old = (chrono::Utc::now() - chrono::Duration::days(400)).to_rfc3339();
    let future = (chrono::Utc::now() + chrono::Duration::hours(26)).to_rfc3339();
    let body = format!(
        r#"[{{"event_name":"a","timestamp":"{old}"}},{{"event_name":"b","timestamp":"{future}"}},{{"event_name":"c"}}]"#
    );
    let r = gw.post(body).await;
    assert_eq!(r.status, 202);
    assert!(r.body["rejected"][0]["error"]
        .as_str()
        .expect("e")
        .contains("retention"));
    assert!(r.body["rejected"][1]["error"]
        .as_str()
        .expect("e")
        .contains("future"));
    gw.stop().await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let gw = Gateway::start(&[("RATE_LIMIT_EVENTS_PER_SEC", "5")]).await;
    // Align to the start of a second so the window does not roll over mid-test.
    let ms = chrono::Utc::now().timestamp_subsec_millis();
    if ms > 500 {
        tokio::time::sleep(Duration::from_millis(1010 - ms as u64)).await;
    }
    assert_eq!(gw.post(events(5)).await.status, 202, "at the limit");
    let r = gw.post(events(1)).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(r.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gw.post(events(1)).await.status, 202, "a new second");
    assert_eq!(gw.queued().await.len(), 6);
    gw.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_503_and_turns_readyz_503() {
    let gw = Gateway::start(&[("QUEUE_HIGH_WATER", "10")]).await;
    assert_eq!(gw.post(events(10)).await.status, 202, "at the mark");
    let started = Instant::now();
    let r = loop {
        let r = gw.post(events(1)).await;
        if r.status != 202 || started.elapsed() > Duration::from_secs(2) {
            break r;
        }
    };
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (503, Some("queue_full")),
        "{}",
        r.body
    );
    assert!(r.headers.contains_key("retry-after"));
    let (status, body) = testkit::http_get(&gw.addr.to_string(), "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 503, "{body}");
    let (status, _) = testkit::http_get(&gw.ops.to_string(), "/readyz")
        .await
        .expect("ops readyz");
    assert_eq!(status, 503);
    // Draining the queue (the writer's job) makes it ready again.
    let mut conn = redis_conn().await;
    for k in gw.keys().all_depths() {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(0)
            .query_async(&mut conn)
            .await
            .expect("set");
    }
    let ready = testkit::wait_for(Duration::from_secs(3), || async {
        testkit::http_get(&gw.addr.to_string(), "/readyz")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    assert!(ready.is_some());
    assert_eq!(gw.post(events(1)).await.status, 202);
    gw.stop().await;
}

#[tokio::test]
async fn an_unreachable_redis_gets_503_fast_and_readyz_503() {
    let port = testkit::free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let gw = Gateway::start(&[("REDIS_URL", &url)]).await;
    let started = Instant::now();
    let r = gw.post(r#"{"event_name":"a"}"#).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (503, Some("queue_unavailable"))
    );
    assert!(r.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(3));
    let (status, _) = testkit::http_get(&gw.addr.to_string(), "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 503);
    assert_eq!(
        testkit::http_get(&gw.addr.to_string(), "/healthz")
            .await
            .map(|r| r.0),
        Some(200)
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_gateway_reconnects_when_redis_comes_back() {
    let port = testkit::free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let gw = Gateway::start(&[("REDIS_URL", &url)]).await;
    assert_eq!(gw.post(r#"{"event_name":"a"}"#).await.status, 503);
    let mut redis = crate::helpers::spawn_redis(port, "noeviction");
    let ok = testkit::wait_for(Duration::from_secs(10), || async {
        (gw.post(r#"{"event_name":"a"}"#).await.status == 202).then_some(())
    })
    .await;
    assert!(ok.is_some(), "never accepted after Redis came back");
    let _ = redis.kill();
    let _ = redis.wait();
    let r = gw.post(r#"{"event_name":"a"}"#).await;
    assert_eq!(r.status, 503, "Redis gone again: 503, not a hang or a 500");
    gw.shutdown.cancel();
    let _ = gw.task.await;
}

#[tokio::test]
async fn an_evicting_redis_is_refused_at_start() {
    let port = testkit::free_port();
    let mut redis = crate::helpers::spawn_redis(port, "allkeys-lru");
    let url = format!("redis://127.0.0.1:{port}/");
    testkit::wait_for(Duration::from_secs(5), || async {
        redis::Client::open(url.as_str())
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()
    })
    .await
    .expect("test redis up");
    let db = testkit::TestDb::migrated().await;
    let err = match Gateway::start_on(db, &[("REDIS_URL", &url)]).await {
        Ok(gw) => panic!("the gateway started on {} with an evicting Redis", gw.addr),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("noeviction") || err.contains("allkeys-lru"),
        "{err}"
    );
    let _ = redis.kill();
    let _ = redis.wait();
}

#[tokio::test]
async fn metrics_count_accepted_and_rejected_events() {
    let gw = Gateway::start(&[]).await;
    gw.post(r#"[{"event_name":"a"},{"event_name":""},{"event_name":"b"}]"#)
        .await;
    let (_, m) = testkit::http_get(&gw.ops.to_string(), "/metrics")
        .await
        .expect("metrics");
    assert!(
        m.contains("sluice_events_accepted_total{api=\"native\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("sluice_events_rejected_total{api=\"native\",reason=\"invalid_event\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("sluice_http_request_duration_seconds_bucket{route=\"events\",status=\"2xx\""),
        "{m}"
    );
    cleanup(&gw.prefix).await;
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
