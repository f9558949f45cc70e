//! The `metadata` text of an event: the fields the mapping left, as one JSON object of their raw
//! values (nulls dropped), each checked for depth and NUL without being parsed, within the
//! message size limit.

use serde_json::value::RawValue;

use super::{is_null, Context};
use crate::validate::MAX_METADATA_DEPTH;

/// The metadata text of the fields left: one JSON object of the raw values, nulls dropped,
/// depth, NUL and size checked. `extra` are fields rebuilt by the mapping (a merged context),
/// which take the place of a left field of the same name. `capacity`: the message's size, which
/// the text cannot pass, so it is written without growing.
pub(super) fn metadata<'v>(
    rest: impl IntoIterator<Item = (&'v str, &'v RawValue)>,
    extra: &[(&str, String)],
    capacity: usize,
    ctx: &Context<'_>,
) -> Result<Option<String>, String> {
    let mut out = Object::new(capacity.min(ctx.max_event_bytes) + 2);
    for (k, v) in rest {
        if !is_null(v) && !extra.iter().any(|(e, _)| *e == k) {
            out.field(k, v.get())?;
        }
    }
    for (k, v) in extra {
        out.field(k, v)?;
    }
    out.finish(ctx.max_event_bytes)
}

/// A JSON object written field by field, each value checked.
struct Object(String);

impl Object {
    fn new(capacity: usize) -> Self {
        let mut out = String::with_capacity(capacity);
        out.push('{');
        Object(out)
    }

    fn field(&mut self, k: &str, v: &str) -> Result<(), String> {
        if k.contains('\0') {
            return Err("metadata must not contain a NUL character".into());
        }
        check_raw(v, 1)?;
        if self.0.len() > 1 {
            self.0.push(',');
        }
        push_key(&mut self.0, k)?;
        self.0.push_str(v);
        Ok(())
    }

    /// The object's text, `None` when it has no field; an error past `max` bytes.
    fn finish(mut self, max: usize) -> Result<Option<String>, String> {
        self.0.push('}');
        if self.0.len() == 2 {
            return Ok(None);
        }
        if self.0.len() > max {
            return Err(format!(
                "the message's fields are {} bytes; at most {max} are allowed",
                self.0.len()
            ));
        }
        Ok(Some(self.0))
    }
}

/// `"key":`, escaped only when it has to be.
pub(super) fn push_key(out: &mut String, k: &str) -> Result<(), String> {
    if k.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(k);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(k).map_err(|e| e.to_string())?);
    }
    out.push(':');
    Ok(())
}

/// Depth and NUL check of raw JSON text (which serde has already parsed once), without building
/// it: nesting at most `MAX_METADATA_DEPTH` (`depth_at`: the depth the text starts below), no
/// `\u0000` escape.
pub fn check_raw(text: &str, depth_at: usize) -> Result<(), String> {
    // The quick proof, which holds for nearly every value: too few brackets to nest past the
    // limit, and no escape at all (so no `\u0000`). Otherwise the exact scan decides.
    let bytes = text.as_bytes();
    let opens = bytes.iter().filter(|&&b| b == b'{' || b == b'[').count();
    if depth_at + opens <= MAX_METADATA_DEPTH && memchr::memchr(b'\\', bytes).is_none() {
        return Ok(());
    }
    scan(text.as_bytes(), depth_at)
}

/// The exact check: brackets counted outside strings, escapes looked at inside them.
fn scan(bytes: &[u8], mut depth: usize) -> Result<(), String> {
    let (mut in_str, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_str {
            if escaped {
                escaped = false;
                if b == b'u' && bytes.get(i + 1..i + 5) == Some(b"0000") {
                    return Err("metadata must not contain a NUL character".into());
                }
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_METADATA_DEPTH {
                    return Err(format!(
                        "metadata is nested deeper than {MAX_METADATA_DEPTH} levels"
                    ));
                }
            }
            b'}' | b']' => depth -= 1,
            _ => {}
        }
    }
    Ok(())
}
