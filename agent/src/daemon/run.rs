//! `hrl-agent run`: every configured disk on its own thread, plus the
//! control socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::AgentConfig;
use crate::daemon::control::{bind, serve};
use crate::disk::DiskHandle;
use crate::disk::DiskWorker;
use crate::error::Result;

/// Opens every disk (any failure stops the start), serves the control
/// socket, and runs until `stop` or a disk fails.
pub fn run(cfg: &AgentConfig, stop: Arc<AtomicBool>) -> Result<()> {
    cfg.validate()?;
    let mut workers = Vec::new();
    let mut handles = Vec::new();
    for d in &cfg.disks {
        let (tx, rx) = std::sync::mpsc::channel();
        let w = DiskWorker::open(cfg, d, rx)?;
        handles.push(DiskHandle {
            name: d.name.clone(),
            requests: tx,
            status: w.status_handle(),
        });
        workers.push(w);
    }
    let statuses: Vec<_> = handles.iter().map(|h| h.status.clone()).collect();
    crate::daemon::progress::spawn(statuses.clone(), stop.clone());
    if !cfg.metrics_listen.is_empty() {
        // A port already taken (a second agent on the machine) costs the
        // metrics, never the protection.
        match hrl_format::metrics_http::spawn(&cfg.metrics_listen, move || crate::daemon::metrics::render(&statuses)) {
            Ok(a) => {
                tracing::info!(address = %a, "metrics at http://{a}/metrics");
                let _ = crate::daemon::metrics::ADDRESS.set(a.to_string());
            }
            Err(e) => tracing::warn!(address = %cfg.metrics_listen, error = %e, "no metrics endpoint"),
        }
    }
    if let Some(g) = &cfg.group {
        crate::group::serve(g.clone(), handles.clone(), stop.clone())?;
    }
    let listener = bind(&cfg.spool)?;
    let _registration = crate::daemon::registry::Registration::new(&crate::daemon::control::socket_path(&cfg.spool));
    let ctl = {
        let stop = stop.clone();
        let h = handles.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve(listener, h, stop))
            .map_err(|e| crate::AgentError::io("control thread", "spawn", e))?
    };
    let mut threads = Vec::new();
    for w in workers {
        let stop = stop.clone();
        let name = w.name.clone();
        let t = std::thread::Builder::new()
            .name(format!("disk-{name}"))
            .spawn(move || {
                let r = w.run(&stop);
                // One disk failing stops the agent: a half-running agent
                // would look protected while it is not.
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                r
            })
            .map_err(|e| crate::AgentError::io("disk thread", "spawn", e))?;
        threads.push(t);
    }
    // SIGHUP: re-read the config file's capture rate and RPO threshold.
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .map_err(|e| crate::AgentError::io("SIGHUP handler", "register", e))?;
    while !stop.load(Ordering::Relaxed) && threads.iter().any(|t| !t.is_finished()) {
        if hup.swap(false, Ordering::Relaxed) {
            reload(cfg, &handles);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut first_err = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(crate::AgentError::Internal("a disk worker panicked".into()));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = ctl.join();
    let _ = std::fs::remove_file(crate::daemon::control::socket_path(&cfg.spool));
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn reload(cfg: &AgentConfig, handles: &[DiskHandle]) {
    let Some(path) = &cfg.config_path else {
        tracing::warn!("SIGHUP: started without --config, nothing to reload");
        return;
    };
    match AgentConfig::load(path) {
        Ok(new) => {
            for h in handles {
                let _ = h.requests.send(crate::disk::Request::Reload {
                    capture_rate: new.capture_rate,
                    rpo_warn: new.rpo_warn,
                });
            }
        }
        Err(e) => tracing::error!(error = %e, "SIGHUP: config not reloaded, the running one stays"),
    }
}
