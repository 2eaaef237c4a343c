//! A private tracefs instance: our own ring buffers, filters and enables,
//! so the agent never disturbs the system's global trace buffer or another
//! tool's instance.
//!
//! Instances are named `hrl-agent-{pid}-{tag}`. On start, instances with
//! that prefix whose pid no longer exists are removed (a killed agent cannot
//! clean up after itself). `overwrite` is off: when a buffer is full the
//! kernel drops *new* events and counts them in `per_cpu/cpuN/stats`
//! ("dropped events"); the agent reads those counters and never continues
//! silently past a loss.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

/// Prefix of every instance an agent creates.
pub const INSTANCE_PREFIX: &str = "hrl-agent-";

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub struct Tracefs {
    pub root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs in /proc/mounts, or mounts it at /sys/kernel/tracing.
    pub fn locate_or_mount() -> Result<Self> {
        if let Some(p) = find_mount() {
            return Ok(Tracefs { root: p });
        }
        let target = Path::new("/sys/kernel/tracing");
        nix::mount::mount(
            Some("tracefs"),
            target,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            if e == nix::errno::Errno::EPERM || e == nix::errno::Errno::EACCES {
                AgentError::Permission {
                    what: "mount tracefs on /sys/kernel/tracing".into(),
                }
            } else {
                AgentError::Tracefs(format!(
                    "tracefs is not mounted and mounting it on {} failed: {e}",
                    target.display()
                ))
            }
        })?;
        Ok(Tracefs { root: target.into() })
    }

    /// Removes instances left by agents that are no longer running.
    /// Returns the names removed.
    pub fn remove_stale_instances(&self) -> Result<Vec<String>> {
        let dir = self.root.join("instances");
        let mut removed = Vec::new();
        let rd = std::fs::read_dir(&dir).map_err(|e| AgentError::io(&dir, "read directory", e))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(INSTANCE_PREFIX) else {
                continue;
            };
            let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
            let Some(pid) = pid else { continue };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            if std::fs::remove_dir(e.path()).is_ok() {
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Creates a new instance `hrl-agent-{pid}-{tag}` with `buffer_kb` of
    /// ring buffer per CPU.
    pub fn create_instance(&self, tag: &str, buffer_kb: u32) -> Result<Instance> {
        let name = format!("{INSTANCE_PREFIX}{}-{tag}", std::process::id());
        let dir = self.root.join("instances").join(&name);
        std::fs::create_dir(&dir).map_err(|e| AgentError::io(&dir, "create tracefs instance", e))?;
        let mut inst = Instance {
            dir,
            name,
            cpus: Vec::new(),
            subbuf: 4096,
            events: Vec::new(),
        };
        inst.write("tracing_on", "0")?;
        inst.write("options/overwrite", "0")?;
        inst.write("buffer_size_kb", &buffer_kb.to_string())?;
        if let Ok(s) = std::fs::read_to_string(inst.dir.join("buffer_subbuf_size_kb")) {
            if let Ok(kb) = s.trim().parse::<usize>() {
                inst.subbuf = kb * 1024;
            }
        }
        Ok(inst)
    }
}

fn find_mount() -> Option<PathBuf> {
    let m = std::fs::read_to_string("/proc/mounts").ok()?;
    m.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let _src = f.next()?;
        let target = f.next()?;
        let fstype = f.next()?;
        (fstype == "tracefs").then(|| PathBuf::from(target.replace("\\040", " ")))
    })
}

/// Per-CPU buffer counters from `per_cpu/cpuN/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub overrun: u64,
    pub commit_overrun: u64,
    pub dropped: u64,
}

impl CpuStats {
    /// Events lost by any route.
    pub fn lost(&self) -> u64 {
        self.overrun + self.commit_overrun + self.dropped
    }
}

struct CpuBuffer {
    cpu: usize,
    raw: File,
    stats: PathBuf,
}

