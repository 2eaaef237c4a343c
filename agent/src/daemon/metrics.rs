//! Prometheus metrics of the agent, rendered from the disks' status at
//! each scrape (plus the freeze-duration histograms, which accumulate).
//! Served on `metrics_listen` (default 127.0.0.1:9561) by
//! `hrl_format::metrics_http`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::disk::status::FREEZE;
use crate::disk::DiskStatus;
use hrl_format::DiskMode;

type Labels = Vec<(String, String)>;

/// Where the endpoint listens, once bound (shown by `status`).
pub static ADDRESS: OnceLock<String> = OnceLock::new();

const MODES: [DiskMode; 5] = [
    DiskMode::InitialSync,
    DiskMode::Data,
    DiskMode::Bitmap,
    DiskMode::Resync,
    DiskMode::Paused,
];

fn mode_name(m: DiskMode) -> String {
    format!("{m:?}").to_lowercase()
}

fn gauge(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge<f64, AtomicU64>> {
    let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    reg.register(name, help, f.clone());
    f
}

fn counter(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

/// The OpenMetrics text of every disk.
pub fn render(disks: &[Arc<Mutex<DiskStatus>>]) -> String {
    let mut reg = Registry::with_prefix("hrl_agent");
    let mode = gauge(&mut reg, "disk_mode", "1 for the mode the disk is in");
    let dirty = gauge(&mut reg, "dirty_bytes", "Bytes marked dirty and not captured yet");
    let spool = gauge(&mut reg, "spool_bytes", "Bytes of captured data in the spool");
    let limit = gauge(&mut reg, "spool_limit_bytes", "The spool limit");
    let scan = gauge(
        &mut reg,
        "scan_progress_ratio",
        "Progress of the initial sync or resync scan (0-1)",
    );
    let age = gauge(&mut reg, "last_point_age_seconds", "Age of the newest point taken");
    let rpo = gauge(
        &mut reg,
        "rpo_exceeded",
        "1 when the newest point is older than rpo_warn",
    );
    let cap_rate = gauge(&mut reg, "capture_rate_bytes_per_second", "Capture read rate");
    let wr_rate = gauge(
        &mut reg,
        "write_rate_bytes_per_second",
        "Write rate of the tracked device",
    );
    let taken = counter(&mut reg, "points_taken", "Points taken");
    let aborted = counter(&mut reg, "points_aborted", "Points aborted");
    let captured = counter(&mut reg, "capture_bytes", "Bytes read from the device for capture");
    let written = counter(&mut reg, "write_bytes", "Bytes written to the device (tracked)");
    let losses = counter(&mut reg, "losses", "Tracking losses (each followed by a resync)");
    reg.register("freeze_seconds", "FIFREEZE to FITHAW of points", FREEZE.clone());
    let now = hrl_format::now_ns();
    for d in disks {
        let s = d.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let l: Labels = vec![("disk".into(), s.name.clone())];
        for m in MODES {
            let mut ml = l.clone();
            ml.push(("mode".into(), mode_name(m)));
            mode.get_or_create(&ml).set(if s.mode == m { 1.0 } else { 0.0 });
        }
        dirty.get_or_create(&l).set(s.dirty_bytes as f64);
        spool.get_or_create(&l).set(s.spool_bytes as f64);
        limit.get_or_create(&l).set(s.spool_limit as f64);
        scan.get_or_create(&l).set(s.scan_progress.unwrap_or(1.0));
        if let Some(p) = &s.last_point {
            age.get_or_create(&l).set(now.saturating_sub(p.time_ns) as f64 / 1e9);
        }
        rpo.get_or_create(&l).set(if s.rpo_exceeded { 1.0 } else { 0.0 });
        cap_rate.get_or_create(&l).set(s.capture_rate_bps);
        wr_rate.get_or_create(&l).set(s.write_rate_bps);
        taken.get_or_create(&l).inc_by(s.points_taken);
        aborted.get_or_create(&l).inc_by(s.points_aborted);
        captured.get_or_create(&l).inc_by(s.capture_bytes);
        written.get_or_create(&l).inc_by(s.write_bytes);
        losses.get_or_create(&l).inc_by(s.losses);
    }
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out = "# metrics encoding failed\n# EOF\n".into();
    }
    out
}
