//! What a running forwarder reports: `SPOOL/hrl-forwarder.status.json`
//! (rewritten every second; `hrl-shipper status --spool` prints it) and
//! Prometheus metrics on the shipper's metrics address. Per disk: where
//! the gateway stands (the newest segment it holds whole, the segment
//! being sent and how much of it it holds) and the bytes of the spool it
//! does not hold yet; for the forwarder: whether the gateway answered,
//! its last error, when it last acknowledged bytes, the policy applied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Result, ShipError};

/// What a forwarder did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForwardReport {
    pub bytes_sent: u64,
    pub requests: u64,
    pub segments_completed: u64,
    /// Ranges the gateway already had or expected elsewhere (after a lost
    /// answer or a restart): resent from where it stands.
    pub conflicts: u64,
    pub endpoint_errors: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForwardDiskStatus {
    /// Every segment up to this one is whole and durable at the gateway.
    pub complete_through: Option<u64>,
    /// The segment being sent, and the bytes of it the gateway holds.
    pub open: Option<(u64, u64)>,
    /// Bytes of the spool the gateway does not hold yet.
    pub pending_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForwardStatus {
    pub gateway: String,
    pub machine: String,
    pub pid: u32,
    pub updated_ns: u64,
    /// The last round of requests got answers.
    pub reachable: bool,
    pub last_error: Option<String>,
    /// When the gateway last acknowledged bytes (ns since the epoch).
    pub last_ack_ns: Option<u64>,
    /// The policy last applied to the agent.
    pub policy: Option<String>,
    pub report: ForwardReport,
    pub disks: BTreeMap<Uuid, ForwardDiskStatus>,
    pub metrics: Option<String>,
}

pub type SharedForward = Arc<Mutex<ForwardStatus>>;

pub fn path(spool: &Path) -> PathBuf {
    spool.join("hrl-forwarder.status.json")
}

/// Bytes of `disk`'s segments in `spool` that the gateway does not hold.
pub fn pending(spool: &Path, disk: &Uuid, d: &ForwardDiskStatus) -> u64 {
    let Ok(segs) = hrl_format::list_segments(spool, Some(*disk)) else {
        return 0;
    };
    segs.iter()
        .filter(|s| d.complete_through.is_none_or(|c| s.seq > c))
        .map(|s| {
            let len = std::fs::metadata(&s.path).map_or(0, |m| m.len());
            match d.open {
                Some((seq, held)) if seq == s.seq => len.saturating_sub(held),
                _ => len,
            }
        })
        .sum()
}

/// Writes the status file atomically.
pub fn save(spool: &Path, st: &ForwardStatus) -> Result<()> {
    let body = serde_json::to_vec_pretty(st).map_err(|e| ShipError::Internal(format!("encode status: {e}")))?;
    let p = path(spool);
    let tmp = spool.join(".hrl-forwarder.status.json.tmp");
    std::fs::write(&tmp, body).map_err(|e| ShipError::io(&tmp, "write status", e))?;
    std::fs::rename(&tmp, &p).map_err(|e| ShipError::io(&p, "rename status", e))
}

pub fn load(spool: &Path) -> Result<ForwardStatus> {
    let p = path(spool);
    let b = std::fs::read(&p).map_err(|e| ShipError::io(&p, "read forwarder status", e))?;
    serde_json::from_slice(&b).map_err(|e| ShipError::corrupt(p.display().to_string(), e.to_string()))
}

type Labels = Vec<(String, String)>;

/// The status as Prometheus text.
pub fn render(st: &ForwardStatus) -> String {
    let mut reg = Registry::default();
    let g = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        reg.register(name, help, f.clone());
        f
    };
    let plain = |reg: &mut Registry, name: &str, help: &str, v: f64| {
        let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        gauge.set(v);
        reg.register(name, help, gauge);
    };
    plain(
        &mut reg,
        "hrl_forwarder_gateway_reachable",
        "Whether the gateway answered the last round (1 yes, 0 no)",
        if st.reachable { 1.0 } else { 0.0 },
    );
    let age = st
        .last_ack_ns
        .map_or(-1.0, |t| hrl_format::now_ns().saturating_sub(t) as f64 / 1e9);
    plain(
        &mut reg,
        "hrl_forwarder_last_ack_age_seconds",
        "Since the gateway last acknowledged bytes (-1: never)",
        age,
    );
    plain(
        &mut reg,
        "hrl_forwarder_sent_bytes",
        "Bytes the gateway acknowledged since the start",
        st.report.bytes_sent as f64,
    );
    plain(
        &mut reg,
        "hrl_forwarder_endpoint_errors",
        "Rounds in which the gateway could not be reached",
        st.report.endpoint_errors as f64,
    );
    let pend = g(
        &mut reg,
        "hrl_forwarder_pending_bytes",
        "Bytes of the spool the gateway does not hold yet",
    );
    for (d, ds) in &st.disks {
        pend.get_or_create(&vec![("disk".to_string(), d.to_string())])
            .set(ds.pending_bytes as f64);
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

/// Serves the metrics at `http://addr/metrics`; records the address.
pub fn serve_metrics(st: &SharedForward, addr: &str) {
    let s2 = st.clone();
    match hrl_format::metrics_http::spawn(addr, move || {
        render(&s2.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }) {
        Ok(a) => {
            tracing::info!(address = %a, "metrics at http://{a}/metrics");
            st.lock().unwrap_or_else(|p| p.into_inner()).metrics = Some(a.to_string());
        }
        Err(e) => tracing::warn!(address = %addr, error = %e, "no metrics endpoint"),
    }
}
