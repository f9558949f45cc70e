//! Mapping a request's messages, each on its own (the valid queued, the others named with why),
//! and the answer each family expects.

use serde_json::{Map, Value};
use shared::queue::QueuedEvent;

use super::envelope::Parsed;
use super::{map, Api, Route};
use crate::validate::Rejected;

/// The request's events: the valid ones, the refused ones.
pub(super) struct Outcome {
    pub valid: Vec<QueuedEvent>,
    pub rejected: Vec<Rejected>,
    /// PostHog v1 names each refused event by its `uuid` (else its index).
    pub refused_ids: Vec<(String, String)>,
}

/// Maps every message; `request_key` is the key the body named (PostHog events carrying
/// another are refused).
pub(super) fn map_all(
    api: Api,
    route: Route,
    parsed: &Parsed<'_>,
    ctx: &map::Context<'_>,
    request_key: Option<&str>,
) -> Outcome {
    let mut out = Outcome {
        valid: Vec::with_capacity(parsed.messages.len()),
        rejected: Vec::new(),
        refused_ids: Vec::new(),
    };
    for (index, msg) in parsed.messages.iter().enumerate() {
        if let Some(error) = oversize(msg, ctx) {
            out.refuse(api, index, None, error);
            continue;
        }
        match map_one(api, route, &parsed.shared, msg, ctx, request_key) {
            Ok(e) => out.valid.push(e),
            Err(error) => out.refuse(api, index, Some(msg), error),
        }
    }
    out
}

/// Why a message is refused unread: it is larger than the SDKs' own limit.
fn oversize(msg: &map::Message<'_>, ctx: &map::Context<'_>) -> Option<String> {
    (msg.bytes > ctx.max_event_bytes).then(|| {
        format!(
            "the message is {} bytes; at most {} are allowed",
            msg.bytes, ctx.max_event_bytes
        )
    })
}

/// One message within the size limit, by its family's mapping.
fn map_one(
    api: Api,
    route: Route,
    shared: &map::SegmentShared,
    msg: &map::Message<'_>,
    ctx: &map::Context<'_>,
    request_key: Option<&str>,
) -> Result<QueuedEvent, String> {
    match api {
        Api::Segment | Api::Jitsu => map::segment(msg, route.kind, shared, ctx),
        Api::PostHog | Api::PostHogV1 => {
            let event = map::PostHogEvent::read(msg)?;
            if let (Some(own), Some(req)) = (event.key(), request_key) {
                if own != req {
                    return Err("the event carries another key than the request".into());
                }
            }
            map::posthog(event, ctx)
        }
    }
}

impl Outcome {
    /// Records a refused message; PostHog v1 names it by its `uuid` when it was read (`msg`,
    /// a message within the size limit), else by its index.
    fn refuse(&mut self, api: Api, index: usize, msg: Option<&map::Message<'_>>, error: String) {
        if api == Api::PostHogV1 {
            let id = msg
                .and_then(map::posthog_uuid)
                .unwrap_or_else(|| index.to_string());
            self.refused_ids.push((id, error.clone()));
        }
        self.rejected.push(Rejected { index, error });
    }

    /// The success answer of `api`: `200` with this JSON.
    pub fn answer(self, api: Api) -> Value {
        match api {
            Api::Segment => serde_json::json!({"success": true}),
            Api::PostHog => serde_json::json!({"status": 1}),
            Api::PostHogV1 => {
                let results: Map<String, Value> = self
                    .refused_ids
                    .into_iter()
                    .map(|(id, details)| {
                        (
                            id,
                            serde_json::json!({"result": "drop", "details": details}),
                        )
                    })
                    .collect();
                serde_json::json!({"results": results})
            }
            Api::Jitsu => serde_json::json!({"ok": true}),
        }
    }
}
