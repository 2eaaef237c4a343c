//! A command that writes a target never makes a bad day worse: a mounted
//! device, a device an hrl-agent tracks, an existing image file (without
//! --force), and a failover nobody confirmed are all refused, with exit 2
//! and a message naming the target and what to do, and the target is
//! byte-for-byte unchanged.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::AtomicBool;

use hrl_shipper::repo::{create_key_file, Repo};
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_testkit::agent::Agent;
use hrl_testkit::spool::{SpoolWriter, CHUNK};
use hrl_testkit::sys::{mkfs, sha256, LoopDev, Mount};
use hrl_testkit::Need;
use uuid::Uuid;

/// A local repository with one disk of 16 chunks (1 MiB) and 2 points,
/// taken an hour and a minute ago.
struct Env {
    dir: tempfile::TempDir,
    url: String,
    key: PathBuf,
    disk: Uuid,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Uuid::new_v4();
    let mut w = SpoolWriter::new(&spool, disk, 16, 8 << 20, 11);
    w.full_copy();
    let now = hrl_format::now_ns();
    w.tag_at(1, false, now - 3600 * 1_000_000_000);
    for c in [1, 5, 9] {
        w.random(c);
    }
    w.tag_at(2, false, now - 60 * 1_000_000_000);
    w.close();
    let url = format!("file://{}", dir.path().join("repo").display());
    let key = dir.path().join("key");
    create_key_file(&key).unwrap();
    hrl_testkit::block_on(async {
        let repo = Repo::init(&url, &key, CHUNK, 1 << 20, 4).await.unwrap();
        let mut o = ShipOptions::new(&spool);
        o.once = true;
        ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
    });
    Env { dir, url, key, disk }
}

