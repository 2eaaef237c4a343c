//! A running `hrl-agent` (track or run) for tests, and reading back what
//! it wrote: records, the tracked set, tracefs instances. Agents are
//! stopped by their pid on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hrl_format::{list_segments, read_segment, Extent, Lost, RangeSet, Record, RecoveryMode};

use crate::bin;

/// A running `hrl-agent track`; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Agent {
    pub child: Option<Child>,
    pub spool: PathBuf,
}

/// `hrl-agent SUB --device DEV --spool SPOOL EXTRA...`, stderr to the test's.
fn agent_cmd(sub: &str, dev: &Path, spool: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        sub,
        "--device",
        dev.to_str().unwrap(),
        "--spool",
        spool.to_str().unwrap(),
    ])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    // Tests run side by side: each agent's metrics on a free port.
    if sub == "run" && !extra.contains(&"--metrics-listen") {
        cmd.args(["--metrics-listen", "127.0.0.1:0"]);
    }
    cmd
}

/// The `hrl-agent` binary of this build.
pub fn agent_bin() -> PathBuf {
    bin("hrl-agent")
}

impl Agent {
    pub fn track(dev: &Path, spool: &Path, extra: &[&str]) -> Self {
        let mut cmd = agent_cmd("track", dev, spool, extra);
        let before = records(spool).len();
        let child = cmd.spawn().unwrap();
        let a = Agent {
            child: Some(child),
            spool: spool.into(),
        };
        a.wait_started(before);
        a
    }

    /// Tracking is on once this agent's instance exists and it has written
    /// its first record (Mode or Lost) after the `before` already there.
    fn wait_started(&self, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !instances_of(self.pid()).is_empty() && records(&self.spool).len() > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent did not start tracking within 20 s");
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let mut c = self.child.take().expect("running");
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("agent did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(300));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every record of every segment in the spool, in log order.
pub fn records(spool: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    let Ok(segs) = list_segments(spool, None) else {
        return out;
    };
    for s in segs {
        let _ = read_segment(&s.path, RecoveryMode::TolerateTornTail, |_, _, r| {
            out.push(r.clone());
            Ok(())
        });
    }
    out
}

/// The tracked set (all Extent ranges) and the Lost records of a spool.
pub fn tracked(spool: &Path) -> (RangeSet, Vec<Extent>, Vec<Lost>) {
    let mut set = RangeSet::default();
    let mut ext = Vec::new();
    let mut lost = Vec::new();
    for r in records(spool) {
        match r {
            Record::Extent(e) => {
                set.insert(e.offset, e.len);
                ext.push(e);
            }
            Record::Lost(l) => lost.push(l),
            _ => {}
        }
    }
    (set, ext, lost)
}

/// Asserts every byte of `inner` lies in `outer`; names the first that does not.
pub fn assert_subset(inner: &RangeSet, outer: &RangeSet, what: &str) {
    for (o, l) in inner.ranges() {
        // Check range ends and every 512-byte sector inside.
        let mut s = o;
        while s < o + l {
            assert!(outer.contains(s), "{what}: byte {s} (range {o}+{l}) is not covered");
            s += 512;
        }
    }
}

/// Tracefs instances whose name starts with hrl-agent-{pid}-.
pub fn instances_of(pid: i32) -> Vec<String> {
    let prefix = format!("hrl-agent-{pid}-");
    std::fs::read_dir("/sys/kernel/tracing/instances")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

impl Agent {
    /// Starts `hrl-agent run --device DEV --spool SPOOL ARGS...` and waits
    /// until the disk is in data mode (initial sync or resync done).
    pub fn run(dev: &Path, spool: &Path, extra: &[&str]) -> Self {
        let a = Self::spawn_run(dev, spool, extra);
        a.wait_mode("data", Duration::from_secs(120));
        a
    }

    /// Starts `hrl-agent run` without waiting for data mode (only until
    /// its control socket answers).
    pub fn spawn_run(dev: &Path, spool: &Path, extra: &[&str]) -> Self {
        let mut cmd = agent_cmd("run", dev, spool, extra);
        let child = cmd.spawn().unwrap();
        let mut a = Agent {
            child: Some(child),
            spool: spool.into(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if a.status().is_some() {
                return a;
            }
            if let Some(s) = a.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hrl-agent run exited early: {s}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("hrl-agent run: control socket did not answer within 30 s");
    }

    /// The status JSON of the first disk, if the agent answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let o = Command::new(agent_bin())
            .args(["status", "--json", "--spool", self.spool.to_str().unwrap()])
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        Some(v["disks"][0].clone())
    }

    pub fn wait_mode(&self, mode: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.status().is_some_and(|s| s["mode"] == mode) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("disk did not reach mode {mode} within {within:?}: {:?}", self.status());
    }

    /// `hrl-agent point --disk NAME`; returns the JSON answer.
    pub fn point(&self, disk: &str, app: bool) -> serde_json::Value {
        let mut args = vec![
            "point",
            "--json",
            "--disk",
            disk,
            "--spool",
            self.spool.to_str().unwrap(),
        ];
        if app {
            args.push("--app");
        }
        let o = Command::new(agent_bin()).args(&args).output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
            panic!("point: {}", String::from_utf8_lossy(&o.stderr));
        })
    }
}

/// Replays `point` of the spool (or an archive of it) into a fresh image.
pub fn replay(dir: &Path, point: u64, image: &Path) {
    let _ = std::fs::remove_file(image);
    hrl_format::replay(dir, None, Some(point), image).unwrap_or_else(|e| panic!("replay of point {point}: {e}"));
}

/// Writes, overwrites and deletes files under `dir` until `deadline`,
/// fsyncing most of them.
pub fn file_workload(dir: &Path, deadline: Instant, seed: u64, max_files: u64, max_size: usize) -> u64 {
    let mut rng = crate::Rng(seed);
    let mut buf = vec![0u8; max_size];
    let mut written = 0u64;
    while Instant::now() < deadline {
        let p = dir.join(format!("f{}", rng.below(max_files)));
        match rng.below(10) {
            0 => {
                let _ = std::fs::remove_file(&p);
            }
            _ => {
                let n = 1 + rng.below(max_size as u64) as usize;
                rng.fill(&mut buf[..n]);
                use std::io::Write;
                let mut f = std::fs::File::create(&p).unwrap();
                f.write_all(&buf[..n]).unwrap();
                if rng.below(4) != 0 {
                    f.sync_all().unwrap();
                }
                written += n as u64;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    written
}
