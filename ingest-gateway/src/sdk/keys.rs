//! Where each family's key is: the headers (Basic, Bearer, `X-Write-Key`, `X-API-Key`, Jitsu's
//! `id:secret`), else the envelope, else (posthog-js) the first event.

use base64::Engine;
use http::header::{HeaderMap, AUTHORIZATION};

use super::envelope::Parsed;
use super::{map, Api};
use crate::apps::KeyKind;
use crate::auth::{bearer, Grant};
use crate::error::ApiError;
use crate::routes::AppState;

/// The grant of the key in the headers, if there is one: checked before the body is read.
pub(super) async fn header_grant(
    state: &AppState,
    api: Api,
    headers: &HeaderMap,
) -> Result<Option<Grant>, ApiError> {
    let keys = header_key(api, headers);
    if keys.is_empty() {
        return Ok(None);
    }
    authenticate(state, &keys).await.map(Some)
}

/// The request's grant (`early`, from the headers, else the key in the body) and the key the
/// body names, which every PostHog event that carries a key must match.
pub(super) async fn body_grant(
    state: &AppState,
    api: Api,
    early: Option<Grant>,
    parsed: &Parsed<'_>,
) -> Result<(Grant, Option<String>), ApiError> {
    let mut request_key = parsed.key.clone();
    if let Some(grant) = early {
        return Ok((grant, request_key));
    }
    if request_key.is_none() && api == Api::PostHog {
        // posthog-js puts the token in each event.
        request_key = parsed.messages.first().and_then(map::posthog_key);
    }
    let key = request_key.clone().ok_or(ApiError::MissingKey)?;
    Ok((authenticate(state, &[key]).await?, request_key))
}

/// The key in the request's headers, by the family's rules.
pub(super) fn header_key(api: Api, headers: &HeaderMap) -> Vec<String> {
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .and_then(basic_user);
    let bearer = bearer(headers).map(str::to_owned);
    match api {
        Api::Segment => basic
            .or(bearer)
            .or_else(|| header(headers, "x-write-key"))
            .or_else(|| header(headers, "x-api-key"))
            .into_iter()
            .collect(),
        Api::PostHogV1 => bearer.into_iter().collect(),
        Api::PostHog => Vec::new(),
        Api::Jitsu => header(headers, "x-write-key")
            .or(basic)
            .map(jitsu_keys)
            .unwrap_or_default(),
    }
}

/// A header's value, trimmed, when not empty.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Jitsu's `id:secret`: the ingest key alone, or as either half.
fn jitsu_keys(v: String) -> Vec<String> {
    let mut keys = vec![v.clone()];
    if let Some((a, b)) = v.split_once(':') {
        keys.extend(
            [a, b]
                .into_iter()
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
        );
    }
    keys
}

/// The user of `Basic base64(user:password)`.
pub(super) fn basic_user(v: &str) -> Option<String> {
    if v.len() <= 6 || !v[..6].eq_ignore_ascii_case("basic ") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v[6..].trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let user = text.split(':').next().unwrap_or("");
    (!user.is_empty()).then(|| user.to_owned())
}

/// The first of `keys` that names a live ingest key (Jitsu's `id:secret` gives three tries).
async fn authenticate(state: &AppState, keys: &[String]) -> Result<Grant, ApiError> {
    let mut last = ApiError::MissingKey;
    for key in keys {
        match crate::auth::grant_for(state, key, KeyKind::Ingest).await {
            Err(e @ (ApiError::UnknownKey | ApiError::RevokedKey)) => last = e,
            decided => return decided,
        }
    }
    Err(last)
}
