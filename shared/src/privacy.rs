//! Names shared by the gateway and the maintenance worker for erasure and suppression
//! (migration 7, docs/privacy.md).

use sha2::{Digest, Sha256};

/// At most this many user ids in one erasure request.
pub const MAX_USERS_PER_ERASURE: usize = 1000;

/// The digest that names `user_id` of `app_id` in the suppression list and in erasure requests:
/// SHA-256 of `app_id`, the byte 0x1f, `user_id` (in SQL:
/// `sha256(convert_to(app_id || chr(31) || user_id, 'UTF8'))`). Salted by the app, so the same id
/// in two apps gives two digests.
pub fn user_digest(app_id: &str, user_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(app_id.as_bytes());
    h.update([0x1f]);
    h.update(user_id.as_bytes());
    h.finalize().into()
}

/// The states of a request, as stored and answered.
pub const STATUSES: [&str; 4] = ["pending", "running", "done", "failed"];

/// The places a request removes rows from, as keys of its `removed` counts.
pub const PLACES: [&str; 4] = ["events", "quarantine", "dead_letters", "summary_members"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_app_and_user() {
        assert_ne!(user_digest("a", "u"), user_digest("b", "u"));
        assert_ne!(user_digest("a", "u"), user_digest("a", "v"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(user_digest("ab", "c"), user_digest("a", "bc"));
        assert_eq!(
            hex::encode(user_digest("app", "u1")),
            hex::encode(Sha256::digest(b"app\x1fu1"))
        );
    }
}
