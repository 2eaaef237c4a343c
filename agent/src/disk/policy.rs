//! A replication policy set on the process server and applied to this
//! agent by its forwarder over the control socket (`{"cmd":"policy",
//! ...}`). It overrides only the keys it sets (point interval, app-point
//! interval, RPO threshold); the agent's own config keeps the rest, and
//! takes a key back when a later policy no longer sets it. `status` says
//! where each value came from.

use std::time::Duration;

use serde_json::Value;

/// What a policy sets (None: the agent's config decides).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyOverride {
    pub name: Option<String>,
    pub point_interval: Option<Duration>,
    pub app_point_interval: Option<Duration>,
    pub rpo_warn: Option<Duration>,
}

/// The agent's own values of the keys a policy may set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Own {
    pub point_interval: Duration,
    pub app_point_interval: Duration,
    pub rpo_warn: Duration,
}

impl PolicyOverride {
    /// From the control request; a key that is present must be a
    /// non-negative number of seconds (at most 100 years).
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let secs = |k: &str| -> Result<Option<Duration>, String> {
            match &v[k] {
                Value::Null => Ok(None),
                x => x
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3.2e9)
                    .map(|s| Some(Duration::from_secs_f64(s)))
                    .ok_or_else(|| format!("{k}: expected seconds, got {x}")),
            }
        };
        Ok(PolicyOverride {
            name: v["policy"].as_str().map(str::to_string),
            point_interval: secs("point_interval_s")?,
            app_point_interval: secs("app_point_interval_s")?,
            rpo_warn: secs("rpo_warn_s")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_request_sets_only_what_it_names() {
        let p = PolicyOverride::from_json(&serde_json::json!({
            "cmd": "policy", "policy": "gold", "point_interval_s": 2, "app_point_interval_s": null
        }))
        .unwrap();
        assert_eq!(p.name.as_deref(), Some("gold"));
        assert_eq!(p.point_interval, Some(Duration::from_secs(2)));
        assert_eq!((p.app_point_interval, p.rpo_warn), (None, None));
        assert!(PolicyOverride::from_json(&serde_json::json!({"point_interval_s": -1})).is_err());
        assert!(PolicyOverride::from_json(&serde_json::json!({"rpo_warn_s": "5m"})).is_err());
    }
}