impl Env {
    fn cli(&self, verb: &str, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hrl-shipper"))
            .args([verb, "--repo", &self.url, "--key-file", self.key.to_str().unwrap()])
            .args(["--disk", &self.disk.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `verb --to TARGET`; asserts exit 2 and that stderr names
    /// `needle`; returns stderr.
    fn refused(&self, verb: &str, to: &Path, extra: &[&str], needle: &str) -> String {
        let mut args = vec!["--to", to.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = self.cli(verb, &args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{verb} onto {}: {err}", to.display());
        assert!(err.contains(needle), "{verb}: expected {needle:?} in: {err}");
        assert!(
            err.contains(to.to_str().unwrap()),
            "{verb}: the message names the target: {err}"
        );
        err
    }

    fn fenced(&self) -> bool {
        self.dir
            .path()
            .join("repo")
            .join("failover")
            .join(self.disk.to_string())
            .exists()
    }
}

fn a_mounted_device_is_refused_by_restore_failover_and_failback() {
    hrl_testkit::require(
        "a_mounted_device_is_refused_by_restore_failover_and_failback",
        Need::Root,
    );
    let e = env();
    let dev = LoopDev::new(16 << 20, false);
    mkfs("ext4", &dev.path);
    let m = Mount::new(&dev.path);
    let before = sha256(&dev.path);
    e.refused("restore", &dev.path, &[], "is mounted on");
    e.refused("failover", &dev.path, &["--yes"], "is mounted on");
    e.refused("failback", &dev.path, &[], "is mounted on");
    assert_eq!(sha256(&dev.path), before, "the mounted device is unchanged");
    assert!(!e.fenced(), "a refused failover records nothing");
    drop(m);
}

fn a_device_an_agent_tracks_is_refused() {
    hrl_testkit::require("a_device_an_agent_tracks_is_refused", Need::Root);
    let e = env();
    let dev = LoopDev::new(16 << 20, false);
    let spool = e.dir.path().join("agent-spool");
    let mut agent = Agent::track(&dev.path, &spool, &[]);
    let before = sha256(&dev.path);
    let err = e.refused("restore", &dev.path, &[], "tracked by an hrl-agent");
    assert!(err.contains(&format!("pid {}", agent.pid())), "names the agent: {err}");
    e.refused("failback", &dev.path, &[], "tracked by an hrl-agent");
    assert_eq!(sha256(&dev.path), before, "the tracked device is unchanged");
    agent.stop();
    // With the agent gone the same restore goes through.
    let o = e.cli("restore", &["--to", dev.path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn an_existing_image_is_refused_unless_forced_and_images_are_0600() {
    let e = env();
    let img = e.dir.path().join("existing.img");
    std::fs::write(&img, vec![0xAB; 3 << 20]).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    e.refused("restore", &img, &[], "--force");
    assert_eq!(std::fs::read(&img).unwrap(), vec![0xAB; 3 << 20], "unchanged");
    let o = e.cli("restore", &["--to", img.to_str().unwrap(), "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::metadata(&img).unwrap();
    assert_eq!(
        md.permissions().mode() & 0o777,
        0o600,
        "a disk image is for its owner only"
    );
    assert_eq!(md.len(), 16 * CHUNK as u64, "sized to the disk");
    let fresh = e.dir.path().join("new.img");
    let o = e.cli("restore", &["--to", fresh.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&fresh).unwrap(), std::fs::read(&img).unwrap());
}

fn an_unconfirmed_failover_off_a_terminal_does_nothing() {
    let e = env();
    let to = e.dir.path().join("failover.img");
    let err = e.refused("failover", &to, &[], "--yes");
    assert!(err.contains("replication stops"), "says what it would do: {err}");
    assert!(!to.exists(), "no target was made");
    assert!(!e.fenced(), "no failover was recorded");
    let o = e.cli("failover", &["--to", to.to_str().unwrap(), "--yes"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(to.exists() && e.fenced());
}

fn a_failed_restore_leaves_no_file_behind() {
    let e = env();
    let to = e.dir.path().join("nope.img");
    let o = e.cli("restore", &["--to", to.to_str().unwrap(), "--point", "99"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!to.exists(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn refused_init_and_points_leave_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("new.key");
    let bin = env!("CARGO_BIN_EXE_hrl-shipper");
    let o = Command::new(bin)
        .args(["init", "--repo", "ftp://example/x", "--key-file", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!key.exists(), "a refused init makes no key file");
    let e = env();
    let typo = e.dir.path().join("repp");
    let o = Command::new(bin)
        .args(["points", "--repo", &format!("file://{}", typo.display()), "--key-file"])
        .arg(&e.key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no hrl repository here"), "{err}");
    assert!(!typo.exists(), "points on a mistyped path creates no directory");
}

fn points_and_restore_take_a_time_as_people_write_it() {
    let e = env();
    let o = e.cli("points", &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        out.contains("Z, 60 min ago") && out.contains("Z, 60 s ago"),
        "RFC 3339 with age: {out}"
    );
    let o = e.cli("points", &["--before", "30 min ago", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["seq"], 1);
    let t1 = lines[0]["time_ns"].as_u64().unwrap();
    let img = e.dir.path().join("before.img");
    let at = hrl_common::time::rfc3339(t1 + 1_000_000_000);
    let o = e.cli("restore", &["--before", &at, "--to", img.to_str().unwrap(), "--json"]);
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(rep["point"], 1, "{rep} {}", String::from_utf8_lossy(&o.stderr));
    let o = e.cli("restore", &["--before", "2h ago", "--to", "/nonexistent/x"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("has no point taken at or before"), "{err}");
    let o = e.cli("points", &["--before", "yesterday"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("RFC 3339"), "{err}");
}

/// A repository whose one point is an ext4 image holding `hello`.
fn ext4_env() -> (Env, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let hello = b"hello from the failed-over disk\n".repeat(100);
    std::fs::write(src.join("hello"), &hello).unwrap();
    let img = dir.path().join("fs.img");
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("8M")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&img).unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Uuid::new_v4();
    let chunks = bytes.len() as u64 / CHUNK as u64;
    let mut w = SpoolWriter::new(&spool, disk, chunks, 64 << 20, 1);
    for (c, part) in bytes.chunks(CHUNK as usize).enumerate() {
        w.data(c as u64, part.to_vec());
    }
    w.tag(1, false);
    w.close();
    let url = format!("file://{}", dir.path().join("repo").display());
    let key = dir.path().join("key");
    create_key_file(&key).unwrap();
    hrl_testkit::block_on(async {
        let repo = Repo::init(&url, &key, CHUNK, 1 << 20, 4).await.unwrap();
        let mut o = ShipOptions::new(&spool);
        o.once = true;
        ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
    });
    (Env { dir, url, key, disk }, hello)
}

fn test_failover_mounts_the_restored_filesystem_for_its_check_and_cleans_up() {
    hrl_testkit::require(
        "test_failover_mounts_the_restored_filesystem_for_its_check_and_cleans_up",
        Need::Root,
    );
    let (e, hello) = ext4_env();
    let want = e.dir.path().join("want");
    std::fs::write(&want, &hello).unwrap();
    let to = e.dir.path().join("scratch.img");
    let check = format!("test -b {{dev}} && cmp {{mnt}}/hello '{}'", want.display());
    let o = e.cli(
        "test-failover",
        &["--to", to.to_str().unwrap(), "--mount", "--check", &check],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("PASSED"), "{out}");
    let o = e.cli(
        "test-failover",
        &[
            "--to",
            to.to_str().unwrap(),
            "--mount",
            "--check",
            "test -f {mnt}/nothing-here",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "a failing check fails the test failover");
    assert!(!to.exists(), "the scratch image is removed");
    let loops = String::from_utf8(Command::new("losetup").arg("-a").output().unwrap().stdout).unwrap();
    assert!(
        !loops.contains(to.to_str().unwrap()),
        "no loop device left on the scratch image: {loops}"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains("hrl-test-failover-"), "nothing left mounted");
}

fn a_second_shipper_on_a_spool_is_refused_naming_the_first() {
    let e = env();
    let spool = e.dir.path().join("spool");
    let mut first = Command::new(env!("CARGO_BIN_EXE_hrl-shipper"))
        .args(["run", "--repo", &e.url, "--key-file", e.key.to_str().unwrap()])
        .args(["--spool", spool.to_str().unwrap(), "--metrics-listen", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = spool.join("hrl-shipper.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != first.id().to_string() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first shipper did not take the spool"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = Command::new(env!("CARGO_BIN_EXE_hrl-shipper"))
        .args(["run", "--once", "--repo", &e.url, "--key-file", e.key.to_str().unwrap()])
        .args(["--spool", spool.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("pid {}", first.id())), "names the holder: {err}");
}

hrl_testkit::tests!(
    Root: [
        a_mounted_device_is_refused_by_restore_failover_and_failback,
        a_device_an_agent_tracks_is_refused,
        test_failover_mounts_the_restored_filesystem_for_its_check_and_cleans_up,
    ],
    Nothing: [
        an_existing_image_is_refused_unless_forced_and_images_are_0600,
        an_unconfirmed_failover_off_a_terminal_does_nothing,
        a_failed_restore_leaves_no_file_behind,
        a_second_shipper_on_a_spool_is_refused_naming_the_first,
        refused_init_and_points_leave_nothing_behind,
        points_and_restore_take_a_time_as_people_write_it,
    ],
);
