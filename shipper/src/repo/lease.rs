//! Disk leases: a shipper (a process server's ship loop or `run --repo`)
//! publishes a disk's points only while it holds that disk's lease, so two
//! process servers never ship the same disk.
//!
//! A lease is a generation: the object `leases/<disk>/<gen>` created with
//! a conditional create (both stores have create-if-absent; the local one
//! has no update-if-matches). Taking a lease over creates the next
//! generation, so at most one shipper wins each generation. The holder
//! renews by overwriting its own generation's object; a shipper that wants
//! the disk judges the lease expired when it saw that object unchanged for
//! a whole lease period **by its own monotonic clock**: no wall clocks are
//! compared, only the rates of two clocks are assumed to agree within the
//! margin.
//!
//! Fencing does not depend on clocks at all: before every manifest the
//! holder checks that generation `gen + 1` does not exist, the manifest
//! records `gen`, and manifests are created only if absent; a stale holder
//! whose check raced a takeover collides with the new holder's manifest of
//! the same point. So a point is never published by a shipper after a
//! newer generation published one (docs/repository-format.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::repository::Repo;
use crate::error::{to_json, Result, ShipError};

/// A monotonic clock: the lease's only notion of time (a test skews it).
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Duration;
}

/// The process's monotonic clock.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock the caller moves (tests: a stalled or skewed holder).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// How a shipper takes and keeps leases.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// Who holds it: host name and spool path. The same holder takes its
    /// own lease back at once after a restart (its spool lock guarantees
    /// no other live shipper of that spool).
    pub holder: String,
    /// Renewed every third of it; judged expired after it unchanged.
    pub period: Duration,
    pub clock: Arc<dyn Clock>,
}

impl LeaseOptions {
    pub const DEFAULT_PERIOD: Duration = Duration::from_secs(30);

    pub fn new(holder: String) -> Self {
        LeaseOptions {
            holder,
            period: Self::DEFAULT_PERIOD,
            clock: Arc::new(SystemClock(Instant::now())),
        }
    }

    /// How long after its last renewal started a holder still publishes:
    /// a sixth of the period short of what a taker waits, for clock rates
    /// that differ and the time a renewal takes to land.
    fn valid_for(&self) -> Duration {
        self.period - self.period / 6
    }
}

/// How often a long wait looks whether the lease is due for renewal.
const RENEW_LOOK: Duration = Duration::from_secs(1);

/// Awaits `fut`, renewing `lease` when due meanwhile. A wait for the upload
/// limit (a 1 MiB pack at 256 KiB/s is 4 s, a 16 MiB one at 512 KiB/s half
/// a minute) or for pack uploads to a slow store can outlast five sixths
/// of the lease period; the lease was then lost, and the window read
/// again, for every pack.
pub async fn renewing<T>(
    lease: &mut Option<Lease>,
    repo: &Repo,
    fut: impl std::future::Future<Output = T>,
) -> Result<T> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            v = &mut fut => return Ok(v),
            _ = tokio::time::sleep(RENEW_LOOK) => {
                if let Some(l) = lease.as_mut() {
                    l.renew_if_due(repo).await?;
                }
            }
        }
    }
}

/// A lease period from a file or flag: at least 3 s (it is renewed every
/// third of it); default 30 s.
pub fn period(v: Option<Duration>) -> Result<Duration> {
    let p = v.unwrap_or(LeaseOptions::DEFAULT_PERIOD);
    if p < Duration::from_secs(3) {
        return Err(ShipError::Usage(format!(
            "lease_period {}s is too short: at least 3s (the lease is renewed every third of it)",
            p.as_secs_f64()
        )));
    }
    Ok(p)
}

/// The lease object's body (sealed with the repository key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub disk: Uuid,
    pub generation: u64,
    pub holder: String,
    /// The holder's wall-clock time of the write: shown, never compared.
    pub time_ns: u64,
    pub renewals: u64,
    /// Given up (a clean stop): the next shipper takes over at once.
    #[serde(default)]
    pub released: bool,
}

pub fn lease_prefix(disk: &Uuid) -> String {
    format!("leases/{disk}/")
}

pub fn lease_key(disk: &Uuid, generation: u64) -> String {
    format!("leases/{disk}/{generation:016}")
}

/// A lease this shipper holds.
#[derive(Debug)]
pub struct Lease {
    pub disk: Uuid,
    pub generation: u64,
    renewals: u64,
    /// When the last successful renewal (or the take) started.
    renewed_at: Duration,
    opts: LeaseOptions,
}

/// What an attempt to take a lease found.
#[derive(Debug)]
pub enum Claim {
    Held(Lease),
    /// Another holder's live lease, or one not yet seen unchanged for a
    /// whole period.
    Busy {
        holder: String,
        generation: u64,
    },
}

/// What a shipper waiting for a lease has seen of it.
#[derive(Debug, Default)]
pub struct Watch {
    seen: Option<(u64, String, Duration)>,
}

