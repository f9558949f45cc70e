//! Privacy: erasure requests and suppression (docs/privacy.md, migration 7).
//!
//! - `POST /v1/privacy/erasures` and `ingest-gateway users erase` record a request (and, with
//!   `suppress`, its users' digests in the suppression list) in one transaction; the maintenance
//!   worker carries it out. `GET /v1/privacy/erasures/{id}` and `erasures list` read it back.
//!   Only an app's admin key reaches these routes, and only for that app's requests.
//! - Every gateway keeps each app's suppression list (digests, never clear ids) in memory and
//!   drops those users' events before they are queued, answering them as accepted. A trigger on
//!   `privacy_epochs` sends `NOTIFY sluice_privacy` when a change commits; every gateway hears it
//!   on its key-change session ([`crate::auth`]) and re-reads the epochs, so a new suppression
//!   reaches every gateway within milliseconds (the gateway that took the request applies it
//!   before answering). The epochs are also read every `PRIVACY_POLL_MS` [60000] and after the
//!   listening session reconnects, in case a notification was lost.
//! - `privacy_epochs.erasures_done` is part of the read cache's keys ([`Privacy::generation`]), so
//!   a finished erasure retires the app's cached answers on every gateway at once; the retired
//!   entries are deleted from Redis by the poll.
//!
//! `api.rs`: the routes. `erasure.rs`: requests in the database. `suppression.rs`: the lists
//! held in memory.

mod api;
mod erasure;
mod suppression;

pub use api::{get, post, MAX_ERASURE_BODY};
pub use erasure::{check_user_ids, create_erasure, get_erasure, list_erasures, Erasure};
pub use suppression::Privacy;

/// The NOTIFY channel of suppression and erasure changes (see migration 7).
pub const CHANNEL: &str = "sluice_privacy";
