//! Test support shared by hrl's crates (never part of a release build).
//!
//! * [`tests!`]: the harness of every integration-test binary. A test that
//!   needs root (loop devices, tracefs) or Azurite and cannot have it here
//!   is reported by the runner as *ignored*, with the reason printed, not
//!   as passed; under `CI=true` nothing is skipped, so a missing
//!   requirement fails the test.
//! * [`sys`]: loop devices, partitions, zram, mounts, O_DIRECT images.
//! * [`agent`]: a running `hrl-agent` and what it wrote.
//! * [`spool`]: spools written by test code (what an agent would write).
//! * [`fault_proxy`]: a loopback proxy that injects endpoint faults.
//! * [`store`]: an `ObjectStore` wrapper that fails writes on demand.
//! * [`Rng`]: a small seeded PRNG, so failures reproduce.

pub mod agent;
pub mod fault_proxy;
pub mod spool;
pub mod store;
pub mod sys;
pub mod tcp_proxy;

use std::path::{Path, PathBuf};

pub use libtest_mimic;

/// What a test needs to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Nothing,
    /// Root, loop devices and tracefs.
    Root,
    /// A running Azurite (scripts/test.sh starts it).
    Azurite,
    /// Both.
    RootAzurite,
    /// Headless Chromium (`chromium` on PATH; scripts/test.sh installs it).
    Browser,
}

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Why root tests cannot run here, if they cannot.
pub fn root_missing() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        Some("needs root")
    } else if !Path::new("/dev/loop-control").exists() {
        Some("needs loop devices (/dev/loop-control)")
    } else if !Path::new("/sys/kernel/tracing").exists() && !Path::new("/sys/kernel/debug/tracing").exists() {
        Some("needs tracefs")
    } else {
        None
    }
}

/// Why Azurite tests cannot run here, if they cannot.
pub fn azurite_missing() -> Option<&'static str> {
    let set = |v| std::env::var(v).is_ok_and(|s| !s.is_empty());
    (!(set("AZURE_STORAGE_USE_EMULATOR") && set("AZURITE_BLOB_STORAGE_URL")))
        .then_some("needs Azurite (AZURITE_BLOB_STORAGE_URL unset; scripts/test.sh starts it)")
}

/// The headless browser of the page tests: `chromium` on PATH.
pub fn browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
}

/// Why a test with `need` cannot run here (None: it runs).
pub fn missing(need: Need) -> Option<&'static str> {
    match need {
        Need::Nothing => None,
        Need::Root => root_missing(),
        Need::Azurite => azurite_missing(),
        Need::RootAzurite => root_missing().or_else(azurite_missing),
        Need::Browser => browser()
            .is_none()
            .then_some("needs chromium (scripts/test.sh installs it)"),
    }
}

/// Inside a test: panics (with the reason) when `need` is not met. The
/// harness only runs such a test when it is met, or under CI=true, where
/// a missing requirement is a failure.
pub fn require(test: &str, need: Need) {
    if let Some(why) = missing(need) {
        let ci = if in_ci() {
            ", and CI=true: it must run in CI"
        } else {
            ""
        };
        panic!("{test}: {why}{ci}");
    }
}

/// The test of a crash-matrix binary built without its `failpoints`
/// feature: it says so, and fails under CI=true (scripts/test.sh enables
/// the feature).
pub fn failpoints_missing(feature: &str) {
    let why = format!("built without --features {feature}: the crash matrix did not run");
    if in_ci() {
        panic!("{why} (scripts/test.sh enables it)");
    }
    eprintln!("SKIP {why}");
}

/// One test for the harness: ignored (the reason on stderr) when its need
/// is not met, unless CI=true.
pub fn trial(name: &'static str, need: Need, f: fn()) -> libtest_mimic::Trial {
    let skip = if in_ci() { None } else { missing(need) };
    let t = libtest_mimic::Trial::test(name, move || {
        f();
        Ok(())
    });
    match skip {
        Some(why) => {
            if std::env::args().any(|a| a == "--exact") {
                eprintln!("SKIP {name}: {why}");
            }
            t.with_ignored_flag(true).with_kind(why)
        }
        None => t,
    }
}

/// The harness `main` of an integration-test binary (`harness = false`):
/// `hrl_testkit::tests!(Root: [a, b], Nothing: [c]);`
#[macro_export]
macro_rules! tests {
    ($($need:ident : [$($name:ident),* $(,)?]),* $(,)?) => {
        fn main() {
            let args = $crate::libtest_mimic::Arguments::from_args();
            let trials = vec![$($($crate::trial(stringify!($name), $crate::Need::$need, $name),)*)*];
            $crate::libtest_mimic::run(&args, trials).exit();
        }
    };
}

/// Runs a future on a 2-thread runtime (the async tests).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A binary of this workspace's build (`target/<profile>/NAME`, beside the
/// test binary's `deps/`). The workspace's binaries are built with its
/// tests (`cargo nextest run --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) });
    let p = dir.expect("target dir").join(name);
    assert!(
        p.exists(),
        "{} is not built: run the tests for the whole workspace (cargo nextest run --workspace)",
        p.display()
    );
    p
}

/// A small deterministic PRNG (xorshift64*): a failing seed reproduces.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

// `next` reads as a generator's next value; Rng is not an iterator.
#[allow(clippy::should_implement_trait)]
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}