/// Tries to take `disk`'s lease. `watch` carries what earlier attempts saw:
/// another holder's lease is taken over only once its object stayed the
/// same for a whole period of this shipper's clock.
pub async fn claim(repo: &Repo, disk: &Uuid, opts: &LeaseOptions, watch: &mut Watch) -> Result<Claim> {
    let gens = generations(repo, disk).await?;
    let Some(&newest) = gens.last() else {
        return take(repo, disk, 1, opts, &gens).await;
    };
    let key = lease_key(disk, newest);
    let Some(version) = repo.version(&key).await? else {
        return Ok(busy(newest, "(just replaced)"));
    };
    let rec = read(repo, &key).await?;
    if rec.holder == opts.holder || rec.released {
        return take(repo, disk, newest + 1, opts, &gens).await;
    }
    let now = opts.clock.now();
    match &watch.seen {
        Some((g, v, since)) if *g == newest && *v == version => {
            if now.saturating_sub(*since) >= opts.period {
                tracing::warn!(disk = %disk, holder = %rec.holder, generation = newest, "lease not renewed for a whole period: taking it over");
                return take(repo, disk, newest + 1, opts, &gens).await;
            }
        }
        _ => watch.seen = Some((newest, version, now)),
    }
    Ok(busy(newest, &rec.holder))
}

fn busy(generation: u64, holder: &str) -> Claim {
    Claim::Busy {
        holder: holder.to_string(),
        generation,
    }
}

/// Creates generation `g`; on success deletes the older generations (only
/// the newest and any newer matter for fencing).
async fn take(repo: &Repo, disk: &Uuid, g: u64, opts: &LeaseOptions, older: &[u64]) -> Result<Claim> {
    let started = opts.clock.now();
    let rec = record(disk, g, &opts.holder, 0, false);
    let key = lease_key(disk, g);
    if !repo.put_new(&key, seal(repo, &key, &rec)?).await? {
        return Ok(busy(g, "(another shipper, just now)"));
    }
    for &o in older {
        if let Err(e) = repo.delete(&lease_key(disk, o)).await {
            tracing::debug!(disk = %disk, generation = o, error = %e, "could not delete an old lease generation");
        }
    }
    tracing::info!(disk = %disk, generation = g, holder = %opts.holder, "took the disk's lease");
    Ok(Claim::Held(Lease {
        disk: *disk,
        generation: g,
        renewals: 0,
        renewed_at: started,
        opts: opts.clone(),
    }))
}

impl Lease {
    /// Renews when a third of the period passed since the last renewal.
    /// Errors with `LeaseLost` when a newer generation exists or the lease
    /// ran out before a renewal succeeded.
    pub async fn renew_if_due(&mut self, repo: &Repo) -> Result<()> {
        let now = self.opts.clock.now();
        if now.saturating_sub(self.renewed_at) < self.opts.period / 3 {
            return Ok(());
        }
        self.still_valid(now)?;
        self.fence(repo).await?;
        let rec = record(&self.disk, self.generation, &self.opts.holder, self.renewals + 1, false);
        let key = lease_key(&self.disk, self.generation);
        repo.put(&key, seal(repo, &key, &rec)?, false).await?;
        self.renewals += 1;
        self.renewed_at = now;
        Ok(())
    }

    /// Before a manifest: the lease is valid by this shipper's clock and no
    /// newer generation exists.
    pub async fn check_publish(&self, repo: &Repo) -> Result<()> {
        self.still_valid(self.opts.clock.now())?;
        self.fence(repo).await
    }

    /// The lease is still valid by this shipper's clock (no request): the
    /// last look before a manifest whose checks were read while its index
    /// object was written.
    pub fn check_clock(&self) -> Result<()> {
        self.still_valid(self.opts.clock.now())
    }

    /// Gives the lease up (a clean stop), unless it was already taken over.
    pub async fn release(&self, repo: &Repo) -> Result<()> {
        self.fence(repo).await?;
        let rec = record(&self.disk, self.generation, &self.opts.holder, self.renewals + 1, true);
        let key = lease_key(&self.disk, self.generation);
        repo.put(&key, seal(repo, &key, &rec)?, false).await
    }

    fn still_valid(&self, now: Duration) -> Result<()> {
        let age = now.saturating_sub(self.renewed_at);
        if age < self.opts.valid_for() {
            return Ok(());
        }
        Err(self.lost(format!("not renewed for {:.1}s", age.as_secs_f64())))
    }

    async fn fence(&self, repo: &Repo) -> Result<()> {
        let next = lease_key(&self.disk, self.generation + 1);
        if !repo.exists(&next).await? {
            return Ok(());
        }
        let by = read(repo, &next).await.map(|r| r.holder).unwrap_or_default();
        Err(self.lost(format!("generation {} taken by {by}", self.generation + 1)))
    }

    fn lost(&self, why: String) -> ShipError {
        ShipError::LeaseLost {
            disk: self.disk.to_string(),
            generation: self.generation,
            why,
        }
    }
}

/// The generations of `disk`'s lease in the repository, oldest first.
pub async fn generations(repo: &Repo, disk: &Uuid) -> Result<Vec<u64>> {
    repo.list_numbered(&lease_prefix(disk)).await
}

/// Reads and authenticates a lease object.
pub async fn read(repo: &Repo, key: &str) -> Result<LeaseRecord> {
    let blob = repo.get(key).await?;
    let plain = repo.keys.open_meta(key, key.as_bytes(), &blob)?;
    serde_json::from_slice(&plain).map_err(|e| ShipError::corrupt(key, e.to_string()))
}

fn record(disk: &Uuid, generation: u64, holder: &str, renewals: u64, released: bool) -> LeaseRecord {
    LeaseRecord {
        disk: *disk,
        generation,
        holder: holder.to_string(),
        time_ns: hrl_format::now_ns(),
        renewals,
        released,
    }
}

fn seal(repo: &Repo, key: &str, rec: &LeaseRecord) -> Result<Vec<u8>> {
    Ok(repo.keys.seal_meta(key.as_bytes(), &to_json(rec, "lease")?))
}
