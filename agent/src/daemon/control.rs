//! The control socket: `{spool}/hrl-agent.sock`, mode 0600, one JSON request
//! line and one JSON answer line per connection.
//!
//! Requests: `{"cmd":"point","disk":"NAME","app":true}`,
//! `{"cmd":"status"}`, and `{"cmd":"policy","policy":"NAME",
//! "point_interval_s":2,"app_point_interval_s":3600,"rpo_warn_s":300}`
//! (the process server's policy, sent by the forwarder; a key that is
//! null or absent goes back to the agent's config).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::disk::{DiskHandle, Request};
use crate::error::{AgentError, Result};
use crate::point::PointReply;

/// Name of the socket in the spool directory.
pub const SOCKET: &str = "hrl-agent.sock";

pub fn socket_path(spool: &Path) -> PathBuf {
    spool.join(SOCKET)
}

/// Binds the socket (replacing a stale one whose agent is gone).
pub fn bind(spool: &Path) -> Result<UnixListener> {
    let p = socket_path(spool);
    if p.exists() {
        if UnixStream::connect(&p).is_ok() {
            return Err(AgentError::Config(format!(
                "{}: another hrl-agent is serving this spool",
                p.display()
            )));
        }
        let _ = std::fs::remove_file(&p);
    }
    let l = UnixListener::bind(&p).map_err(|e| AgentError::io(&p, "bind control socket", e))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| AgentError::io(&p, "chmod 0600", e))?;
    l.set_nonblocking(true)
        .map_err(|e| AgentError::io(&p, "set non-blocking", e))?;
    Ok(l)
}

/// Serves requests until `stop`.
pub fn serve(l: UnixListener, disks: Vec<DiskHandle>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                let disks = disks.clone();
                std::thread::spawn(move || {
                    if let Err(e) = handle(s, &disks) {
                        tracing::warn!(error = %e, "control request failed");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_for_client(&l),
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Waits until a client connects or 250 ms pass (the stop flag is looked
/// at in between): an idle agent wakes 4 times a second here rather than
/// polling accept 20 times.
fn wait_for_client(l: &UnixListener) {
    let mut fds = [libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd for the listener, which outlives the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, 250) };
    if rc < 0 {
        // EINTR or a resource shortage: do not spin.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Status of every disk as JSON.
pub fn status_json(disks: &[DiskHandle]) -> Value {
    let now = hrl_format::now_ns();
    let list: Vec<Value> = disks
        .iter()
        .map(|d| {
            let st = d.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut v = serde_json::to_value(&st).unwrap_or(Value::Null);
            if let (Some(o), Some(lp)) = (v.as_object_mut(), st.last_point.as_ref()) {
                o.insert(
                    "last_point_age_s".into(),
                    json!(now.saturating_sub(lp.time_ns) as f64 / 1e9),
                );
            }
            v
        })
        .collect();
    json!({ "ok": true, "disks": list, "metrics": crate::daemon::metrics::ADDRESS.get() })
}

fn handle(s: UnixStream, disks: &[DiskHandle]) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let answer = match serde_json::from_str::<Value>(&line) {
        Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        Ok(req) => match req["cmd"].as_str() {
            Some("status") => status_json(disks),
            Some("policy") => match crate::disk::policy::PolicyOverride::from_json(&req) {
                Err(e) => json!({"ok": false, "error": format!("bad policy: {e}")}),
                Ok(p) => {
                    for d in disks {
                        let _ = d.requests.send(Request::Policy(p.clone()));
                    }
                    json!({"ok": true, "disks": disks.len()})
                }
            },
            Some("point") => {
                let name = req["disk"].as_str().unwrap_or_default();
                let app = req["app"].as_bool().unwrap_or(false);
                match disks.iter().find(|d| d.name == name) {
                    None => json!({"ok": false, "error": format!(
                        "no disk named {name:?}; this agent tracks: {}",
                        disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "))}),
                    Some(d) => {
                        let (tx, rx) = std::sync::mpsc::channel::<PointReply>();
                        if d.requests.send(Request::Point { app, reply: tx }).is_err() {
                            json!({"ok": false, "error": format!("disk {name} is not running")})
                        } else {
                            match rx.recv_timeout(Duration::from_secs(600)) {
                                Ok(r) => serde_json::to_value(r).unwrap_or(Value::Null),
                                Err(_) => json!({"ok": false, "error": "no answer from the disk worker"}),
                            }
                        }
                    }
                }
            }
            _ => json!({"ok": false, "error": "unknown cmd (point, status, policy)"}),
        },
    };
    let mut w = &s;
    writeln!(w, "{answer}")?;
    Ok(())
}

/// Sends one request to an agent's control socket.
pub fn request(socket: &Path, req: &Value) -> Result<Value> {
    let s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => AgentError::Config(format!(
            "{}: no agent is running for this spool ({e})",
            socket.display()
        )),
        _ => AgentError::io(socket, "connect", e),
    })?;
    let mut w = &s;
    writeln!(w, "{req}").map_err(|e| AgentError::io(socket, "send", e))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| AgentError::io(socket, "receive", e))?;
    serde_json::from_str(&line)
        .map_err(|e| AgentError::Peer(format!("{}: bad answer from the agent: {e}", socket.display())))
}
