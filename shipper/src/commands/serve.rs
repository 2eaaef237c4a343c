//! `hrl-shipper serve`: the process server. Machines stream their spools
//! to it over TLS; it holds the repository key and the storage
//! credentials and ships for all of them (docs/process-server.md).

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use hrl_common::ByteSize;

use crate::error::Result;
use crate::gateway::{serve, tls, GatewayFile};

#[derive(clap::Args)]
pub struct Args {
    /// TOML config (/etc/hrl/gateway.toml); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:9443].
    #[arg(long)]
    listen: Option<String>,
    /// Repository URL: file:///path or az://container/prefix.
    #[arg(long)]
    repo: Option<String>,
    /// Repository key file (64 hex characters, mode 0600).
    #[arg(long, env = "HRL_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Certificate, key and machine registry [default: /var/lib/hrl-gateway].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Where machines' segments wait to be shipped [default: STATE_DIR/cache].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Cache bytes each machine may hold, e.g. 20GiB; 0: no limit [default: 0].
    #[arg(long)]
    machine_quota: Option<ByteSize>,
    /// Print the certificate's SHA-256 fingerprint (creating the
    /// certificate if there is none) and exit.
    #[arg(long)]
    fingerprint: bool,
}

/// The file's settings with the flags laid over them.
pub fn settings(config: Option<&PathBuf>, state_dir: Option<&PathBuf>) -> Result<GatewayFile> {
    let mut f = match config {
        Some(p) => GatewayFile::load(p)?,
        None => GatewayFile::default(),
    };
    if let Some(d) = state_dir {
        f.state_dir = Some(d.clone());
    }
    Ok(f)
}

pub async fn run(a: Args) -> Result<u8> {
    let mut f = settings(a.config.as_ref(), a.state_dir.as_ref())?;
    if a.fingerprint {
        let state = f.state_dir();
        std::fs::create_dir_all(&state).map_err(|e| crate::ShipError::io(&state, "create state directory", e))?;
        let (certs, _, _) = tls::load_or_create(&f.tls())?;
        println!("{}", tls::fingerprint(&certs[0]));
        return Ok(0);
    }
    f.listen = a.listen.or(f.listen);
    f.repo = a.repo.or(f.repo);
    f.key_file = a.key_file.or(f.key_file);
    f.cache_dir = a.cache_dir.or(f.cache_dir);
    f.machine_quota = a.machine_quota.or(f.machine_quota);
    let cfg = f.resolve()?;
    let stop = super::run::stop_flag()?;
    let (serving, task) = serve(cfg, stop.clone()).await?;
    eprintln!(
        "hrl-shipper serve: listening on {}; certificate fingerprint {}",
        serving.addr, serving.fingerprint
    );
    let _ = task.await;
    tracing::info!(stopped = stop.load(Ordering::Relaxed), "process server stopped");
    Ok(0)
}