/// A private tracing instance. Dropping it stops tracing and removes it.
pub struct Instance {
    dir: PathBuf,
    name: String,
    cpus: Vec<CpuBuffer>,
    subbuf: usize,
    events: Vec<String>,
}

impl Instance {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Bytes of one ring-buffer page as `trace_pipe_raw` returns it.
    pub fn page_size(&self) -> usize {
        self.subbuf
    }

    fn write(&self, rel: &str, val: &str) -> Result<()> {
        let p = self.dir.join(rel);
        std::fs::write(&p, val).map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => AgentError::Tracefs(format!("{}: the kernel rejected {val:?}", p.display())),
            _ => AgentError::io(&p, "write", e),
        })
    }

    /// The `format` file of `events/{system}/{event}`.
    pub fn event_format(&self, system: &str, event: &str) -> Result<String> {
        let p = self.dir.join("events").join(system).join(event).join("format");
        std::fs::read_to_string(&p).map_err(|e| AgentError::io(&p, "read", e))
    }

    /// Sets the filter of an event and enables it.
    pub fn enable_event(&mut self, system: &str, event: &str, filter: &str) -> Result<()> {
        let base = format!("events/{system}/{event}");
        self.write(&format!("{base}/filter"), filter)?;
        self.write(&format!("{base}/enable"), "1")?;
        self.events.push(base);
        Ok(())
    }

    /// Opens every CPU's `trace_pipe_raw` (non-blocking) and turns tracing on.
    pub fn start(&mut self) -> Result<()> {
        let per_cpu = self.dir.join("per_cpu");
        let mut cpus = Vec::new();
        let rd = std::fs::read_dir(&per_cpu).map_err(|e| AgentError::io(&per_cpu, "read directory", e))?;
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(cpu) = n.strip_prefix("cpu").and_then(|c| c.parse::<usize>().ok()) {
                cpus.push(cpu);
            }
        }
        cpus.sort();
        for cpu in cpus {
            let d = per_cpu.join(format!("cpu{cpu}"));
            let rawp = d.join("trace_pipe_raw");
            let raw = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&rawp)
                .map_err(|e| AgentError::io(&rawp, "open", e))?;
            self.cpus.push(CpuBuffer {
                cpu,
                raw,
                stats: d.join("stats"),
            });
        }
        self.write("tracing_on", "1")
    }

    /// Number of per-CPU buffers.
    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// Reads one page from CPU buffer `i` into `buf` (at least a page
    /// long). `Ok(None)` when that buffer is empty right now.
    pub fn read_page(&mut self, i: usize, buf: &mut [u8]) -> Result<Option<usize>> {
        let c = &mut self.cpus[i];
        loop {
            match c.raw.read(&mut buf[..self.subbuf]) {
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(AgentError::io(
                        self.dir.join(format!("per_cpu/cpu{}/trace_pipe_raw", c.cpu)),
                        "read",
                        e,
                    ))
                }
            }
        }
    }

    /// Counters of every CPU buffer.
    pub fn stats(&self) -> Result<Vec<CpuStats>> {
        self.cpus.iter().map(|c| parse_stats(&c.stats)).collect()
    }
}

fn parse_stats(p: &Path) -> Result<CpuStats> {
    let s = std::fs::read_to_string(p).map_err(|e| AgentError::io(p, "read", e))?;
    let mut st = CpuStats::default();
    for l in s.lines() {
        let Some((k, v)) = l.split_once(':') else { continue };
        let v: u64 = v.trim().parse().unwrap_or(0);
        match k.trim() {
            "overrun" => st.overrun = v,
            "commit overrun" => st.commit_overrun = v,
            "dropped events" => st.dropped = v,
            _ => {}
        }
    }
    Ok(st)
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.write("tracing_on", "0");
        for e in &self.events {
            let _ = self.write(&format!("{e}/enable"), "0");
        }
        self.cpus.clear();
        // rmdir fails with EBUSY while a file is open; ours are closed now.
        for _ in 0..50 {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(_) => return,
            }
        }
    }
}
