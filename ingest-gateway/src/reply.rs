//! Building responses: every answer has a JSON body.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

pub fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    json_text(status, bytes)
}

/// A body that is JSON already.
pub fn json_text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

/// `{"error": code, "message": message}` with `status`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}
