//! What `hrl-shipper run` is told (options, the upload limit) and what it
//! reports.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::status::SharedStatus;

/// The chunk index file `run --repo` keeps in its spool.
pub const INDEX_FILE: &str = "hrl-shipper.index.redb";

/// Options of `hrl-shipper run`.
#[derive(Debug, Clone)]
pub struct ShipOptions {
    pub spool: PathBuf,
    /// Ship what is there and return.
    pub once: bool,
    /// Delete spool segments once every record in them is published.
    pub delete_shipped: bool,
    pub poll: Duration,
    /// Pack upload limit, shared by every disk; changeable while running.
    pub upload: Arc<Throttle>,
    /// RPO warning threshold in seconds (0: never); changeable while running.
    pub rpo_warn: Arc<AtomicU64>,
    /// Where the daemon publishes its status (metrics, status file).
    pub status: Option<SharedStatus>,
    /// The chunk index shared with the other ship loops of this process
    /// (the process server's); `None`: the loop loads its own.
    pub index: Option<Arc<super::known::SharedIndex>>,
    /// The local file of the chunk index (`crate::index`); `None`: in
    /// memory. Default: `SPOOL/hrl-shipper.index.redb`.
    pub index_file: Option<PathBuf>,
    /// Who this shipper is to the disks' leases, and their timing.
    pub lease: crate::repo::lease::LeaseOptions,
    /// Read the spool's segments with `O_DIRECT`: an agent writes them
    /// past the page cache. Not for a process server's cache, which is
    /// written through it.
    pub direct_reads: bool,
}

impl ShipOptions {
    pub fn new(spool: impl Into<PathBuf>) -> Self {
        let spool: PathBuf = spool.into();
        // The holder names the spool as the file system does, so a restart
        // with a relative path takes its own lease back at once.
        let path = std::fs::canonicalize(&spool).unwrap_or_else(|_| spool.clone());
        let holder = format!("{}:{}", hrl_common::host_name(), path.display());
        ShipOptions {
            index_file: Some(spool.join(INDEX_FILE)),
            lease: crate::repo::lease::LeaseOptions::new(holder),
            spool,
            once: false,
            delete_shipped: true,
            poll: Duration::from_millis(200),
            upload: Arc::new(Throttle::new(0)),
            rpo_warn: Arc::new(AtomicU64::new(0)),
            status: None,
            index: None,
            direct_reads: true,
        }
    }
}

/// An upload rate limit in bytes per second (0: none), shared by uploads.
#[derive(Debug)]
pub struct Throttle {
    pub rate: AtomicU64,
    state: std::sync::Mutex<(Instant, u64)>,
}

impl Throttle {
    pub fn new(rate: u64) -> Self {
        Throttle {
            rate: AtomicU64::new(rate),
            state: std::sync::Mutex::new((Instant::now(), 0)),
        }
    }

    /// Waits until `n` more bytes fit under the limit.
    pub async fn take(&self, n: u64) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            // A fresh window every 10 s: a changed limit applies soon, and
            // an idle period does not bank a burst.
            if st.0.elapsed() > Duration::from_secs(10) {
                *st = (Instant::now(), 0);
            }
            st.1 += n;
            Duration::from_secs_f64(st.1 as f64 / rate as f64).saturating_sub(st.0.elapsed())
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
