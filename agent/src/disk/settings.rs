//! The disk worker's side of policies: applying one (or the config
//! alone) and showing in the status where each value came from.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::policy::PolicyOverride;
use super::worker::DiskWorker;

fn human(d: Duration) -> String {
    if d.is_zero() {
        return "off".into();
    }
    hrl_common::HumanDuration::from(d).to_string()
}

impl DiskWorker {
    /// Applies the policy (or the config alone, for `None` keys) and says
    /// in the status where each value came from.
    pub(crate) fn apply_policy(&mut self, p: PolicyOverride) {
        let own = self.own;
        let old = (
            self.agent.point_interval,
            self.agent.app_point_interval,
            self.agent.rpo_warn,
        );
        self.agent.point_interval = p.point_interval.unwrap_or(own.point_interval);
        self.agent.app_point_interval = p.app_point_interval.unwrap_or(own.app_point_interval);
        self.agent.rpo_warn = p.rpo_warn.unwrap_or(own.rpo_warn);
        let now = (
            self.agent.point_interval,
            self.agent.app_point_interval,
            self.agent.rpo_warn,
        );
        if now != old || p != self.policy {
            tracing::info!(disk = %self.name, policy = ?p.name, point_interval = ?now.0, app_point_interval = ?now.1, rpo_warn = ?now.2, "policy applied");
        }
        if now.0 != old.0 && !now.0.is_zero() {
            // A shorter interval takes effect now, not after the old one.
            self.next_point = self.next_point.min(Instant::now() + now.0);
        }
        self.policy = p;
        self.show_settings();
    }

    /// `status`'s `settings`: each policy key's value and its source.
    pub(crate) fn show_settings(&mut self) {
        let src = |set: bool| match (&self.policy.name, set) {
            (Some(n), true) => format!("policy {n}"),
            (None, true) => "policy".to_string(),
            (_, false) => "config".to_string(),
        };
        let keys = [
            (
                "point_interval",
                self.agent.point_interval,
                self.policy.point_interval.is_some(),
            ),
            (
                "app_point_interval",
                self.agent.app_point_interval,
                self.policy.app_point_interval.is_some(),
            ),
            ("rpo_warn", self.agent.rpo_warn, self.policy.rpo_warn.is_some()),
        ];
        let m: BTreeMap<String, String> = keys
            .into_iter()
            .map(|(k, v, set)| (k.to_string(), format!("{} ({})", human(v), src(set))))
            .collect();
        self.status.lock().unwrap_or_else(|e| e.into_inner()).settings = m;
    }
}
