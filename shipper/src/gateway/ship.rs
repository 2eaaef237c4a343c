//! The gateway's ship loop: one ship task per machine's cache spool, all
//! into the one repository on one shared chunk index (so content shared
//! between machines is stored once, and the index is held once), with the
//! publish order and promises of the local shipper.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::repo::Repo;
use crate::ship::status::ShipStatus;
use crate::ship::{ship, SharedIndex, ShipOptions};

/// Every machine's ship task, so a request can pause one machine's (to
/// drop a stale copy of a disk) and resume it; and the chunk index they
/// share, once loaded, which a machine's restore looks its chunks up in.
#[derive(Default)]
pub struct ShipTasks {
    inner: tokio::sync::Mutex<Tasks>,
    pub index: std::sync::OnceLock<Arc<SharedIndex>>,
}

#[derive(Default)]
struct Tasks {
    running: HashMap<String, (Arc<AtomicBool>, tokio::task::JoinHandle<()>)>,
    /// Machines paused, with how many pauses are outstanding (two
    /// requests may pause one machine at once).
    paused: HashMap<String, usize>,
}

impl ShipTasks {
    /// Stops `machine`'s ship task (it ends its current step and releases
    /// its leases) and keeps it stopped until [`ShipTasks::resume`].
    pub async fn pause(&self, machine: &str) {
        let task = {
            let mut g = self.inner.lock().await;
            *g.paused.entry(machine.to_string()).or_default() += 1;
            g.running.remove(machine)
        };
        if let Some((stop, h)) = task {
            stop.store(true, Ordering::Relaxed);
            let _ = h.await;
        }
    }

    /// Lets `machine`'s ship task start again (within half a second).
    pub async fn resume(&self, machine: &str) {
        let mut g = self.inner.lock().await;
        if let Some(n) = g.paused.get_mut(machine) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.paused.remove(machine);
            }
        }
    }
}

/// Starts a ship task for every machine directory that appears under
/// `cache`, until `stop`. A task that fails starts again after a backoff
/// (its cursor makes that safe).
pub async fn ship_machines(
    repo: Repo,
    (cache, state): (PathBuf, PathBuf),
    lease_period: Duration,
    tasks: Arc<ShipTasks>,
    stop: Arc<AtomicBool>,
) {
    let Some(index) = load_index(&repo, &state.join(INDEX_FILE), &stop).await else {
        return;
    };
    let _ = tasks.index.set(index.clone());
    while !stop.load(Ordering::Relaxed) {
        if let Ok(rd) = std::fs::read_dir(&cache) {
            let mut g = tasks.inner.lock().await;
            for e in rd.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if !e.path().is_dir() || g.running.contains_key(&name) || g.paused.contains_key(&name) {
                    continue;
                }
                let own_stop = Arc::new(AtomicBool::new(false));
                let (repo, spool, index) = (repo.clone(), e.path(), index.clone());
                let h = tokio::spawn(ship_one(
                    repo,
                    name.clone(),
                    spool,
                    index,
                    lease_period,
                    own_stop.clone(),
                ));
                g.running.insert(name, (own_stop, h));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let running = std::mem::take(&mut tasks.inner.lock().await.running);
    for (_, (s, _)) in running.iter() {
        s.store(true, Ordering::Relaxed);
    }
    for (_, (_, t)) in running {
        let _ = t.await;
    }
}

/// The chunk index file in the state directory: memory stays bounded
/// however large the repository grows.
pub const INDEX_FILE: &str = "chunk-index.redb";

/// The repository's chunk index, loaded once for every machine's loop;
/// endpoint errors are waited out. `None` when stopped first.
async fn load_index(repo: &Repo, file: &Path, stop: &AtomicBool) -> Option<Arc<SharedIndex>> {
    let mut backoff = Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        match SharedIndex::load(repo, Some(file)).await {
            Ok(i) => {
                let n = i.chunks().await.unwrap_or(0);
                tracing::info!(chunks = n, file = %file.display(), "chunk index loaded for every machine's ship loop");
                return Some(i);
            }
            Err(e) => {
                tracing::error!(error = %e, backoff_s = backoff.as_secs(), "cannot read the repository's indexes; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
    None
}

async fn ship_one(
    repo: Repo,
    machine: String,
    spool: PathBuf,
    index: Arc<SharedIndex>,
    lease_period: Duration,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        let mut o = ShipOptions::new(&spool);
        o.poll = Duration::from_millis(100);
        o.index = Some(index.clone());
        o.lease.period = lease_period;
        // The cache is written through the page cache and read soon after.
        o.direct_reads = false;
        // The status file in the machine's cache spool is what the fleet
        // view reads (published points, bytes not yet published).
        o.status = Some(Arc::new(std::sync::Mutex::new(ShipStatus {
            repo: repo.url.clone(),
            pid: std::process::id(),
            ..Default::default()
        })));
        match ship(&repo, &o, &stop).await {
            Ok(rep) => {
                tracing::info!(machine = %machine, points = rep.points_published, "ship loop ended");
                return;
            }
            Err(e) => {
                tracing::error!(machine = %machine, error = %e, backoff_s = backoff.as_secs(), "ship loop failed; starting again from its cursor");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}
