//! Every error a client can get, with its status and stable code, in one exhaustive match.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

use crate::body::ReadError;
use crate::queue::QueueError;
use crate::validate::{BodyError, Rejected};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("an API key is required (Authorization: Bearer, X-API-Key, or ?api_key=)")]
    MissingKey,
    #[error("the API key is unknown")]
    UnknownKey,
    #[error("the API key was revoked")]
    RevokedKey,
    #[error("a read key cannot ingest events; use the app's ingest key")]
    ReadKeyCannotIngest,
    #[error("an ingest key cannot read; use the app's read key")]
    IngestKeyCannotRead,
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("no event in the request is valid")]
    AllInvalid(Vec<Rejected>),
    #[error("the app is over its rate limit of {limit} events per second")]
    RateLimited { limit: u32 },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("{0}")]
    BadQuery(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the database is unavailable; retry later")]
    DbUnavailable,
    #[error("too many unknown keys are being looked up; retry in a second")]
    KeyLookupBusy,
    #[error("an admin key only administers privacy requests; use the app's ingest or read key")]
    AdminKeyCannotIngestOrRead,
    #[error("privacy requests need the app's admin key (ingest-gateway keys create --kind admin)")]
    AdminKeyRequired,
    #[error("{0}")]
    InvalidErasure(String),
    #[error("no such erasure request for this app")]
    ErasureNotFound,
}

/// The cache's single-flight passes a computation's error on as text; the only computations are
/// read queries, whose only failure is the database's.
/// A read that could not be computed is the database's failure.
impl From<crate::cache::ComputeFailed> for ApiError {
    fn from(_: crate::cache::ComputeFailed) -> Self {
        ApiError::DbUnavailable
    }
}

impl ApiError {
    /// One example of each variant, so tests can check the codes and statuses of all of them.
    pub fn examples() -> Vec<ApiError> {
        use std::time::Duration;
        vec![
            ApiError::MissingKey,
            ApiError::UnknownKey,
            ApiError::RevokedKey,
            ApiError::ReadKeyCannotIngest,
            ApiError::IngestKeyCannotRead,
            ApiError::Read(ReadError::TooLarge(1)),
            ApiError::Read(ReadError::UnsupportedType),
            ApiError::Read(ReadError::UnsupportedEncoding),
            ApiError::Read(ReadError::BadGzip(String::new())),
            ApiError::Read(ReadError::BadCompression("zstd", String::new())),
            ApiError::Read(ReadError::Timeout(Duration::ZERO)),
            ApiError::Read(ReadError::Broken),
            ApiError::Body(BodyError::InvalidJson(String::new())),
            ApiError::Body(BodyError::NotObjectOrArray),
            ApiError::Body(BodyError::TooManyEvents { count: 2, max: 1 }),
            ApiError::Body(BodyError::Empty),
            ApiError::Body(BodyError::MissingBatch),
            ApiError::Body(BodyError::Unreadable(String::new())),
            ApiError::AllInvalid(Vec::new()),
            ApiError::RateLimited { limit: 1 },
            ApiError::Queue(QueueError::Full { depth: 1 }),
            ApiError::Queue(QueueError::Unavailable),
            ApiError::Queue(QueueError::Evicting(String::new())),
            ApiError::BadQuery(String::new()),
            ApiError::ShuttingDown,
            ApiError::DbUnavailable,
            ApiError::KeyLookupBusy,
            ApiError::AdminKeyCannotIngestOrRead,
            ApiError::AdminKeyRequired,
            ApiError::InvalidErasure(String::new()),
            ApiError::ErasureNotFound,
        ]
    }

    /// Status, stable code, `Retry-After` seconds, and the `reason` label of
    /// `sluice_events_rejected_total`.
    pub fn parts(&self) -> (StatusCode, &'static str, Option<u32>, &'static str) {
        use ApiError::*;
        match self {
            MissingKey => (
                StatusCode::UNAUTHORIZED,
                "missing_key",
                None,
                "unauthorized",
            ),
            UnknownKey | RevokedKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_key",
                None,
                "unauthorized",
            ),
            ReadKeyCannotIngest => (StatusCode::FORBIDDEN, "read_key", None, "forbidden"),
            IngestKeyCannotRead => (StatusCode::FORBIDDEN, "ingest_key", None, "forbidden"),
            Read(ReadError::TooLarge(_)) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                None,
                "body_too_large",
            ),
            Read(ReadError::UnsupportedType) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                None,
                "unsupported_media",
            ),
            Read(ReadError::UnsupportedEncoding) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_encoding",
                None,
                "unsupported_media",
            ),
            Read(ReadError::BadGzip(_)) => (
                StatusCode::BAD_REQUEST,
                "invalid_gzip",
                None,
                "invalid_body",
            ),
            Read(ReadError::BadCompression(..)) => (
                StatusCode::BAD_REQUEST,
                "invalid_compression",
                None,
                "invalid_body",
            ),
            Read(ReadError::Timeout(_)) => (
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                None,
                "invalid_body",
            ),
            Read(ReadError::Broken) => (
                StatusCode::BAD_REQUEST,
                "body_incomplete",
                None,
                "invalid_body",
            ),
            Body(e @ BodyError::TooManyEvents { .. }) => {
                (StatusCode::BAD_REQUEST, e.code(), None, "too_many_events")
            }
            Body(e) => (StatusCode::BAD_REQUEST, e.code(), None, "invalid_body"),
            AllInvalid(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_events",
                None,
                "invalid_event",
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                Some(1),
                "rate_limited",
            ),
            Queue(QueueError::Full { .. }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                Some(5),
                "queue_full",
            ),
            Queue(QueueError::Unavailable) | Queue(QueueError::Evicting(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                Some(2),
                "queue_unavailable",
            ),
            BadQuery(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_query",
                None,
                "invalid_body",
            ),
            ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                Some(1),
                "shutting_down",
            ),
            DbUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "db_unavailable",
                Some(2),
                "db_unavailable",
            ),
            KeyLookupBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "key_lookup_busy",
                Some(1),
                "key_lookup_busy",
            ),
            AdminKeyCannotIngestOrRead => (StatusCode::FORBIDDEN, "admin_key", None, "forbidden"),
            AdminKeyRequired => (
                StatusCode::FORBIDDEN,
                "admin_key_required",
                None,
                "forbidden",
            ),
            InvalidErasure(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_erasure",
                None,
                "invalid_body",
            ),
            ErasureNotFound => (
                StatusCode::NOT_FOUND,
                "erasure_not_found",
                None,
                "invalid_body",
            ),
        }
    }

    /// The SDK routes' error answer: `{"code", "message"}`, both always (RudderStack's Python
    /// SDK retries a 4xx whose body lacks either), with the same status and `Retry-After`.
    pub fn into_sdk_response(self) -> Response<Full<Bytes>> {
        self.respond("code")
    }

    /// `{"error": code, "message": ...}` with the status and `Retry-After`.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        self.respond("error")
    }

    fn respond(self, code_field: &str) -> Response<Full<Bytes>> {
        let (status, code, retry_after, _) = self.parts();
        let mut body = serde_json::json!({code_field: code, "message": self.to_string()});
        if let ApiError::AllInvalid(rejected) = &self {
            body["rejected"] = serde_json::to_value(rejected).unwrap_or_default();
        }
        let mut resp = crate::reply::json(status, &body);
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}
