//! The process server (`hrl-shipper serve`): protected machines stream
//! their spools to it over TLS; it checks every record, caches each
//! machine's segments, and ships them all into the one repository.
//!
//! Owns: the TLS identity (`tls`), the machines and their secrets
//! (`machines`), the cache (`ingest`), the HTTPS endpoint (`server`), a
//! machine reading its own points for restore and failback (`read`), the
//! ship loop over the cache (`ship`), and the fleet view: what it saw
//! of each disk (`observe`), the view and its alerts (`fleet`, `watch`),
//! its pages (`page`, `view`) and credential (`admin`); the registry
//! shared with the repository's other process servers (`shared_registry`); replication
//! policies (`policy`) and retention by policy (`retention`). Only this role holds the
//! repository key and the storage credentials; a machine can append to its
//! own disks' segments and read where they stand, nothing else. It never
//! touches a block device. The protocol is in docs/process-server.md.

pub mod admin;
pub mod config;
pub mod fleet;
pub mod ingest;
pub mod machines;
pub mod observe;
pub mod page;
pub mod policy;
mod read;
pub mod retention;
pub mod server;
pub mod shared_registry;
pub mod ship;
pub mod state;
pub mod tls;
mod view;
mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

pub use config::{GatewayConfig, GatewayFile};
pub use server::Gateway;

use crate::error::{Result, ShipError};
use crate::repo::Repo;

/// A running process server: its address and certificate fingerprint.
pub struct Serving {
    pub addr: SocketAddr,
    pub fingerprint: String,
}

/// Starts the process server; returns once it listens. It runs until
/// `stop` is set (the ship loop finishes its current step first).
pub async fn serve(cfg: GatewayConfig, stop: Arc<AtomicBool>) -> Result<(Serving, tokio::task::JoinHandle<()>)> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| ShipError::io(&cfg.state_dir, "create state directory", e))?;
    let (certs, key, created) = tls::load_or_create(&cfg.tls)?;
    let fingerprint = tls::fingerprint(&certs[0]);
    if created {
        tracing::info!(cert = %cfg.tls.cert.display(), fingerprint = %fingerprint, "created a self-signed certificate");
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(certs, key)?);
    let repo = Repo::open(&cfg.repo, &cfg.key_file).await?;
    let ingest = ingest::Ingest::new(&cfg.cache_dir, cfg.machine_quota)?;
    let gw = Arc::new(Gateway::new(
        cfg.state_dir.clone(),
        ingest,
        repo.clone(),
        cfg.fleet.clone(),
        policy::Policies::open(cfg.policy_file.clone())?,
    )?);
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| ShipError::Usage(format!("listen on {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ShipError::io(&cfg.listen, "local address", e))?;
    tracing::info!(address = %addr, fingerprint = %fingerprint, repo = %repo.url, cache = %cfg.cache_dir.display(), "process server listening");
    let shipping = tokio::spawn(ship::ship_machines(
        repo,
        (cfg.cache_dir.clone(), cfg.state_dir.clone()),
        cfg.lease_period,
        gw.ship_tasks.clone(),
        stop.clone(),
    ));
    tokio::spawn(watch::watch(gw.clone(), stop.clone()));
    tokio::spawn(share_registry(gw.clone(), stop.clone()));
    tokio::spawn(retention::schedule(gw.clone(), stop.clone()));
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
            let Ok(Ok((tcp, peer))) = accepted else { continue };
            let (acceptor, gw) = (acceptor.clone(), gw.clone());
            tokio::spawn(connection(acceptor, gw, tcp, peer));
        }
        let _ = shipping.await;
    });
    Ok((Serving { addr, fingerprint }, task))
}

/// Merges the registry shared through the repository every
/// [`shared_registry::INTERVAL`] until `stop`.
async fn share_registry(gw: Arc<Gateway>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        gw.registry_sync.run(&gw.repo, &gw.state_dir, Duration::ZERO).await;
        tokio::time::sleep(shared_registry::INTERVAL).await;
    }
}

/// One TLS connection: handshake within 10 s, then HTTP/1.1 requests
/// (headers within 30 s of each other).
async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    gw: Arc<Gateway>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %peer, "TLS handshake stalled; dropped");
            return;
        }
    };
    let svc = hyper::service::service_fn(move |req| server::handle(gw.clone(), peer, req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(tls), svc);
    if let Err(e) = conn.await {
        tracing::debug!(peer = %peer, error = %e, "connection ended");
    }
}
