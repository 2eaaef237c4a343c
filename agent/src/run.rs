//! `hrl-agent run`: every configured disk on its own thread, plus the
//! control socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::AgentConfig;
use crate::control::{bind, serve, DiskHandle};
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
    crate::progress::spawn(handles.iter().map(|h| h.status.clone()).collect(), stop.clone());
    let listener = bind(&cfg.spool)?;
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
    let mut first_err = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(crate::AgentError::Config("a disk worker panicked".into()));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = ctl.join();
    let _ = std::fs::remove_file(crate::control::socket_path(&cfg.spool));
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
