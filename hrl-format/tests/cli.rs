//! The `hrl` binary: exit codes and output formats operators rely on.

use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/hrl")
        .join(name)
}

fn hrl(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_hrl")).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn verify_exit_codes() {
    let (c, out, _) = hrl(&["verify", fixture("good-v1.hrl").to_str().unwrap()]);
    assert_eq!(c, 0);
    assert!(out.contains("ok, 14 records, sealed"), "{out}");
    let (c, _, err) = hrl(&["verify", fixture("corrupt-v1.hrl").to_str().unwrap()]);
    assert_eq!(c, 1);
    assert!(
        err.contains("corrupt-v1.hrl: damaged at offset 316: record checksum mismatch"),
        "{err}"
    );
    // A torn tail is a warning by default and damage with --strict.
    let (c, _, err) = hrl(&["verify", fixture("torn-v1.hrl").to_str().unwrap()]);
    assert_eq!(c, 0);
    assert!(err.contains("torn tail"), "{err}");
    let (c, _, _) = hrl(&["verify", "--strict", fixture("torn-v1.hrl").to_str().unwrap()]);
    assert_eq!(c, 1);
    let (c, _, err) = hrl(&["verify", "/nonexistent/x.hrl"]);
    assert_eq!(c, 2, "{err}");
    let (c, _, _) = hrl(&["verify"]);
    assert_eq!(c, 2);
}

#[test]
fn stat_json_counts_records() {
    let (c, out, err) = hrl(&["stat", "--json", fixture("good-v1.hrl").to_str().unwrap()]);
    assert_eq!(c, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = &v["records_by_type"];
    assert_eq!(
        (t["extent"].as_u64(), t["data"].as_u64(), t["tag"].as_u64()),
        (Some(3), Some(2), Some(3))
    );
    assert_eq!(
        (t["lost"].as_u64(), t["mode"].as_u64(), t["seal"].as_u64()),
        (Some(2), Some(2), Some(1))
    );
    assert_eq!(v["records"].as_u64(), Some(14));
}

#[test]
fn dump_json_is_json_lines() {
    let (c, out, _) = hrl(&["dump", "--json", fixture("good-v1.hrl").to_str().unwrap()]);
    assert_eq!(c, 0);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 14);
    assert_eq!(lines[1]["type"], "extent");
    assert_eq!(lines[1]["offset"], 4096);
    assert_eq!(lines[1]["len"], 8192);
    assert_eq!(lines[5]["type"], "data");
    assert_eq!(lines[5]["len"], 4096);
    assert_eq!(lines[11]["type"], "tag");
    assert_eq!(lines[11]["seq"], 2);
    assert_eq!(lines[11]["kind"], "app");
    assert_eq!(lines[13]["type"], "seal");
}
