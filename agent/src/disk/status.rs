//! What `hrl-agent status`, the metrics and the progress bars show of a disk.

use std::path::PathBuf;

use hrl_format::DiskMode;
use serde::Serialize;
use uuid::Uuid;

use crate::point::LastPoint;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// What `hrl-agent status` shows for a disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskStatus {
    pub name: String,
    pub disk_id: Uuid,
    pub device: PathBuf,
    pub mount: Option<PathBuf>,
    /// Size of the device in bytes.
    pub device_bytes: u64,
    pub mode: DiskMode,
    pub dirty_bytes: u64,
    pub spool_bytes: u64,
    pub spool_limit: u64,
    /// Fraction done of the initial-sync or resync scan.
    pub scan_progress: Option<f64>,
    /// When the running scan should end at its rate so far (ns since the
    /// epoch; none before it has a rate).
    pub scan_end_ns: Option<u64>,
    /// Why this start began with an initial sync or a resync.
    pub start: String,
    /// The keys a policy may set: value and source (config or policy NAME).
    pub settings: std::collections::BTreeMap<String, String>,
    pub last_point: Option<LastPoint>,
    pub points_taken: u64,
    pub points_aborted: u64,
    pub last_freeze_ms: Option<f64>,
    pub capture_bytes: u64,
    pub capture_rate_bps: f64,
    pub write_bytes: u64,
    pub write_rate_bps: f64,
    pub losses: u64,
    /// The newest point is older than `rpo_warn` (or none was taken for
    /// that long since the start).
    pub rpo_exceeded: bool,
    pub last_error: Option<String>,
}

impl DiskStatus {
    /// The status of a disk that is just opening (initial sync, nothing known).
    pub fn new(name: &str) -> Self {
        DiskStatus {
            name: name.to_string(),
            disk_id: Uuid::nil(),
            device: PathBuf::new(),
            mount: None,
            device_bytes: 0,
            mode: DiskMode::InitialSync,
            dirty_bytes: 0,
            spool_bytes: 0,
            spool_limit: 0,
            scan_progress: Some(0.0),
            scan_end_ns: None,
            start: String::new(),
            settings: Default::default(),
            last_point: None,
            points_taken: 0,
            points_aborted: 0,
            last_freeze_ms: None,
            capture_bytes: 0,
            capture_rate_bps: 0.0,
            write_bytes: 0,
            write_rate_bps: 0.0,
            losses: 0,
            rpo_exceeded: false,
            last_error: None,
        }
    }
}

/// A freeze-duration histogram: 0.5 ms to about 4 s.
fn freeze_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// Freeze durations of every disk of this process (they accumulate).
pub static FREEZE: std::sync::LazyLock<Family<Vec<(String, String)>, Histogram>> =
    std::sync::LazyLock::new(|| Family::new_with_constructor(freeze_histogram as fn() -> Histogram));

/// Records a point's freeze duration.
pub fn observe_freeze(disk: &str, seconds: f64) {
    FREEZE
        .get_or_create(&vec![("disk".to_string(), disk.to_string())])
        .observe(seconds);
}
