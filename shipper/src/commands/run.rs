//! `hrl-shipper run`: the ship loop as a daemon (status file, metrics,
//! SIGHUP reload of `upload_rate` and `rpo_warn`, endpoint outages waited
//! out) or, with `--once`, ship what is there and exit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hrl_common::{ByteSize, HumanDuration};

use super::print_json;
use crate::config::ShipperConfig;
use crate::error::{Result, ShipError};
use crate::repo::Repo;
use crate::ship::status::{serve_metrics, ShipStatus};
use crate::ship::{ship, ShipOptions};

#[derive(clap::Args)]
pub struct Args {
    /// TOML config (/etc/hrl/shipper.toml); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Repository URL: file:///path or az://container/prefix.
    #[arg(long)]
    repo: Option<String>,
    /// Key file (64 hex characters, mode 0600).
    #[arg(long, env = "HRL_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// The agent's spool directory.
    #[arg(long)]
    spool: Option<PathBuf>,
    /// Ship what is in the spool now, then exit (no daemon).
    #[arg(long)]
    once: bool,
    /// Keep shipped segments in the spool.
    #[arg(long)]
    keep_shipped: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
    /// Prometheus endpoint; "" for none [default: 127.0.0.1:9562].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Warn when the newest published point is older than this; 0: never [default: 5m].
    #[arg(long)]
    rpo_warn: Option<HumanDuration>,
    /// Pack upload limit in bytes per second, e.g. 50MiB; 0: none [default: 0].
    #[arg(long)]
    upload_rate: Option<ByteSize>,
    /// Another shipper takes a disk over after its lease went this long
    /// unrenewed; at least 3s [default: 30s].
    #[arg(long)]
    lease_period: Option<HumanDuration>,
    /// The chunk index file: about 270 bytes per chunk in the repository
    /// [default: SPOOL/hrl-shipper.index.redb].
    #[arg(long)]
    index_file: Option<PathBuf>,
    /// Forward the spool to a process server instead of shipping it: this
    /// machine's identity file (from `hrl-shipper enroll`). No --repo or
    /// key file is needed or used.
    #[arg(long, conflicts_with_all = ["repo", "key_file", "upload_rate", "keep_shipped", "index_file"])]
    identity: Option<PathBuf>,
    /// With --identity: the process servers to use instead of the one
    /// enrolled with, in order of preference, comma separated
    /// (https://HOST1:9443,https://HOST2:9443). They serve one repository
    /// and share the enrolled certificate. With several, the forwarder
    /// moves to the next when one is unreachable or refuses, and keeps
    /// each segment until it is published.
    #[arg(long, requires = "identity", value_delimiter = ',')]
    gateway: Vec<String>,
}

impl Args {
    /// Forwards to a process server rather than shipping.
    pub fn forwards(&self) -> bool {
        self.identity.is_some()
    }
}

/// The file's config with the flags laid over it.
fn config(a: &Args) -> Result<ShipperConfig> {
    let mut cfg = match &a.config {
        Some(p) => ShipperConfig::load(p)?,
        None => ShipperConfig::default(),
    };
    if let Some(v) = &a.repo {
        cfg.repo = Some(v.clone());
    }
    if let Some(v) = &a.key_file {
        cfg.key_file = Some(v.clone());
    }
    if let Some(v) = &a.spool {
        cfg.spool = Some(v.clone());
    }
    if let Some(v) = &a.metrics_listen {
        cfg.metrics_listen = v.clone();
    }
    if let Some(v) = a.rpo_warn {
        cfg.rpo_warn = v.into();
    }
    if let Some(v) = a.upload_rate {
        cfg.upload_rate = v.bytes();
    }
    if let Some(v) = &a.index_file {
        cfg.index_file = Some(v.clone());
    }
    if a.lease_period.is_some() {
        cfg.lease_period = crate::repo::lease::period(a.lease_period.map(Into::into))?;
    }
    Ok(cfg)
}

pub(crate) fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| ShipError::io("signal", "register", e))?;
    }
    Ok(stop)
}

/// Opens the repository; as a daemon, an endpoint that fails is waited
/// out (1 s doubling to 60 s); everything else is an error.
async fn open_repo(url: &str, key_file: &std::path::Path, once: bool, stop: &AtomicBool) -> Result<Repo> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match Repo::open(url, key_file).await {
            Ok(r) => return Ok(r),
            Err(e @ ShipError::Store { .. }) if !once && !stop.load(Ordering::Relaxed) => {
                tracing::error!(error = %e, backoff_s = backoff.as_secs(), "cannot open the repository; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e),
        }
    }
}

