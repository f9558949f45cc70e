//! The raw pipelined XADD rate of a Redis: the ceiling any gateway can reach on it.

use std::time::{Duration, Instant};

/// Raw pipelined XADD rate of a Redis: `conns` connections, `depth` commands a pipeline, one
/// 200-byte field, for `duration`. The ceiling any gateway can reach on that Redis.
pub async fn raw_xadd(
    url: &str,
    key: &str,
    conns: usize,
    depth: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let payload = vec![b'x'; 200];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let payload = payload.clone();
        let key = key.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < duration {
                let mut pipe = redis::pipe();
                for _ in 0..depth {
                    pipe.cmd("XADD")
                        .arg(&key)
                        .arg("*")
                        .arg("d")
                        .arg(&payload)
                        .ignore();
                }
                if pipe.query_async::<()>(&mut conn).await.is_err() {
                    break;
                }
                n += depth as u64;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
    Ok(rate)
}
