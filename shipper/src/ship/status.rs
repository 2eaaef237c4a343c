//! What a running shipper reports: per disk the newest published point and
//! the RPO it gives, totals, endpoint errors. The daemon keeps it in memory
//! for its metrics endpoint and writes it to `{spool}/hrl-shipper.status.json`
//! every second for `hrl-shipper status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{to_json_pretty, Result, ShipError};

/// What shipping did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ShipReport {
    pub points_published: u64,
    pub points_already_published: u64,
    pub data_records: u64,
    pub data_bytes: u64,
    pub zero_chunks: u64,
    pub chunks_new: u64,
    pub chunks_deduplicated: u64,
    pub stored_bytes: u64,
    pub packs: u64,
    pub segments_deleted: u64,
    /// Plaintext bytes of newly stored chunks (for the compression ratio).
    pub new_plain_bytes: u64,
    /// Bytes uploaded: packs, indexes, manifests.
    pub upload_bytes: u64,
    /// Points shipped again because a prune removed chunks they used.
    pub points_reshipped: u64,
    pub published: Vec<(Uuid, u64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskShipStatus {
    /// Host and disk name from the spool (format 1.2), `None` before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub last_point: Option<u64>,
    /// Tag time of the newest published point.
    pub last_point_time_ns: Option<u64>,
    /// Age of the newest published point: what a failover now would lose.
    pub rpo_seconds: Option<f64>,
    pub rpo_exceeded: bool,
    /// Bytes of chunk data read since the last published point.
    pub unpublished_bytes: u64,
    /// Another shipper holds the disk's lease (its holder): this one
    /// waits for it to stop renewing it or to give it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for_lease: Option<String>,
}

impl DiskShipStatus {
    /// `host/name` when the spool names the disk.
    pub fn label(&self) -> Option<String> {
        Some(format!("{}/{}", self.host.as_ref()?, self.name.as_ref()?))
    }
}

/// How often a shipper and a forwarder rewrite their status file (what
/// the metrics show is brought up to date every second). Each rewrite
/// creates a file and renames it over the last (a new inode): every second
/// that was a tenth of a 2 MB/s forwarder's CPU; readers call a file stale
/// after 10 s.
pub const FILE_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// When a daemon's status is due: the shared status (metrics) every
/// second, the file every [`FILE_EVERY`]. Both are due at once at first
/// (`None`: never done; not "10 s ago", which would panic on a monotonic
/// clock younger than that, as it is for a service started at boot).
#[derive(Default)]
pub struct StatusClock {
    updated: Option<std::time::Instant>,
    written: Option<std::time::Instant>,
}

impl StatusClock {
    /// `None`: nothing due; `Some(file)`: update the shared status, and
    /// write the file too when `file`.
    pub fn due(&mut self) -> Option<bool> {
        if self
            .updated
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
        {
            return None;
        }
        let now = std::time::Instant::now();
        self.updated = Some(now);
        let file = self.written.is_none_or(|t| t.elapsed() >= FILE_EVERY);
        if file {
            self.written = Some(now);
        }
        Some(file)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShipStatus {
    pub repo: String,
    pub pid: u32,
    pub updated_ns: u64,
    pub rpo_warn_seconds: u64,
    pub upload_rate_limit: u64,
    pub disks: BTreeMap<Uuid, DiskShipStatus>,
    pub points_published: u64,
    pub data_bytes: u64,
    pub zero_chunks: u64,
    pub chunks_new: u64,
    pub chunks_deduplicated: u64,
    /// Bytes stored in packs (after lz4 and encryption).
    pub stored_bytes: u64,
    /// Bytes uploaded (packs, indexes, manifests).
    pub upload_bytes: u64,
    /// Plaintext bytes of the chunks newly stored, before lz4.
    pub new_plain_bytes: u64,
    pub packs: u64,
    /// Requests that failed after the store client's own retries.
    pub endpoint_errors: u64,
    /// Times the ship loop started a disk again after such a failure.
    pub retries: u64,
    pub last_error: Option<String>,
    pub metrics: Option<String>,
}

pub type SharedStatus = Arc<Mutex<ShipStatus>>;

impl ShipStatus {
    pub fn absorb(&mut self, r: &ShipReport) {
        self.points_published = r.points_published;
        self.data_bytes = r.data_bytes;
        self.zero_chunks = r.zero_chunks;
        self.chunks_new = r.chunks_new;
        self.chunks_deduplicated = r.chunks_deduplicated;
        self.stored_bytes = r.stored_bytes;
        self.new_plain_bytes = r.new_plain_bytes;
        self.upload_bytes = r.upload_bytes;
        self.packs = r.packs;
    }
}

pub fn status_path(spool: &Path) -> PathBuf {
    spool.join("hrl-shipper.status.json")
}

/// Writes the status file atomically.
pub fn save(spool: &Path, s: &ShipStatus) -> Result<()> {
    let p = status_path(spool);
    let tmp = spool.join(".hrl-shipper.status.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ShipError::io(&tmp, "write status", e))?;
        f.write_all(&to_json_pretty(s, "status")?)
            .map_err(|e| ShipError::io(&tmp, "write status", e))?;
    }
    std::fs::rename(&tmp, &p).map_err(|e| ShipError::io(&p, "rename status", e))
}

pub fn load(spool: &Path) -> Result<ShipStatus> {
    let p = status_path(spool);
    let b = std::fs::read(&p)
        .map_err(|e| ShipError::io(&p, "read status (is `hrl-shipper run` running on this spool?)", e))?;
    serde_json::from_slice(&b).map_err(|e| ShipError::corrupt(p.display().to_string(), e.to_string()))
}

type Labels = Vec<(String, String)>;

fn gauge(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge<f64, AtomicU64>> {
    let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    reg.register(name, help, f.clone());
    f
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// The OpenMetrics text of a status.
pub fn render(s: &ShipStatus) -> String {
    let mut reg = Registry::with_prefix("hrl_shipper");
    let rpo = gauge(&mut reg, "rpo_seconds", "Age of the newest published point of the disk");
    let exceeded = gauge(&mut reg, "rpo_exceeded", "1 when rpo_seconds is above rpo_warn");
    let last = gauge(&mut reg, "last_point", "Sequence of the newest published point");
    let unpub = gauge(
        &mut reg,
        "unpublished_bytes",
        "Chunk data read since the last published point",
    );
    for (d, ds) in &s.disks {
        let mut l: Labels = vec![("disk".into(), d.to_string())];
        if let Some(n) = ds.label() {
            l.push(("name".into(), n));
        }
        if let Some(r) = ds.rpo_seconds {
            rpo.get_or_create(&l).set(r);
        }
        exceeded.get_or_create(&l).set(if ds.rpo_exceeded { 1.0 } else { 0.0 });
        if let Some(p) = ds.last_point {
            last.get_or_create(&l).set(p as f64);
        }
        unpub.get_or_create(&l).set(ds.unpublished_bytes as f64);
    }
    counter(&mut reg, "points_published", "Points published", s.points_published);
    counter(
        &mut reg,
        "ship_bytes",
        "Chunk data bytes read from spools",
        s.data_bytes,
    );
    counter(&mut reg, "upload_bytes", "Bytes uploaded", s.upload_bytes);
    counter(
        &mut reg,
        "stored_bytes",
        "Bytes of sealed chunks stored in packs",
        s.stored_bytes,
    );
    counter(&mut reg, "chunks_new", "Chunks stored", s.chunks_new);
    counter(
        &mut reg,
        "chunks_deduplicated",
        "Chunks referenced, not stored",
        s.chunks_deduplicated,
    );
    counter(
        &mut reg,
        "endpoint_errors",
        "Store requests failed after the client's retries",
        s.endpoint_errors,
    );
    counter(
        &mut reg,
        "retries",
        "Disks restarted by the ship loop after an endpoint error",
        s.retries,
    );
    let dedup = gauge(&mut reg, "dedup_ratio", "Chunks referenced per chunk stored");
    let stored_or_dedup = s.chunks_new + s.chunks_deduplicated;
    if s.chunks_new > 0 {
        dedup
            .get_or_create(&vec![])
            .set(stored_or_dedup as f64 / s.chunks_new as f64);
    }
    let comp = gauge(
        &mut reg,
        "compression_ratio",
        "Plaintext bytes per stored byte of new chunks",
    );
    if s.stored_bytes > 0 {
        comp.get_or_create(&vec![])
            .set(s.new_plain_bytes as f64 / s.stored_bytes as f64);
    }
    let rate = gauge(&mut reg, "upload_rate_limit_bytes_per_second", "Upload limit (0: none)");
    rate.get_or_create(&vec![]).set(s.upload_rate_limit as f64);
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out = "# metrics encoding failed\n# EOF\n".into();
    }
    out
}

/// Serves `render(status)` at `http://addr/metrics`; records the bound
/// address in the status. A failure to bind costs the metrics only.
pub fn serve_metrics(st: &SharedStatus, addr: &str) -> Option<std::net::SocketAddr> {
    let s2 = st.clone();
    let r = hrl_format::metrics_http::spawn(addr, move || {
        let snap = s2.lock().unwrap_or_else(|p| p.into_inner()).clone();
        render(&snap)
    });
    match r {
        Ok(a) => {
            tracing::info!(address = %a, "metrics at http://{a}/metrics");
            st.lock().unwrap_or_else(|p| p.into_inner()).metrics = Some(a.to_string());
            Some(a)
        }
        Err(e) => {
            tracing::warn!(address = %addr, error = %e, "no metrics endpoint");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_clock_is_due_at_once_with_the_file_and_not_again_within_a_second() {
        let mut c = StatusClock::default();
        assert_eq!(c.due(), Some(true));
        assert_eq!(c.due(), None);
    }
}
