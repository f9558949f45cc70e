//! Erasure requests and suppression at the gateway: who may ask, what a request may hold, that
//! an app only ever sees its own requests, that a suppressed user's events are answered as
//! accepted and never queued on any gateway, and that a finished erasure retires the app's
//! cached read answers.

mod erasure;
mod requests;
mod suppression;

use http::Method;
use ingest_gateway::apps::{self, KeyKind};
use shared::db::Pools;

use crate::helpers::{request_at, Gateway, Reply};

async fn admin_key(gw: &Gateway, app: &str) -> String {
    let pools = Pools::new(&gw.config.db).expect("pools");
    apps::create_key(&pools.write, app, KeyKind::Admin)
        .await
        .expect("admin key")
        .key
}

async fn erase(addr: &str, key: &str, body: impl Into<bytes::Bytes>) -> Reply {
    let auth = format!("Bearer {key}");
    request_at(
        addr,
        Method::POST,
        "/v1/privacy/erasures",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

async fn status_of(addr: &str, key: &str, id: &str) -> Reply {
    let auth = format!("Bearer {key}");
    request_at(
        addr,
        Method::GET,
        &format!("/v1/privacy/erasures/{id}"),
        &[("authorization", &auth)],
        "",
    )
    .await
}

fn code(r: &Reply) -> (u16, Option<&str>) {
    (r.status, r.body["error"].as_str())
}
