//! Filesystem freeze with a watchdog.
//!
//! FIFREEZE blocks every writer of the filesystem until FITHAW. A watchdog
//! thread thaws at `max_freeze` whatever the point path is doing; the point
//! is then aborted. The point path appends its `Tag` under the same lock
//! the watchdog takes, so a tag is only ever written while the filesystem is
//! still frozen, and a thaw by the watchdog always turns the point into an
//! aborted one. Dropping a [`Freeze`] thaws too: no error path can leave a
//! filesystem frozen.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{AgentError, Result};
use crate::tracking::device::BlockDevice;

const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// The mount point of `dev`, from /proc/self/mountinfo (first match).
pub fn find_mount(dev: &BlockDevice) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{}:{}", dev.dev.0, dev.dev.1);
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[2] == want).then(|| PathBuf::from(unescape(f[4])))
    })
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// syncfs(2) on the filesystem mounted at `mount`.
pub fn syncfs(mount: &Path) -> Result<()> {
    let f = File::open(mount).map_err(|e| AgentError::io(mount, "open mount", e))?;
    // SAFETY: syncfs on a valid descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(AgentError::io(mount, "syncfs", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn ioctl0(f: &File, req: libc::c_ulong) -> std::io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE/FITHAW take an int argument (ignored).
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), req as _, &mut arg) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Frozen,
    Thawed,
    /// The watchdog thawed after this long.
    Aborted(Duration),
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// A frozen filesystem.
pub struct Freeze {
    file: File,
    path: PathBuf,
    shared: Shared,
    watchdog: Option<JoinHandle<()>>,
    started: Instant,
}

impl Freeze {
    /// Freezes the filesystem at `mount`; the watchdog thaws after `max`.
    pub fn start(mount: &Path, max: Duration) -> Result<Self> {
        let file = File::open(mount).map_err(|e| AgentError::io(mount, "open mount", e))?;
        ioctl0(&file, FIFREEZE).map_err(|e| AgentError::io(mount, "FIFREEZE", e))?;
        let started = Instant::now();
        let shared: Shared = Arc::new((Mutex::new(State::Frozen), Condvar::new()));
        let wd_file = file.try_clone().map_err(|e| AgentError::io(mount, "dup", e));
        let wd_file = match wd_file {
            Ok(f) => f,
            Err(e) => {
                let _ = ioctl0(&file, FITHAW);
                return Err(e);
            }
        };
        let sh = shared.clone();
        let mpath = mount.to_path_buf();
        let watchdog = std::thread::Builder::new()
            .name("freeze-watchdog".into())
            .spawn(move || {
                let (lock, cv) = &*sh;
                let deadline = started + max;
                let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if *g != State::Frozen {
                        return;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        if let Err(e) = ioctl0(&wd_file, FITHAW) {
                            tracing::error!(mount = %mpath.display(), error = %e, "watchdog FITHAW failed");
                        }
                        *g = State::Aborted(started.elapsed());
                        tracing::warn!(mount = %mpath.display(), max_ms = max.as_millis() as u64, "freeze exceeded max_freeze: watchdog thawed, point aborted");
                        return;
                    }
                    g = cv.wait_timeout(g, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
                }
            })
            .map_err(|e| AgentError::io(mount, "spawn watchdog", e));
        let watchdog = match watchdog {
            Ok(w) => w,
            Err(e) => {
                let _ = ioctl0(&file, FITHAW);
                return Err(e);
            }
        };
        Ok(Freeze {
            file,
            path: mount.into(),
            shared,
            watchdog: Some(watchdog),
            started,
        })
    }

    /// Time since the freeze.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the watchdog has already thawed.
    pub fn aborted(&self) -> bool {
        let g = self.shared.0.lock().unwrap_or_else(|p| p.into_inner());
        matches!(*g, State::Aborted(_))
    }

    /// Runs `f` while the filesystem is still frozen, then thaws. Returns
    /// `f`'s result and the freeze duration, or `Err(duration)` without
    /// running `f` when the watchdog already thawed.
    pub fn commit_and_thaw<T>(mut self, f: impl FnOnce(Duration) -> T) -> std::result::Result<(T, Duration), Duration> {
        let r = {
            let (lock, cv) = &*self.shared;
            let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
            match *g {
                State::Aborted(d) => Err(d),
                _ => {
                    let t = f(self.started.elapsed());
                    let thaw = ioctl0(&self.file, FITHAW);
                    let d = self.started.elapsed();
                    if let Err(e) = thaw {
                        tracing::error!(mount = %self.path.display(), error = %e, "FITHAW failed");
                    }
                    *g = State::Thawed;
                    cv.notify_all();
                    Ok((t, d))
                }
            }
        };
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        r
    }
}

impl Drop for Freeze {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        {
            let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
            if *g == State::Frozen {
                let _ = ioctl0(&self.file, FITHAW);
                *g = State::Thawed;
            }
            cv.notify_all();
        }
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
    }
}

impl super::protocol::Frozen for Freeze {
    fn elapsed(&self) -> Duration {
        Freeze::elapsed(self)
    }

    fn thaw_after(
        self: Box<Self>,
        commit: &mut dyn FnMut(Duration) -> Result<()>,
    ) -> std::result::Result<(Result<()>, Duration), Duration> {
        (*self).commit_and_thaw(commit)
    }
}

/// The real filesystem of a disk: syncfs and FIFREEZE/FITHAW on its
/// mount, with the thaw guardian armed for the length of every freeze.
pub struct FsFreezer {
    mount: PathBuf,
    guardian: super::guard::ThawGuardian,
}

impl FsFreezer {
    /// Thaws a filesystem a previous agent left frozen (it died inside a
    /// point, its guardian with it), then starts this agent's guardian.
    pub fn open(disk: &str, mount: &Path) -> Result<Self> {
        if super::guard::thaw_if_frozen(mount)? {
            tracing::warn!(disk = %disk, mount = %mount.display(), "the filesystem was frozen (an agent died during a point); thawed it");
        }
        Ok(FsFreezer {
            mount: mount.to_path_buf(),
            guardian: super::guard::ThawGuardian::spawn(mount)?,
        })
    }
}

impl super::protocol::Freezer for FsFreezer {
    fn mount(&self) -> &Path {
        &self.mount
    }

    fn syncfs(&mut self) -> Result<()> {
        syncfs(&self.mount)
    }

    fn freeze(&mut self, max: Duration) -> Result<Box<dyn super::protocol::Frozen>> {
        self.guardian.freezing(max)?;
        Ok(Box::new(Freeze::start(&self.mount, max)?))
    }

    fn thawed(&mut self) {
        self.guardian.thawed();
    }
}
