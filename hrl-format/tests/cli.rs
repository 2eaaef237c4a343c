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

#[test]
fn verify_of_a_directory_without_segments_is_a_usage_error() {
    let d = tempfile::tempdir().unwrap();
    let (c, _, err) = hrl(&["verify", d.path().to_str().unwrap()]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("no .hrl segment"), "{err}");
}

/// A spool of one disk with the 14 records of the good fixture.
fn spool_with_fixture() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let good = fixture("good-v1.hrl");
    let id = hrl_format::read_header(&good).unwrap().disk_id;
    std::fs::copy(&good, d.path().join(hrl_format::segment_file_name(id, 1))).unwrap();
    d
}

#[test]
fn tail_prints_the_last_records_and_a_closed_pipe_ends_quietly() {
    let d = spool_with_fixture();
    let dir = d.path().to_str().unwrap();
    let (c, out, err) = hrl(&["tail", dir]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(out.lines().count(), 10, "the last 10 records by default:\n{out}");
    let (_, all, _) = hrl(&["dump", dir]);
    let all: Vec<&str> = all.lines().collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), all[all.len() - 10..].to_vec());
    let (c, out, _) = hrl(&["tail", "-n", "3", dir]);
    assert_eq!((c, out.lines().count()), (0, 3));
    // The reader is gone before hrl writes (`| head` that already quit):
    // hrl exits 0 without a message.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hrl"))
        .args(["tail", dir])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
}
