//! HTTP for tests and load: a spare port, a minimal GET for ops endpoints, and the one sender
//! every load of tests, benchmarks and the fault suite posts with.

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A minimal HTTP/1.0 GET for tests: the status code and the body, or `None` when nothing
/// answers.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// One HTTP client for every load and every JSON call that tests and benchmarks send: POSTs (or
/// another method) a JSON body to one URL (or below it) with one `Authorization` header over a
/// pool of keep-alive connections (Nagle off), and returns the status and the body, or `None`
/// when no answer came within `timeout`.
#[derive(Clone)]
pub struct HttpSender {
    pub url: String,
    auth: String,
    timeout: std::time::Duration,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl HttpSender {
    pub fn new(url: String, authorization: String, connections: usize) -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(connections)
                .pool_idle_timeout(std::time::Duration::from_secs(5))
                .build(connector);
        Self {
            url,
            auth: authorization,
            timeout: std::time::Duration::from_secs(10),
            client,
        }
    }

    /// Posts `body`; the status and the whole answer.
    pub async fn post(&self, body: bytes::Bytes) -> Option<(u16, bytes::Bytes)> {
        self.request(http::Method::POST, "", body).await
    }

    /// Sends a `method` request with `body` to the sender's URL followed by `path` (`""`: the
    /// URL itself); the status and the whole answer.
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: bytes::Bytes,
    ) -> Option<(u16, bytes::Bytes)> {
        use http_body_util::BodyExt;
        let req = http::Request::builder().method(method);
        let req = match path {
            "" => req.uri(self.url.as_str()),
            _ => req.uri(format!("{}{path}", self.url)),
        };
        // An empty authorization sends none (PostHog's v0 key is in the body).
        let req = match self.auth.as_str() {
            "" => req,
            auth => req.header("authorization", auth),
        };
        let req = req
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(body))
            .ok()?;
        tokio::time::timeout(self.timeout, async {
            let resp = self.client.request(req).await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        })
        .await
        .ok()?
    }
}
