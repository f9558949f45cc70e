//! `GET /`: one small static page, compiled into the binary (no build step, nothing fetched from
//! elsewhere), where a user pastes an app's read key and sees the last 30 days per event name as
//! a chart, the top events, and today's events as they arrive (it polls the read API). The key
//! stays in the browser tab (sessionStorage, or a `#key=` fragment, which is never sent).

use std::sync::OnceLock;

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("page/index.html");

/// The text between the first `<tag>` (or `<tag ...>`) and `</tag>`.
fn inline(tag: &str) -> &'static str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    PAGE.find(&open)
        .map(|a| a + open.len())
        .and_then(|a| PAGE[a..].find(&close).map(|b| &PAGE[a..a + b]))
        .unwrap_or("")
}

fn hash(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
}

/// The page may run exactly its own script and style (by their SHA-256) and talk to this gateway
/// only; nothing else loads.
fn csp() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        let value = format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(inline("script")),
            hash(inline("style"))
        );
        HeaderValue::from_str(&value)
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    })
}

pub fn serve() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, csp().clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_html() {
        let r = serve();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(PAGE.starts_with("<!doctype html>"));
        // Nothing is loaded from elsewhere.
        for needle in ["http://", "https://", "src=\"//"] {
            let outside: Vec<&str> = PAGE
                .lines()
                .filter(|l| l.contains(needle) && !l.contains("www.w3.org/2000/svg"))
                .collect();
            assert!(outside.is_empty(), "{needle}: {outside:?}");
        }
        assert!(PAGE.contains("/v1/stats/daily") && PAGE.contains("/v1/stats/top-events"));
        // The CSP names the page's one script and one style by hash, nothing by 'unsafe-inline'.
        assert!(inline("script").contains("refreshLive") && inline("style").contains("body {"));
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains(&format!("'sha256-{}'", hash(inline("script")))));
    }
}
