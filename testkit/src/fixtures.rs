//! Small fixtures tests share.

use shared::queue::QueuedEvent;

/// One `view` event of `user` in `app` as the gateway queues it, received and occurred now, with
/// a fresh id, no session and no metadata.
pub fn view_event(app: &str, user: &str) -> QueuedEvent {
    let now = chrono::Utc::now().timestamp_micros();
    QueuedEvent {
        event_id: uuid::Uuid::new_v4(),
        app_id: app.to_owned(),
        event_name: "view".to_owned(),
        occurred_at_us: now,
        received_at_us: now,
        user_id: Some(user.to_owned()),
        session_id: None,
        metadata: None,
        client_id: false,
    }
}
