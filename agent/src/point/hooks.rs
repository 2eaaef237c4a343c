//! Point hooks: shell commands run around (or inside) a freeze.
//!
//! Each hook gets HRL_DISK, HRL_DEVICE, HRL_MOUNT, HRL_POINT and HRL_KIND,
//! runs in its own process group, and is killed (the whole group) at its
//! timeout. A failing hook aborts the point; the freeze guard makes sure
//! that never leaves a filesystem frozen.
//!
//! A hook may label its point by printing `HRL_LABEL=text` on stdout (for
//! example a database's WAL position); the last such line wins. Its other
//! stdout lines go to the agent's log.

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a hook that succeeded said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookOutput {
    pub elapsed: Duration,
    /// From its last `HRL_LABEL=` line: control characters dropped, cut to
    /// 255 bytes.
    pub label: Option<String>,
}

/// Reads a hook's stdout on a thread: each `HRL_LABEL=` line is sent as
/// `Some(label)`, other lines are logged, and `None` says the pipe closed
/// (the hook and anything it left running have exited).
fn read_stdout(what: &str, out: ChildStdout) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    let what = what.to_string();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().take(10_000) {
            let Ok(line) = line else { break };
            match line.strip_prefix("HRL_LABEL=") {
                Some(l) => {
                    let clean: String = l.trim().chars().filter(|c| !c.is_control()).collect();
                    let _ = tx.send(Some(hrl_format::record::clip(&clean).to_string()));
                }
                None => tracing::info!(hook = %what, "{line}"),
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// The last label sent before the pipe closed, waiting at most 200 ms
/// for the close: a process the hook left running may hold it open.
fn last_label(rx: mpsc::Receiver<Option<String>>) -> Option<String> {
    let until = Instant::now() + Duration::from_millis(200);
    let mut label = None;
    while let Ok(Some(l)) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        label = Some(l);
    }
    label
}

/// The environment of a hook.
#[derive(Debug, Clone)]
pub struct HookEnv {
    pub disk: String,
    pub device: String,
    pub mount: String,
    pub point: u64,
    pub kind: &'static str,
}

/// Runs `cmd` with `sh -c`; `Err` says what went wrong (exit status,
/// timeout, spawn failure).
pub fn run_hook(what: &str, cmd: &str, env: &HookEnv, timeout: Duration) -> Result<HookOutput, String> {
    run_hook_while(what, cmd, env, timeout, || {})
}

/// [`run_hook`], calling `meanwhile` every 10 ms until the hook ends: a
/// pre-freeze hook may take minutes (a database's checkpoint), and the
/// disk keeps draining its trace buffers meanwhile, or they overflow and
/// force a resync.
pub fn run_hook_while(
    what: &str,
    cmd: &str,
    env: &HookEnv,
    timeout: Duration,
    mut meanwhile: impl FnMut(),
) -> Result<HookOutput, String> {
    let t = Instant::now();
    let mut last = Instant::now();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("HRL_DISK", &env.disk)
        .env("HRL_DEVICE", &env.device)
        .env("HRL_MOUNT", &env.mount)
        .env("HRL_POINT", env.point.to_string())
        .env("HRL_KIND", env.kind)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{what} hook could not start: {e}"))?;
    let pid = child.id() as i32;
    let label = child.stdout.take().map(|o| read_stdout(what, o));
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => {
                let elapsed = t.elapsed();
                // The hook has exited; its output is read within moments
                // unless something it started keeps the pipe open.
                let label = label.and_then(last_label);
                return Ok(HookOutput { elapsed, label });
            }
            Ok(Some(s)) => return Err(format!("{what} hook failed ({s})")),
            Ok(None) => {}
            Err(e) => return Err(format!("{what} hook: wait: {e}")),
        }
        if t.elapsed() >= timeout {
            // SAFETY: killing the process group we created for the hook.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            return Err(format!(
                "{what} hook timed out after {:.0} ms and was killed",
                timeout.as_secs_f64() * 1e3
            ));
        }
        if last.elapsed() >= Duration::from_millis(10) {
            meanwhile();
            last = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv {
        HookEnv {
            disk: "d".into(),
            device: "/dev/x".into(),
            mount: "/m".into(),
            point: 7,
            kind: "app",
        }
    }

    #[test]
    fn hook_sees_env_fails_and_times_out() {
        assert!(run_hook(
            "t",
            "test \"$HRL_POINT-$HRL_KIND-$HRL_DISK\" = 7-app-d",
            &env(),
            Duration::from_secs(5)
        )
        .is_ok());
        let e = run_hook("pre-freeze", "exit 3", &env(), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("pre-freeze hook failed"), "{e}");
        let t = Instant::now();
        let e = run_hook("t", "sleep 10; sleep 10", &env(), Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // A slow hook: the caller's work goes on meanwhile.
        let mut ticks = 0;
        run_hook_while("t", "sleep 0.3", &env(), Duration::from_secs(5), || ticks += 1).unwrap();
        assert!(ticks >= 10, "{ticks}");
    }

    #[test]
    fn the_last_label_line_labels_the_point() {
        let o = run_hook(
            "t",
            "echo hello; echo HRL_LABEL=first; printf 'HRL_LABEL= lsn=0/3000060\\t \\n'",
            &env(),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(o.label.as_deref(), Some("lsn=0/3000060"));
        assert_eq!(
            run_hook("t", "echo no label", &env(), Duration::from_secs(5))
                .unwrap()
                .label,
            None
        );
        let long = run_hook("t", "printf 'HRL_LABEL=%0300d\\n' 7", &env(), Duration::from_secs(5)).unwrap();
        assert_eq!(long.label.map(|l| l.len()), Some(255));
        // A hook that leaves a child holding stdout still returns.
        let t = Instant::now();
        let o = run_hook(
            "t",
            "echo HRL_LABEL=x; (sleep 3 2>/dev/null &)",
            &env(),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(o.label.as_deref(), Some("x"));
    }
}