/// SIGHUP: re-reads the file's `upload_rate` and `rpo_warn`.
fn reload_on_sighup(path: PathBuf, o: &ShipOptions, stop: Arc<AtomicBool>) -> Result<()> {
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .map_err(|e| ShipError::io("signal", "register", e))?;
    let (rate, warn) = (o.upload.clone(), o.rpo_warn.clone());
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if hup.swap(false, Ordering::Relaxed) {
                match ShipperConfig::load(&path) {
                    Ok(c) => {
                        rate.rate.store(c.upload_rate, Ordering::Relaxed);
                        warn.store(c.rpo_warn.as_secs(), Ordering::Relaxed);
                        tracing::info!(
                            upload_rate = c.upload_rate,
                            rpo_warn_s = c.rpo_warn.as_secs(),
                            "configuration reloaded"
                        );
                    }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: config not reloaded, the running one stays"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok(())
}

/// `run --identity`: forward the spool to the gateway.
async fn forward(a: &Args, identity: &std::path::Path, spool: PathBuf, metrics_listen: &str) -> Result<u8> {
    let mut id = crate::forward::Identity::load(identity)?;
    let mut gateways: Vec<String> = a
        .gateway
        .iter()
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    gateways.dedup();
    if let Some(g) = gateways.first() {
        id.gateway = g.clone();
    }
    let stop = stop_flag()?;
    let mut o = crate::forward::ForwardOptions::new(spool);
    o.once = a.once;
    if gateways.len() > 1 {
        o.gateways = gateways;
    }
    if !a.once {
        let st = Arc::new(Mutex::new(crate::forward::status::ForwardStatus {
            gateway: id.gateway.clone(),
            machine: id.machine.clone(),
            pid: std::process::id(),
            ..Default::default()
        }));
        if !metrics_listen.is_empty() {
            crate::forward::status::serve_metrics(&st, metrics_listen);
        }
        o.status = Some(st);
    }
    tracing::info!(gateway = %id.gateway, others = o.gateways.len().saturating_sub(1), machine = %id.machine, spool = %o.spool.display(), "forwarding the spool");
    let rep = crate::forward::forward(&id, &o, &stop).await?;
    if a.json {
        print_json(&rep)?;
    } else {
        println!(
            "forwarded {} to {} in {} requests; {} segments complete there and deleted here",
            hrl_format::human_bytes(rep.bytes_sent),
            id.gateway,
            rep.requests,
            rep.segments_completed
        );
    }
    Ok(0)
}

pub async fn run(a: Args) -> Result<u8> {
    let cfg = config(&a)?;
    if let Some(identity) = &a.identity {
        let spool = cfg
            .spool
            .clone()
            .ok_or_else(|| ShipError::Usage("run needs --spool (or `spool` in --config)".into()))?;
        return forward(&a, identity, spool, &cfg.metrics_listen).await;
    }
    let need = |what: &str| {
        ShipError::Usage(format!(
            "run needs --{what} (or `{}` in --config)",
            what.replace('-', "_")
        ))
    };
    let url = cfg.repo.clone().ok_or_else(|| need("repo"))?;
    let key_file = cfg.key_file.clone().ok_or_else(|| need("key-file"))?;
    let spool = cfg.spool.clone().ok_or_else(|| need("spool"))?;
    let stop = stop_flag()?;
    let repo = open_repo(&url, &key_file, a.once, &stop).await?;
    let mut o = ShipOptions::new(spool);
    o.once = a.once;
    o.delete_shipped = !a.keep_shipped;
    o.upload.rate.store(cfg.upload_rate, Ordering::Relaxed);
    o.rpo_warn.store(cfg.rpo_warn.as_secs(), Ordering::Relaxed);
    o.lease.period = cfg.lease_period;
    if let Some(f) = &cfg.index_file {
        o.index_file = Some(f.clone());
    }
    if !a.once {
        let st = Arc::new(Mutex::new(ShipStatus {
            repo: url.clone(),
            pid: std::process::id(),
            ..Default::default()
        }));
        if !cfg.metrics_listen.is_empty() {
            serve_metrics(&st, &cfg.metrics_listen);
        }
        o.status = Some(st);
        if let Some(path) = a.config.clone() {
            reload_on_sighup(path, &o, stop.clone())?;
        }
    }
    let rep = ship(&repo, &o, &stop).await?;
    if a.json {
        print_json(&rep)?;
    } else {
        println!(
            "published {} points; {} of chunk data ({} zero chunks), {} new chunks stored in {} ({} deduplicated), {} packs, {} spool segments deleted",
            rep.points_published,
            hrl_format::human_bytes(rep.data_bytes),
            rep.zero_chunks,
            rep.chunks_new,
            hrl_format::human_bytes(rep.stored_bytes),
            rep.chunks_deduplicated,
            rep.packs,
            rep.segments_deleted
        );
    }
    Ok(0)
}
