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
    #[error("body is not valid {0}: {1}")]
    BadCompression(&'static str, String),
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

/// How an SDK's body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// zlib-wrapped deflate (what `Content-Encoding: deflate` means), or raw deflate.
    Deflate,
    Zstd,
    /// No `Content-Encoding`: gzip when the body starts with gzip's magic bytes (posthog-js
    /// sends gzip labelled `text/plain`), else identity.
    Sniff,
}

/// The SDK routes' encoding from `Content-Encoding`; any content type is accepted there.
pub fn sdk_encoding(headers: &HeaderMap) -> Result<Encoding, ReadError> {
    match headers
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().map(|s| s.trim().to_ascii_lowercase()))
    {
        None => Ok(Encoding::Sniff),
        Some(Ok(enc)) => match enc.as_str() {
            "" => Ok(Encoding::Sniff),
            "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "deflate" => Ok(Encoding::Deflate),
            "zstd" => Ok(Encoding::Zstd),
            _ => Err(ReadError::UnsupportedEncoding),
        },
        Some(Err(_)) => Err(ReadError::UnsupportedEncoding),
    }
}

/// Reads an SDK's body within `max` bytes (before and after decompression) and `timeout`.
pub async fn read_sdk(
    headers: &HeaderMap,
    body: Incoming,
    encoding: Encoding,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, ReadError> {
    let raw = read(headers, body, false, max, timeout).await?;
    decode(raw, encoding, max)
}

/// Undoes `encoding`, stopping as soon as the output passes `max` bytes.
pub fn decode(raw: Bytes, encoding: Encoding, max: usize) -> Result<Bytes, ReadError> {
    match encoding {
        Encoding::Identity => Ok(raw),
        Encoding::Gzip => inflate(&raw, max),
        Encoding::Sniff if raw.starts_with(&[0x1f, 0x8b]) => inflate(&raw, max),
        Encoding::Sniff => Ok(raw),
        Encoding::Deflate => inflate_deflate(&raw, max),
        Encoding::Zstd => unzstd(&raw, max),
    }
}

/// zlib-wrapped deflate, else raw deflate.
fn inflate_deflate(raw: &[u8], max: usize) -> Result<Bytes, ReadError> {
    match bounded(flate2::read::ZlibDecoder::new(raw), max, "deflate") {
        Err(ReadError::BadCompression(..)) => {
            bounded(flate2::read::DeflateDecoder::new(raw), max, "deflate")
        }
        other => other,
    }
}

fn unzstd(raw: &[u8], max: usize) -> Result<Bytes, ReadError> {
    let decoder = zstd::stream::read::Decoder::new(raw)
        .map_err(|e| ReadError::BadCompression("zstd", e.to_string()))?;
    bounded(decoder, max, "zstd")
}

/// The output of `decoder`, stopping as soon as it passes `max` bytes.
fn bounded(decoder: impl Read, max: usize, what: &'static str) -> Result<Bytes, ReadError> {
    let mut out = Vec::new();
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ReadError::BadCompression(what, e.to_string()))?;
    if out.len() > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(Bytes::from(out))
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
    fn sdk_bodies_decode_every_encoding_within_the_limit() {
        let json = br#"{"batch":[]}"#.to_vec();
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(&json).expect("write");
        let zlib = zlib.finish().expect("finish");
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&json).expect("write");
        let raw = raw.finish().expect("finish");
        let zst = zstd::encode_all(&json[..], 3).expect("zstd");
        for (body, enc) in [
            (json.clone(), Encoding::Identity),
            (json.clone(), Encoding::Sniff),
            (gzip(&json), Encoding::Sniff),
            (gzip(&json), Encoding::Gzip),
            (zlib, Encoding::Deflate),
            (raw, Encoding::Deflate),
            (zst, Encoding::Zstd),
        ] {
            let out = decode(Bytes::from(body), enc, json.len()).expect("decodes");
            assert_eq!(&out[..], &json[..], "{enc:?}");
        }
        // One byte past the limit after decompression, for each decoder.
        let big = vec![b'a'; 4097];
        assert_eq!(
            decode(Bytes::from(gzip(&big)), Encoding::Sniff, 4096),
            Err(ReadError::TooLarge(4096))
        );
        let zst = zstd::encode_all(&big[..], 3).expect("zstd");
        assert_eq!(
            decode(Bytes::from(zst), Encoding::Zstd, 4096),
            Err(ReadError::TooLarge(4096))
        );
        assert!(matches!(
            decode(Bytes::from_static(b"nope"), Encoding::Zstd, 100),
            Err(ReadError::BadCompression("zstd", _))
        ));
        assert!(matches!(
            decode(Bytes::from_static(b"\xff\xff\xff"), Encoding::Deflate, 100),
            Err(ReadError::BadCompression("deflate", _))
        ));
        let mut h = HeaderMap::new();
        assert_eq!(sdk_encoding(&h), Ok(Encoding::Sniff));
        h.insert(CONTENT_ENCODING, "zstd".parse().expect("hv"));
        assert_eq!(sdk_encoding(&h), Ok(Encoding::Zstd));
        h.insert(CONTENT_ENCODING, "br".parse().expect("hv"));
        assert_eq!(sdk_encoding(&h), Err(ReadError::UnsupportedEncoding));
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
