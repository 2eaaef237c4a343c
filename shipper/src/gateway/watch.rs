//! The fleet watch: every 5 s it builds the fleet view, samples RPO for
//! the 24 h charts, logs each alert as it rises and clears, and posts it
//! to the webhook of gateway.toml (JSON, retried with backoff: a receiver
//! that is down for a minute still gets every event).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::fleet::Alert;
use super::state::Gateway;

/// Attempts per webhook event, the first retry after 1 s, then doubling.
const ATTEMPTS: u32 = 6;

pub async fn watch(gw: Arc<Gateway>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().ok();
    while !stop.load(Ordering::Relaxed) {
        match gw.fleet_view() {
            Ok(v) => {
                let (raised, cleared) = gw.fleet.step(&v);
                for (event, a) in raised
                    .iter()
                    .map(|a| ("raised", a))
                    .chain(cleared.iter().map(|a| ("resolved", a)))
                {
                    if event == "raised" {
                        tracing::warn!(kind = ?a.kind, machine = %a.machine, disk = %a.label, "alert: {}", a.message);
                    } else {
                        tracing::info!(kind = ?a.kind, machine = %a.machine, disk = %a.label, "alert resolved: {}", a.message);
                    }
                    if let (Some(url), Some(c)) = (gw.fleet.settings.webhook.clone(), client.clone()) {
                        tokio::spawn(post(c, url, event, a.clone()));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "fleet view failed"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Posts one event, retrying on a failure or a non-2xx answer.
async fn post(c: reqwest::Client, url: String, event: &'static str, a: Alert) {
    let body = json!({ "event": event, "alert": a, "time_ns": hrl_format::now_ns() });
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        let r = c
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => tracing::warn!(status = %resp.status(), attempt, "webhook refused an alert"),
            Err(e) => tracing::warn!(error = %e, attempt, "webhook unreachable"),
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    tracing::error!(kind = ?a.kind, machine = %a.machine, "webhook: alert not delivered after {ATTEMPTS} attempts");
}
