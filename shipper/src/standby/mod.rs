//! The standby replica: one fixed-VHD page blob per disk, kept at the
//! newest published point by writing only the chunks that changed since
//! the previous point, with a blob snapshot per point (metadata
//! `hrl_point`). Failing over from it is a server-side copy of one
//! snapshot into a new page blob: its time does not grow with the disk.
//!
//! Reads the repository, writes only under its own `--to` prefix. A
//! standby never writes the repository, so it runs beside shippers,
//! process servers and prune (a point pruned under it only costs a full
//! rewrite; see `disk`).

pub mod disk;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::azure::{self, Account, BlobUrl, PageBlob};
use crate::error::{Result, ShipError};
use crate::repo::{manifest, Repo};
use crate::restore::RestoreReport;

pub use disk::Applied;

/// How the standby runs.
#[derive(Debug, Clone)]
pub struct StandbyOptions {
    /// `az://container/prefix`: the blobs are `<prefix>/<disk id>.vhd`.
    pub to: BlobUrl,
    /// Disks to keep (none: every disk of the repository, new ones too).
    pub disks: Vec<Uuid>,
    /// Snapshots kept per disk besides following the repository's
    /// retention (0: only that).
    pub keep: usize,
    pub poll: Duration,
    /// Catch up once and return.
    pub once: bool,
}

/// The standby blob of `disk` under `prefix`.
pub fn blob_url(prefix: &BlobUrl, disk: &Uuid) -> BlobUrl {
    prefix.join(&format!("{disk}.vhd"))
}

fn client_for(url: &BlobUrl) -> Result<(reqwest::Client, Account)> {
    Ok((
        azure::request::client(),
        Account::from_env(&format!("the standby {url}"))?,
    ))
}

/// Runs the standby until `stop` (or once); `on_applied` hears of every
/// point made ready. A disk that fails is retried at the next poll; the
/// others go on.
pub async fn run(
    repo: &Repo,
    o: &StandbyOptions,
    stop: &AtomicBool,
    on_applied: &mut dyn FnMut(&Applied, &str),
) -> Result<Vec<Applied>> {
    let (http, acct) = client_for(&o.to)?;
    azure::container::create_in(&http, &acct, &o.to.container).await?;
    let mut all = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let disks = if o.disks.is_empty() {
            manifest::list_disks(repo).await?
        } else {
            o.disks.clone()
        };
        let mut failing = false;
        for d in disks {
            let blob = PageBlob::new(http.clone(), acct.clone(), blob_url(&o.to, &d));
            match one_disk(repo, &d, &blob, o.keep, stop, on_applied).await {
                Ok(mut a) => all.append(&mut a),
                Err(e) if o.once => return Err(e),
                Err(e) => {
                    failing = true;
                    tracing::warn!(disk = %d, error = %e, "standby: disk failed; retrying at the next poll");
                }
            }
        }
        if o.once {
            break;
        }
        let wait = o.poll.saturating_sub(t0.elapsed());
        let until = Instant::now()
            + if failing {
                wait.max(Duration::from_secs(1))
            } else {
                wait
            };
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(all)
}

async fn one_disk(
    repo: &Repo,
    d: &Uuid,
    blob: &PageBlob,
    keep: usize,
    stop: &AtomicBool,
    on_applied: &mut dyn FnMut(&Applied, &str),
) -> Result<Vec<Applied>> {
    let (done, snaps) = disk::catch_up(repo, d, blob, stop).await?;
    if let Some(last) = done.last() {
        let label = manifest::load(repo, d, last.point).await?.0.disk_label();
        for a in &done {
            on_applied(a, &label);
        }
    }
    if !snaps.is_empty() {
        let n = disk::retain(repo, d, blob, &snaps, keep).await?;
        if n > 0 {
            tracing::info!(disk = %d, deleted = n, "standby: snapshots of pruned or surplus points deleted");
        }
    }
    Ok(done)
}

/// Fails over point `seq` of `disk` from the standby under `standby`: a
/// server-side copy of that point's snapshot into the page blob `to`.
pub async fn copy_point(
    repo: &Repo,
    disk: &Uuid,
    seq: u64,
    standby: &BlobUrl,
    to: &BlobUrl,
    force: bool,
) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let (h, _) = manifest::load(repo, disk, seq).await?;
    let (http, acct) = client_for(standby)?;
    let src = PageBlob::new(http, acct, blob_url(standby, disk));
    let snap = match disk::snapshot_of(&src, disk, seq).await? {
        Ok(s) => s,
        Err(have) => {
            let has = match (have.first(), have.last()) {
                (Some(a), Some(b)) => format!("it has points {a}..={b}, {} in all", have.len()),
                _ => "it has none yet".to_string(),
            };
            return Err(ShipError::Point {
                disk: h.disk_label(),
                why: format!(
                    "the standby {} has no snapshot of point {seq} ({has}); fail over without --standby to restore from the repository; nothing was written",
                    src.url
                ),
            });
        }
    };
    let dst = crate::restore::blob::open_blob(to).await?;
    let meta = [("hrl_disk", disk.to_string()), ("hrl_point", seq.to_string())];
    dst.copy_from(&src, Some(&snap), force, &meta).await?;
    let virt = azure::vhd::virtual_size(h.device_size);
    Ok(RestoreReport {
        bytes_written: virt + azure::vhd::FOOTER as u64,
        seconds: t0.elapsed().as_secs_f64(),
        ..RestoreReport::new(*disk, seq, &h, to.to_string())
    })
}

/// Writes point `point` of `disk` to `to`: an image file or device, a VHD
/// page blob restored from the repository, or (with `standby`) a page blob
/// copied from the standby's snapshot of the point.
pub async fn write_point(
    repo: &Repo,
    disk: &Uuid,
    point: crate::restore::PointSel,
    to: &std::path::Path,
    standby: Option<&str>,
    o: crate::restore::RestoreOptions,
) -> Result<RestoreReport> {
    match (to.to_str().and_then(BlobUrl::parse), standby) {
        (Some(blob), Some(sb)) => {
            let sb = BlobUrl::parse(sb)
                .ok_or_else(|| ShipError::Usage(format!("--standby {sb}: expected az://CONTAINER[/PREFIX]")))??;
            let seq = crate::restore::resolve(repo, disk, point).await?;
            copy_point(repo, disk, seq, &sb, &blob?, o.force).await
        }
        (None, Some(_)) => Err(ShipError::Usage(
            "--standby copies a snapshot into a page blob: give --to az://CONTAINER/NAME.vhd".into(),
        )),
        (Some(blob), None) => crate::restore::restore_to_blob(repo, disk, point, &blob?, o).await,
        (None, None) => crate::restore::restore_to(repo, disk, point, to, o).await,
    }
}
