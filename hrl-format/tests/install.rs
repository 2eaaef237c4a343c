//! scripts/install.sh into a scratch root (never the live system): the
//! binaries, example configs and systemd units land with the right modes,
//! the examples parse, the units pass `systemd-analyze verify` where it
//! exists, and --uninstall removes everything it put there (keeping, and
//! saying so, a config the operator changed).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn install(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/install.sh"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn install_then_uninstall_leaves_nothing_behind() {
    let bindir = Path::new(env!("CARGO_BIN_EXE_hrl")).parent().unwrap().to_path_buf();
    if !bindir.join("hrl-agent").exists() || !bindir.join("hrl-shipper").exists() {
        let why = format!("hrl-agent and hrl-shipper are not built in {}", bindir.display());
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why} (scripts/test.sh builds the whole workspace)");
        }
        eprintln!("SKIP install test: {why}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let o = install(&["--root", r, "--bin-dir", bindir.to_str().unwrap()]);
    assert!(o.status.success(), "install: {}", String::from_utf8_lossy(&o.stderr));
    let at = |p: &str| root.path().join(p.trim_start_matches('/'));
    let mode = |p: &str| std::fs::metadata(at(p)).unwrap().permissions().mode() & 0o7777;
    for b in ["hrl-agent", "hrl-shipper", "hrl"] {
        assert_eq!(mode(&format!("/usr/local/bin/{b}")), 0o755, "{b}");
    }
    assert_eq!(mode("/etc/hrl/agent.toml"), 0o644);
    assert_eq!(mode("/etc/hrl/shipper.toml"), 0o644);
    let unit = std::fs::read_to_string(at("/etc/systemd/system/hrl-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/hrl-agent run --config /etc/hrl/agent.toml"));
    assert!(unit.contains("Restart=on-failure"));
    // After the mounts, before every ordinary service: the order the
    // clean-stop fingerprint expects at shutdown and boot.
    assert!(unit.contains("After=local-fs.target"));
    assert!(unit.contains("Before=sysinit.target"));
    assert!(unit.contains("RequiresMountsFor=/var/spool/hrl"));
    // The examples parse: the agent stops at "no disk configured" (exit 2),
    // not at a syntax error.
    let o = Command::new(at("/usr/local/bin/hrl-agent"))
        .args(["run", "--config", at("/etc/hrl/agent.toml").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no disk configured"), "{err}");
    let text = std::fs::read_to_string(at("/etc/hrl/shipper.toml")).unwrap();
    let c = hrl_shipper_config_keys(&text);
    assert_eq!(
        c,
        ["repo", "key_file", "spool", "metrics_listen", "rpo_warn", "upload_rate"]
    );
    // systemd's own check, on copies that point at the installed binaries.
    if Command::new("systemd-analyze").arg("--version").output().is_ok() {
        let v = tempfile::tempdir().unwrap();
        let mut units = Vec::new();
        for u in ["hrl-agent.service", "hrl-shipper.service", "hrl-standby.service"] {
            let t = std::fs::read_to_string(at(&format!("/etc/systemd/system/{u}")))
                .unwrap()
                .replace("/usr/local/bin/", &format!("{}/usr/local/bin/", r));
            std::fs::write(v.path().join(u), t).unwrap();
            units.push(v.path().join(u));
        }
        let o = Command::new("systemd-analyze")
            .arg("verify")
            .args(&units)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && err.trim().is_empty(),
            "systemd-analyze verify: {err}"
        );
    } else {
        eprintln!("systemd-analyze not found: units not verified");
    }
    // An operator edits the shipper config; a reinstall keeps it.
    std::fs::write(at("/etc/hrl/shipper.toml"), "repo = \"file:///srv/hrl\"\n").unwrap();
    let o = install(&["--root", r, "--bin-dir", bindir.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("kept existing /etc/hrl/shipper.toml"));
    assert_eq!(
        std::fs::read_to_string(at("/etc/hrl/shipper.toml")).unwrap(),
        "repo = \"file:///srv/hrl\"\n"
    );
    let o = install(&["--root", r, "--uninstall"]);
    assert!(o.status.success(), "uninstall: {}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    // The edited config was not installed by this install: it stays.
    assert_eq!(files_under(root.path()), vec![at("/etc/hrl/shipper.toml")], "{out}");
    std::fs::remove_file(at("/etc/hrl/shipper.toml")).unwrap();
    // A clean install and uninstall leaves no file at all.
    let o = install(&["--root", r, "--bin-dir", bindir.to_str().unwrap()]);
    assert!(o.status.success());
    assert_eq!(files_under(root.path()).len(), 10);
    let o = install(&["--root", r, "--uninstall"]);
    assert!(o.status.success());
    assert!(files_under(root.path()).is_empty(), "{:?}", files_under(root.path()));
    eprintln!("install: 10 files placed, systemd units verified, uninstall left nothing");
}

/// The top-level keys of a TOML text, in order (enough to check the
/// example names exactly the keys the shipper reads).
fn hrl_shipper_config_keys(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap().trim().to_string())
        .collect()
}
