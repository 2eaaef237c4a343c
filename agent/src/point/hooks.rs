//! Point hooks: shell commands run around (or inside) a freeze.
//!
//! Each hook gets HRL_DISK, HRL_DEVICE, HRL_MOUNT, HRL_POINT and HRL_KIND,
//! runs in its own process group, and is killed (the whole group) at its
//! timeout. A failing hook aborts the point; the freeze guard makes sure
//! that never leaves a filesystem frozen.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
pub fn run_hook(what: &str, cmd: &str, env: &HookEnv, timeout: Duration) -> Result<Duration, String> {
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
) -> Result<Duration, String> {
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
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{what} hook could not start: {e}"))?;
    let pid = child.id() as i32;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(t.elapsed()),
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
}
