//! The forwarder's side of policies: every renew interval it asks the
//! gateway for its machine's policy (`GET /v1/policy`) and hands it to the
//! agent of the same spool over the agent's control socket
//! (`SPOOL/hrl-agent.sock`, `{"cmd":"policy",...}`). It sends it every
//! time, not only on a change, so an agent that restarted gets it back
//! within one interval. No agent running: it tries again next time.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::client::GatewayClient;

/// What the forwarder last applied, and when it last asked.
#[derive(Default)]
pub struct PolicySync {
    applied: Option<Value>,
    asked: Option<Instant>,
}

fn send(socket: &Path, req: &Value) -> std::io::Result<Value> {
    let s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(&s, "{req}")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

impl PolicySync {
    /// The name of the policy last applied to the agent.
    pub fn applied_name(&self) -> Option<String> {
        self.applied
            .as_ref()
            .and_then(|v| v["policy"].as_str().map(str::to_string))
    }

    /// Asks and applies when the renew interval has passed.
    pub async fn tick(&mut self, c: &GatewayClient, spool: &Path) {
        let every = self
            .applied
            .as_ref()
            .and_then(|v| v["renew_s"].as_u64())
            .map_or(crate::gateway::policy::RENEW, Duration::from_secs)
            .max(Duration::from_secs(1));
        if self.asked.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.asked = Some(Instant::now());
        let v = match c.call(Method::GET, "/v1/policy", None).await {
            Ok(Ok(v)) => v,
            Ok(Err(a)) => {
                tracing::warn!(status = a.status, error = %a.error(), "the gateway did not give a policy");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "policy: gateway unreachable");
                return;
            }
        };
        let mut req = json!({"cmd": "policy"});
        for k in ["policy", "point_interval_s", "app_point_interval_s", "rpo_warn_s"] {
            req[k] = v[k].clone();
        }
        let socket: PathBuf = spool.join("hrl-agent.sock");
        let answer = tokio::task::spawn_blocking(move || send(&socket, &req)).await;
        match answer {
            Ok(Ok(a)) if a["ok"] == true => {
                if self.applied.as_ref() != Some(&v) {
                    tracing::info!(policy = %v["policy"], "policy applied to the agent");
                }
                self.applied = Some(v);
            }
            Ok(Ok(a)) => tracing::warn!(answer = %a, "the agent refused the policy"),
            Ok(Err(e)) => tracing::debug!(error = %e, "policy: no agent on this spool's control socket"),
            Err(e) => tracing::warn!(error = %e, "policy: sending to the agent failed"),
        }
    }
}
