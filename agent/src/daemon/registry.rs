//! Where running agents can be found: each `hrl-agent run` writes
//! `/run/hrl/agents/<pid>` holding its control socket's path, and removes
//! it when it stops. `hrl-agent point` and `status` with no flags use the
//! default config, or else the only running agent.

use std::path::{Path, PathBuf};

use crate::config::AgentConfig;
use crate::daemon::control::socket_path;
use crate::error::{AgentError, Result};

/// The registry directory.
pub const REGISTRY: &str = "/run/hrl/agents";
/// The config used when none is given and it exists.
pub const DEFAULT_CONFIG: &str = "/etc/hrl/agent.toml";

/// This agent's entry; removed when dropped.
pub struct Registration(PathBuf);

impl Registration {
    /// Registers the control socket of this process (best effort: an agent
    /// that cannot register still runs, and is found by --spool).
    pub fn new(socket: &Path) -> Option<Self> {
        Self::new_in(Path::new(REGISTRY), socket)
    }

    fn new_in(dir: &Path, socket: &Path) -> Option<Self> {
        // Entries of agents that died without removing theirs (kill -9).
        remove_stale(dir);
        let p = dir.join(std::process::id().to_string());
        let ok = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&p, socket.display().to_string()))
            .map_err(|e| tracing::warn!(path = %p.display(), error = %e, "could not register the control socket"))
            .is_ok();
        ok.then_some(Registration(p))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes the entries of processes that no longer exist.
fn remove_stale(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let stale = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Sockets of running agents: (pid, socket) of entries whose process lives.
fn running(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(u32, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let sock = PathBuf::from(std::fs::read_to_string(e.path()).ok()?.trim());
            (Path::new(&format!("/proc/{pid}")).exists() && sock.exists()).then_some((pid, sock))
        })
        .collect();
    v.sort();
    v
}

/// The control socket to talk to when no --socket/--spool is given: the
/// config's (the given one, else the default one when it exists), else the
/// only registered running agent's. Otherwise an error that says what to give.
pub fn find_socket(config: Option<&Path>) -> Result<PathBuf> {
    if let Some(c) = config {
        return Ok(socket_path(&AgentConfig::load(c)?.spool));
    }
    if Path::new(DEFAULT_CONFIG).exists() {
        return Ok(socket_path(&AgentConfig::load(Path::new(DEFAULT_CONFIG))?.spool));
    }
    pick(running(Path::new(REGISTRY)))
}

fn pick(mut agents: Vec<(u32, PathBuf)>) -> Result<PathBuf> {
    match agents.len() {
        1 => Ok(agents.remove(0).1),
        0 => Err(AgentError::Config(format!(
            "no running hrl-agent found ({DEFAULT_CONFIG} does not exist and none is registered in {REGISTRY}); give --spool DIR or --config FILE"
        ))),
        _ => Err(AgentError::Config(format!(
            "{} hrl-agents are running: {}; give --spool DIR (or --socket PATH)",
            agents.len(),
            agents
                .iter()
                .map(|(pid, s)| format!("pid {pid} ({})", s.display()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The disk to use when none is given: the only one in a status answer.
pub fn only_disk(status: &serde_json::Value) -> Result<String> {
    let names: Vec<&str> = status["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["name"].as_str())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(AgentError::Config("the agent tracks no disk".into())),
        many => Err(AgentError::Config(format!(
            "the agent tracks {} disks ({}); give --disk NAME",
            many.len(),
            many.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_only_agent_and_the_only_disk_are_found_and_several_are_named() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("s.sock");
        std::fs::write(&sock, "").unwrap();
        assert!(running(d.path()).is_empty());
        std::fs::write(
            d.path().join(std::process::id().to_string()),
            sock.display().to_string(),
        )
        .unwrap();
        // A dead agent's entry is ignored.
        std::fs::write(d.path().join("999999999"), sock.display().to_string()).unwrap();
        let live = running(d.path());
        assert_eq!(live, vec![(std::process::id(), sock.clone())]);
        assert_eq!(pick(live.clone()).unwrap(), sock);
        let e = pick(vec![live[0].clone(), (1, PathBuf::from("/x"))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 hrl-agents are running") && e.contains("--spool"), "{e}");
        assert!(pick(Vec::new())
            .unwrap_err()
            .to_string()
            .contains("--spool DIR or --config FILE"));
        let one = serde_json::json!({"disks": [{"name": "data"}]});
        assert_eq!(only_disk(&one).unwrap(), "data");
        let two = serde_json::json!({"disks": [{"name": "data"}, {"name": "log"}]});
        let e = only_disk(&two).unwrap_err().to_string();
        assert!(e.contains("data, log") && e.contains("--disk NAME"), "{e}");
        // Registering removes the entries of dead agents, and dropping
        // removes this one's.
        let r = Registration::new_in(d.path(), &sock).unwrap();
        assert!(!d.path().join("999999999").exists());
        assert!(d.path().join(std::process::id().to_string()).exists());
        drop(r);
        assert!(!d.path().join(std::process::id().to_string()).exists());
    }
}
