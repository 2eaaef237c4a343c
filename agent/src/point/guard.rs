//! The thaw guardian: a small child process that thaws a frozen filesystem
//! when the agent cannot.
//!
//! The freeze watchdog is a thread of the agent, so a `kill -9` (or a crash)
//! of the agent inside a freeze would leave the filesystem frozen forever:
//! the kernel does not thaw when the freezing process dies. The guardian is
//! spawned per mount at start (`hrl-agent freeze-guard --mount M`) and reads
//! `freeze <ms>` / `thaw` lines from a pipe. When the pipe reaches EOF (the
//! agent is gone) while a freeze is announced, it thaws at once; it also
//! thaws when an announced freeze outlives its deadline (a second watchdog,
//! 200 ms after the agent's own).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{AgentError, Result};

const FITHAW: libc::c_ulong = 0xC004_5878;

fn thaw(dir: &File) -> std::io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FITHAW takes an int argument (ignored).
    if unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW as _, &mut arg) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Thaws `mount` if it is frozen; true when it was.
pub fn thaw_if_frozen(mount: &Path) -> Result<bool> {
    let f = File::open(mount).map_err(|e| AgentError::io(mount, "open mount", e))?;
    match thaw(&f) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(AgentError::io(mount, "FITHAW", e)),
    }
}

/// The guardian's main loop (`hrl-agent freeze-guard`).
pub fn run_guard(mount: &Path) -> Result<()> {
    let dir = File::open(mount).map_err(|e| AgentError::io(mount, "open mount", e))?;
    let mut stdin = std::io::stdin().lock();
    let mut pending = Vec::new();
    let mut frozen_until: Option<Instant> = None;
    let mut buf = [0u8; 256];
    loop {
        let timeout_ms: libc::c_int = match frozen_until {
            None => -1,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as libc::c_int,
        };
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n > 0 {
            let k = stdin.read(&mut buf).unwrap_or(0);
            if k == 0 {
                if frozen_until.is_some() {
                    let r = thaw(&dir);
                    eprintln!(
                        "hrl-agent freeze-guard: the agent went away during a freeze of {}; thawed ({r:?})",
                        mount.display()
                    );
                }
                return Ok(());
            }
            pending.extend_from_slice(&buf[..k]);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line);
                let mut w = line.split_whitespace();
                match (w.next(), w.next().and_then(|v| v.parse::<u64>().ok())) {
                    (Some("freeze"), Some(ms)) => {
                        frozen_until = Some(Instant::now() + Duration::from_millis(ms + 200));
                    }
                    (Some("thaw"), _) => frozen_until = None,
                    _ => {}
                }
            }
            continue;
        }
        if let Some(d) = frozen_until {
            // Take any message already sent before acting on the deadline.
            let mut pfd = libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, zero timeout.
            if unsafe { libc::poll(&mut pfd, 1, 0) } > 0 {
                continue;
            }
            if Instant::now() >= d {
                let r = thaw(&dir);
                eprintln!(
                    "hrl-agent freeze-guard: freeze of {} outlived max_freeze; thawed ({r:?})",
                    mount.display()
                );
                frozen_until = None;
            }
        }
    }
}

/// The agent's handle on its guardian.
pub struct ThawGuardian {
    child: Child,
    stdin: Option<ChildStdin>,
    mount: PathBuf,
}

impl ThawGuardian {
    /// Spawns `hrl-agent freeze-guard --mount M` (this same binary).
    pub fn spawn(mount: &Path) -> Result<Self> {
        let exe = std::env::current_exe().map_err(|e| AgentError::io("/proc/self/exe", "resolve", e))?;
        let mut child = Command::new(exe)
            .args(["freeze-guard", "--mount"])
            .arg(mount)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| AgentError::io(mount, "spawn freeze guardian", e))?;
        let stdin = child.stdin.take();
        Ok(ThawGuardian {
            child,
            stdin,
            mount: mount.into(),
        })
    }

    fn send(&mut self, line: &str) -> Result<()> {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            // It died: start a new one before anything is frozen.
            *self = ThawGuardian::spawn(&self.mount.clone())?;
        }
        let s = self
            .stdin
            .as_mut()
            .ok_or_else(|| AgentError::Internal("freeze guardian has no pipe".into()))?;
        s.write_all(line.as_bytes())
            .and_then(|_| s.flush())
            .map_err(|e| AgentError::io(&self.mount, "tell freeze guardian", e))
    }

    /// Announces a freeze of at most `max`; call before FIFREEZE.
    pub fn freezing(&mut self, max: Duration) -> Result<()> {
        self.send(&format!("freeze {}\n", max.as_millis()))
    }

    /// Announces the thaw; call after FITHAW (or after a failed freeze).
    pub fn thawed(&mut self) {
        if let Err(e) = self.send("thaw\n") {
            tracing::warn!(error = %e, "freeze guardian unreachable");
        }
    }
}

impl Drop for ThawGuardian {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}
