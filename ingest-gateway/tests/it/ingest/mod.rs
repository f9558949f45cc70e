//! POST /v1/events against a gateway in process: what is queued and answered, who may post and
//! from where, the body limits and timeouts, and back-pressure and Redis trouble.

mod accept;
mod access;
mod backpressure;
mod bodies;

fn events(n: usize) -> String {
    let one = r#"{"event_name":"e"}"#;
    format!("[{}]", vec![one; n].join(","))
}
