//! Every error a client can get, with its status, stable code, `Retry-After` and metrics reason:
//! one exhaustive match per part, the variants grouped.

use std::time::Duration;

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

/// A read that could not be computed is the database's failure: the read queries are the cache's
/// only computations.
impl From<crate::cache::ComputeFailed> for ApiError {
    fn from(_: crate::cache::ComputeFailed) -> Self {
        ApiError::DbUnavailable
    }
}

impl ApiError {
    /// One example of each variant, so tests can check the codes and statuses of all of them.
    pub fn examples() -> Vec<ApiError> {
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
        (
            self.status(),
            self.code(),
            self.retry_after(),
            self.reason(),
        )
    }

    /// The HTTP status, variants grouped per status.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MissingKey | UnknownKey | RevokedKey => StatusCode::UNAUTHORIZED,
            ReadKeyCannotIngest
            | IngestKeyCannotRead
            | AdminKeyCannotIngestOrRead
            | AdminKeyRequired => StatusCode::FORBIDDEN,
            Read(ReadError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            Read(ReadError::UnsupportedType | ReadError::UnsupportedEncoding) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Read(ReadError::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            Read(ReadError::BadGzip(_) | ReadError::BadCompression(..) | ReadError::Broken)
            | Body(_)
            | AllInvalid(_)
            | BadQuery(_)
            | InvalidErasure(_) => StatusCode::BAD_REQUEST,
            ErasureNotFound => StatusCode::NOT_FOUND,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Queue(_) | ShuttingDown | DbUnavailable | KeyLookupBusy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The stable error code clients (and docs/openapi.json) know the error by.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            MissingKey => "missing_key",
            UnknownKey | RevokedKey => "invalid_key",
            ReadKeyCannotIngest => "read_key",
            IngestKeyCannotRead => "ingest_key",
            AdminKeyCannotIngestOrRead => "admin_key",
            AdminKeyRequired => "admin_key_required",
            Read(ReadError::TooLarge(_)) => "body_too_large",
            Read(ReadError::UnsupportedType) => "unsupported_content_type",
            Read(ReadError::UnsupportedEncoding) => "unsupported_content_encoding",
            Read(ReadError::BadGzip(_)) => "invalid_gzip",
            Read(ReadError::BadCompression(..)) => "invalid_compression",
            Read(ReadError::Timeout(_)) => "body_timeout",
            Read(ReadError::Broken) => "body_incomplete",
            Body(e) => e.code(),
            AllInvalid(_) => "invalid_events",
            RateLimited { .. } => "rate_limited",
            Queue(QueueError::Full { .. }) => "queue_full",
            Queue(QueueError::Unavailable | QueueError::Evicting(_)) => "queue_unavailable",
            BadQuery(_) => "invalid_query",
            ShuttingDown => "shutting_down",
            DbUnavailable => "db_unavailable",
            KeyLookupBusy => "key_lookup_busy",
            InvalidErasure(_) => "invalid_erasure",
            ErasureNotFound => "erasure_not_found",
        }
    }

    /// The `Retry-After` seconds of the errors worth retrying (the 429 and the 503s).
    pub fn retry_after(&self) -> Option<u32> {
        use ApiError::*;
        match self {
            RateLimited { .. } | ShuttingDown | KeyLookupBusy => Some(1),
            Queue(QueueError::Unavailable | QueueError::Evicting(_)) | DbUnavailable => Some(2),
            Queue(QueueError::Full { .. }) => Some(5),
            MissingKey
            | UnknownKey
            | RevokedKey
            | ReadKeyCannotIngest
            | IngestKeyCannotRead
            | AdminKeyCannotIngestOrRead
            | AdminKeyRequired
            | Read(_)
            | Body(_)
            | AllInvalid(_)
            | BadQuery(_)
            | InvalidErasure(_)
            | ErasureNotFound => None,
        }
    }

    /// The `reason` label of `sluice_events_rejected_total` (one of
    /// [`shared::metrics::REJECT_REASONS`]).
    pub fn reason(&self) -> &'static str {
        use ApiError::*;
        match self {
            MissingKey | UnknownKey | RevokedKey => "unauthorized",
            ReadKeyCannotIngest
            | IngestKeyCannotRead
            | AdminKeyCannotIngestOrRead
            | AdminKeyRequired => "forbidden",
            Read(ReadError::TooLarge(_)) => "body_too_large",
            Read(ReadError::UnsupportedType | ReadError::UnsupportedEncoding) => {
                "unsupported_media"
            }
            Body(BodyError::TooManyEvents { .. }) => "too_many_events",
            Read(_) | Body(_) | BadQuery(_) | InvalidErasure(_) | ErasureNotFound => "invalid_body",
            AllInvalid(_) => "invalid_event",
            RateLimited { .. } => "rate_limited",
            Queue(QueueError::Full { .. }) => "queue_full",
            Queue(QueueError::Unavailable | QueueError::Evicting(_)) => "queue_unavailable",
            ShuttingDown => "shutting_down",
            DbUnavailable => "db_unavailable",
            KeyLookupBusy => "key_lookup_busy",
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
