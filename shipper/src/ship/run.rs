//! The ship loop over every disk of a spool: start a [`DiskShipper`] for
//! each disk that appears, step them, wait out endpoint failures with a
//! backoff, and report status and RPO.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::disk::DiskShipper;
use super::known::Known;
use super::options::ShipOptions;
use super::status::ShipReport;
use crate::error::{Result, ShipError};
use crate::repo::manifest;
use crate::repo::Repo;

/// Ships every disk of the spool into `repo` until `stop` (or, with
/// `once`, until nothing complete is left).
///
/// As a daemon, a store failure that outlasts the client's own retries does
/// not stop the shipper: the disk is started again from its cursor after a
/// backoff (1 s doubling to 60 s), and the error is counted and shown.
/// A second shipper on the same spool is refused (see `spool_lock`).
pub async fn ship(repo: &Repo, opts: &ShipOptions, stop: &AtomicBool) -> Result<ShipReport> {
    let _lock = super::spool_lock::SpoolLock::acquire(&opts.spool)?;
    let mut known = open_index(repo, opts, stop).await?;
    let mut report = ShipReport::default();
    let mut disks: Vec<DiskShipper> = Vec::new();
    let mut last_log = Instant::now();
    let mut status_clock = super::status::StatusClock::default();
    let mut backoff = Duration::from_secs(1);
    let mut rpo_warned: HashMap<Uuid, Instant> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        add_new_disks(repo, opts, &mut disks).await?;
        let mut any = false;
        let mut failed = false;
        for d in disks.iter_mut() {
            match d.step(repo, &mut known, opts, &mut report, stop).await {
                Ok(a) => any |= a,
                Err(e @ ShipError::Store { .. }) if !opts.once => {
                    tracing::error!(disk = %d.disk, error = %e, backoff_s = backoff.as_secs(), "endpoint failed; this disk starts again from its cursor");
                    if let Some(st) = &opts.status {
                        let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
                        st.endpoint_errors += 1;
                        st.retries += 1;
                        st.last_error = Some(e.to_string());
                    }
                    d.reset(&opts.spool)?;
                    failed = true;
                }
                Err(e @ ShipError::LeaseLost { .. }) if !opts.once => {
                    tracing::error!(disk = %d.disk, error = %e, "lost the disk's lease: it is another shipper's now; this one waits to take it back");
                    d.drop_lease(&opts.spool)?;
                }
                Err(e) => {
                    release(repo, &mut disks).await;
                    return Err(e);
                }
            }
        }
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
            known.after_failure(repo).await;
            continue;
        }
        backoff = Duration::from_secs(1);
        known.refresh_in_background(repo);
        if let Some(file) = opts.status.as_ref().and_then(|_| status_clock.due()) {
            save_status(opts, &report, &disks, &mut rpo_warned, file);
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            last_log = Instant::now();
            log_progress(&report, &disks);
        }
        if !any {
            if opts.once {
                break;
            }
            tokio::time::sleep(opts.poll).await;
        }
    }
    release(repo, &mut disks).await;
    Ok(report)
}

/// Gives up every lease held (a clean stop or a failed `--once`).
async fn release(repo: &Repo, disks: &mut [DiskShipper]) {
    for d in disks {
        d.release_lease(repo).await;
    }
}

/// Loads the repository's index (or takes the one shared with other
/// loops); a daemon waits out endpoint errors.
async fn open_index(repo: &Repo, opts: &ShipOptions, stop: &AtomicBool) -> Result<Known> {
    if let Some(shared) = &opts.index {
        return Ok(Known::shared(shared.clone()).await);
    }
    let mut wait = Duration::from_secs(1);
    loop {
        match Known::load(repo, opts.index_file.as_deref()).await {
            Ok(k) => return Ok(k),
            Err(e @ ShipError::Store { .. }) if !opts.once && !stop.load(Ordering::Relaxed) => {
                tracing::error!(error = %e, backoff_s = wait.as_secs(), "cannot read the repository's indexes; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Starts shipping every disk that appeared in the spool.
async fn add_new_disks(repo: &Repo, opts: &ShipOptions, disks: &mut Vec<DiskShipper>) -> Result<()> {
    for d in hrl_format::list_disks(&opts.spool)? {
        if disks.iter().any(|s| s.disk == d) {
            continue;
        }
        let mut ds = DiskShipper::new(&opts.spool, d, opts.direct_reads)?;
        // The RPO the repository already offers, before this process
        // publishes anything (unknown while the endpoint fails: it is only
        // shown, never relied on).
        if let Ok(Some(&seq)) = manifest::list_points(repo, &d).await.as_ref().map(|v| v.last()) {
            if let Ok((h, _)) = manifest::load(repo, &d, seq).await {
                ds.last_published_ns = Some(h.time_ns);
                ds.last_published_seq = Some(seq);
            }
        }
        disks.push(ds);
    }
    Ok(())
}

/// Updates the shared status (what the metrics show; warns on RPO
/// breaches), then, with `file`, writes the status file.
fn save_status(
    opts: &ShipOptions,
    report: &ShipReport,
    disks: &[DiskShipper],
    rpo_warned: &mut HashMap<Uuid, Instant>,
    file: bool,
) {
    let Some(st) = &opts.status else { return };
    let warn = opts.rpo_warn.load(Ordering::Relaxed);
    let snapshot = {
        let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
        st.absorb(report);
        st.updated_ns = hrl_format::now_ns();
        st.rpo_warn_seconds = warn;
        st.upload_rate_limit = opts.upload.rate.load(Ordering::Relaxed);
        for d in disks {
            let e = st.disks.entry(d.disk).or_default();
            if let Some(i) = &d.identity {
                e.host = Some(i.host.clone());
                e.name = Some(i.name.clone());
            }
            e.unpublished_bytes = d.window_data;
            e.waiting_for_lease = d.lease.is_none().then(|| d.waiting_for.clone()).flatten();
            e.last_point_time_ns = d.last_published_ns;
            e.last_point = d.last_published_seq;
            e.rpo_seconds = d
                .last_published_ns
                .map(|t| hrl_format::now_ns().saturating_sub(t) as f64 / 1e9);
            let over = warn > 0 && e.rpo_seconds.is_some_and(|r| r > warn as f64);
            if over
                && rpo_warned
                    .get(&d.disk)
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                tracing::warn!(disk = %d.disk, rpo_s = e.rpo_seconds.unwrap_or(0.0) as u64, threshold_s = warn, "RPO threshold exceeded: the newest published point is older than rpo_warn");
                rpo_warned.insert(d.disk, Instant::now());
            }
            if !over && e.rpo_exceeded {
                tracing::info!(disk = %d.disk, "RPO back within rpo_warn");
                rpo_warned.remove(&d.disk);
            }
            e.rpo_exceeded = over;
        }
        file.then(|| st.clone())
    };
    let Some(snapshot) = snapshot else { return };
    if let Err(e) = crate::ship::status::save(&opts.spool, &snapshot) {
        tracing::warn!(error = %e, "could not write the status file");
    }
}

fn log_progress(report: &ShipReport, disks: &[DiskShipper]) {
    tracing::info!(
        points = report.points_published,
        data_mib = report.data_bytes >> 20,
        stored_mib = report.stored_bytes >> 20,
        "shipping"
    );
    for d in disks {
        // The age of the newest published point: the RPO this repository
        // can offer for the disk right now.
        if let Some(t) = d.last_published_ns {
            let lag = hrl_format::now_ns().saturating_sub(t) as f64 / 1e9;
            tracing::info!(disk = %d.disk, lag_s = format!("{lag:.1}"), "newest published point");
        }
    }
}
