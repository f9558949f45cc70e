//! The read API: the stats routes against events that went through the real pipeline
//! (gateway, Redis, writer), and the cache in front of them.

mod cache;
mod stats;

use http::Method;

use crate::helpers::{Gateway, Reply};

async fn get(gw: &Gateway, key: &str, path: &str) -> Reply {
    let auth = format!("Bearer {key}");
    gw.request(Method::GET, path, &[("authorization", &auth)], "")
        .await
}

fn days_path(from: chrono::NaiveDate, to: chrono::NaiveDate, extra: &str) -> String {
    format!("/v1/stats/daily?from={from}&to={to}{extra}")
}
