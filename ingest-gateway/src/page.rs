//! `GET /`: one small static page, compiled into the binary (no build step, nothing fetched from
//! elsewhere), where a user pastes an app's read key and sees the last 30 days per event name as
//! a chart, the top events, and today's events as they arrive (it polls the read API). The key
//! stays in the browser tab (sessionStorage, or a `#key=` fragment, which is never sent).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

const PAGE: &str = include_str!("page/index.html");

/// The page may run its own inline script and talk to this gateway only.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub fn serve() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
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
    }
}
