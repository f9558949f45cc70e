//! Reading a request body within limits: the size limit holds before and after gzip
//! decompression, and decompression is streamed so a gzip bomb never inflates past the limit in
//! memory. The whole body must arrive within the body read timeout (slow clients are cut off).

use std::io::Read;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("content type must be application/json or text/plain")]
    UnsupportedType,
    #[error("content encoding must be gzip or identity")]
    UnsupportedEncoding,
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("body was not received within {0:?}")]
    Timeout(Duration),
    #[error("connection failed while reading the body")]
    Broken,
}

/// Whether the body is gzip-compressed; refuses types and encodings other than the contract's.
pub fn check_headers(headers: &HeaderMap) -> Result<bool, ReadError> {
    let ctype = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") && !mime.eq_ignore_ascii_case("text/plain") {
        return Err(ReadError::UnsupportedType);
    }
    match headers
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().map(|s| s.trim().to_ascii_lowercase()))
    {
        None => Ok(false),
        Some(Ok(enc)) if enc == "gzip" || enc == "x-gzip" => Ok(true),
        Some(Ok(enc)) if enc == "identity" || enc.is_empty() => Ok(false),
        _ => Err(ReadError::UnsupportedEncoding),
    }
}

/// Reads at most `max` bytes of body within `timeout`, then inflates it when `gzip`, again to at
/// most `max` bytes.
pub async fn read(
    headers: &HeaderMap,
    body: Incoming,
    gzip: bool,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, ReadError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ReadError::TooLarge(max));
    }
    let raw = tokio::time::timeout(timeout, collect_limited(body, max))
        .await
        .map_err(|_| ReadError::Timeout(timeout))??;
    if gzip {
        inflate(&raw, max)
    } else {
        Ok(raw)
    }
}

async fn collect_limited(mut body: Incoming, max: usize) -> Result<Bytes, ReadError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(ReadError::TooLarge(max));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Inflates gzip data, stopping as soon as the output passes `max` bytes.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Bytes, ReadError> {
    let decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut out = Vec::with_capacity((compressed.len() * 4).min(max + 1));
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ReadError::BadGzip(e.to_string()))?;
    if out.len() > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).expect("write");
        enc.finish().expect("finish")
    }

    #[test]
    fn inflate_holds_the_limit_after_decompression() {
        let at = vec![b'a'; 4096];
        assert_eq!(inflate(&gzip(&at), 4096).expect("at limit").len(), 4096);
        let past = vec![b'a'; 4097];
        assert_eq!(inflate(&gzip(&past), 4096), Err(ReadError::TooLarge(4096)));
        // A bomb: 1 GiB of zeros compresses to about 1 MiB; inflation stops at the limit.
        let bomb_src = vec![0u8; 64 << 20];
        let bomb = gzip(&bomb_src);
        assert!(bomb.len() < 100 << 10);
        assert_eq!(inflate(&bomb, 1 << 20), Err(ReadError::TooLarge(1 << 20)));
        assert!(matches!(
            inflate(b"not gzip", 100),
            Err(ReadError::BadGzip(_))
        ));
    }

    #[test]
    fn headers_accept_the_contract_types_and_encodings() {
        let mut h = HeaderMap::new();
        assert_eq!(check_headers(&h), Err(ReadError::UnsupportedType));
        h.insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().expect("hv"),
        );
        assert_eq!(check_headers(&h), Ok(false));
        h.insert(
            CONTENT_TYPE,
            "text/plain;charset=UTF-8".parse().expect("hv"),
        );
        assert_eq!(check_headers(&h), Ok(false));
        h.insert(CONTENT_ENCODING, "gzip".parse().expect("hv"));
        assert_eq!(check_headers(&h), Ok(true));
        h.insert(CONTENT_ENCODING, "br".parse().expect("hv"));
        assert_eq!(check_headers(&h), Err(ReadError::UnsupportedEncoding));
        h.remove(CONTENT_ENCODING);
        h.insert(
            CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().expect("hv"),
        );
        assert_eq!(check_headers(&h), Err(ReadError::UnsupportedType));
    }
}
