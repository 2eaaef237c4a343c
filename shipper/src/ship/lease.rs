//! A disk is shipped only under its lease (`repo::lease`): taken before
//! the first record is read, renewed while records are read, checked
//! before every manifest, given up on a clean stop.

use std::time::Duration;

use super::disk::DiskShipper;
use super::options::ShipOptions;
use crate::error::{Result, ShipError};
use crate::repo::lease::{self, Claim};
use crate::repo::lock;
use crate::repo::Repo;

/// How often a shipper waiting for a disk looks at its lease again.
fn claim_interval(opts: &ShipOptions) -> Duration {
    opts.lease.period / 6
}

impl DiskShipper {
    /// Holds the disk's lease, renewed when due. `false`: another shipper
    /// holds it (with `--once`, an error says who).
    pub(super) async fn hold_lease(&mut self, repo: &Repo, opts: &ShipOptions) -> Result<bool> {
        if let Some(l) = &mut self.lease {
            l.renew_if_due(repo).await?;
            return Ok(true);
        }
        let now = opts.lease.clock.now();
        if self.next_claim.is_some_and(|t| now < t) {
            return Ok(false);
        }
        if let Some(at) = self.released_at {
            if !spool_beyond(&opts.spool, &self.disk, at)? {
                return Ok(false);
            }
            self.released_at = None;
        }
        self.next_claim = Some(now + claim_interval(opts));
        match lease::claim(repo, &self.disk, &opts.lease, &mut self.watch).await? {
            Claim::Held(l) => {
                self.lease = Some(l);
                self.next_claim = None;
                self.active_at = Some(now);
                self.waiting_for = None;
                Ok(true)
            }
            Claim::Busy { holder, generation } if opts.once => Err(ShipError::Leased {
                disk: self.disk.to_string(),
                holder,
                generation,
            }),
            Claim::Busy { holder, generation } => {
                if self.waiting_for.as_deref() != Some(holder.as_str()) {
                    tracing::warn!(disk = %self.disk, holder = %holder, generation, "another shipper holds this disk's lease: waiting until it stops renewing it");
                    self.waiting_for = Some(holder);
                }
                Ok(false)
            }
        }
    }

    /// Before a manifest: errors with `LeaseLost` unless the lease is still
    /// this shipper's.
    pub(super) async fn check_lease(&self, repo: &Repo) -> Result<u64> {
        match &self.lease {
            Some(l) => {
                l.check_publish(repo).await?;
                Ok(l.generation)
            }
            None => Err(ShipError::Internal(format!(
                "disk {}: publishing without its lease",
                self.disk
            ))),
        }
    }

    /// Waits while a live prune holds its lock, renewing the lease
    /// meanwhile (a prune may hold it longer than a lease period). Returns
    /// whether it waited.
    pub(super) async fn wait_for_prune(&mut self, repo: &Repo) -> Result<bool> {
        let mut waited = false;
        while let Some(age) = lock::lock_age(repo).await? {
            if !lock::live(age) {
                break;
            }
            if !waited {
                tracing::info!(disk = %self.disk, "prune running: waiting before publishing");
                waited = true;
            }
            if let Some(l) = &mut self.lease {
                l.renew_if_due(repo).await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(waited)
    }

    /// After `LeaseLost`: forget the window and claim again.
    pub(super) fn drop_lease(&mut self, spool: &std::path::Path) -> Result<()> {
        self.lease = None;
        self.waiting_for = None;
        self.reset(spool)
    }

    /// No record for a whole lease period: give the lease up, so another
    /// shipper the disk's records now go to (a forwarder that moved to
    /// another process server) need not wait for this one to stop. The
    /// window's chunks are stored first; the window is read again from the
    /// cursor if the lease is taken back when the spool grows.
    pub(super) async fn idle_release(
        &mut self,
        repo: &Repo,
        known: &mut super::known::Known,
        opts: &ShipOptions,
        report: &mut super::status::ShipReport,
    ) -> Result<()> {
        if self.lease.is_none() {
            return Ok(());
        }
        self.store_window(repo, known, opts, report).await?;
        let at = self.follower.cursor();
        self.release_lease(repo).await;
        self.reset(&opts.spool)?;
        self.released_at = Some(at);
        self.active_at = None;
        tracing::info!(disk = %self.disk, idle_s = opts.lease.period.as_secs(), "no new records for a lease period: gave the disk's lease up until the spool grows");
        Ok(())
    }

    /// A clean stop: the next shipper of the disk need not wait a period.
    pub(super) async fn release_lease(&mut self, repo: &Repo) {
        if let Some(l) = self.lease.take() {
            if let Err(e) = l.release(repo).await {
                tracing::warn!(disk = %self.disk, error = %e, "could not release the disk's lease; the next shipper waits for it to expire");
            }
        }
    }
}

/// Whether `disk`'s spool holds bytes past `at` (a newer segment, or more
/// of the segment `at` is in).
fn spool_beyond(spool: &std::path::Path, disk: &uuid::Uuid, at: hrl_format::Cursor) -> Result<bool> {
    for s in hrl_format::list_segments(spool, Some(*disk))? {
        if s.seq > at.seq || (s.seq == at.seq && at.offset == 0) {
            return Ok(true);
        }
        if s.seq == at.seq {
            let len = std::fs::metadata(&s.path)
                .map_err(|e| ShipError::io(&s.path, "stat", e))?
                .len();
            if len > at.offset {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
