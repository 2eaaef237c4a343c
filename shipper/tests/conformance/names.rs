//! Disks named as operators name them, through the command line on each
//! store: `--disk NAME`, `HOST/NAME`, a UUID prefix, the only disk by
//! default; an ambiguous or unknown name is refused listing the candidates
//! and writes nothing; a spool older than format 1.2 still lists by UUID;
//! a hook's label reaches `points`.

use std::process::{Command, Output, Stdio};

use super::*;

fn cli(e: &Env, verb: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hrl-shipper"))
        .args([verb, "--repo", &e.url, "--key-file", e.key.to_str().unwrap()])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Exit 2, every `needles` in stderr; returns stderr.
fn refused(o: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in: {err}");
    }
    err
}

/// One disk of 8 chunks with two points; `label` goes on point 2.
fn named_disk(spool: &Path, host: Option<&str>, name: &str, seed: u64, label: Option<&str>) -> Uuid {
    let disk = Uuid::new_v4();
    let mut w = match host {
        Some(h) => SpoolWriter::named(spool, disk, 8, seed, h, name),
        None => SpoolWriter::new(spool, disk, 8, 8 << 20, seed),
    };
    w.full_copy();
    w.tag(1, false);
    w.random(3);
    if let Some(l) = label {
        w.label(2, l);
    }
    w.tag(2, false);
    w.close();
    disk
}

pub async fn disks_are_chosen_by_host_and_name_and_never_guessed(backend: Backend) {
    let (e, repo) = env(backend).await;
    let spool = e.root.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let a_data = named_disk(&spool, Some("host-a"), "data", 11, None);
    let b_data = named_disk(&spool, Some("host-b"), "data", 21, None);
    let a_logs = named_disk(&spool, Some("host-a"), "logs", 31, Some("lsn=0/3000060"));
    let old = named_disk(&spool, None, "", 41, None);
    let mut o = ShipOptions::new(&spool);
    o.once = true;
    ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
    let reference = |disk: Uuid, name: &str| {
        let p = e.root.join(format!("ref-{name}"));
        let repo = repo.clone();
        let p2 = p.clone();
        async move {
            restore(&repo, &disk, PointSel::Latest, &p2, false).await.unwrap();
            std::fs::read(p).unwrap()
        }
    };
    // NAME unique in the repository, HOST/NAME, a UUID prefix.
    for (sel, disk) in [
        ("logs", a_logs),
        ("host-b/data", b_data),
        ("host-a/data", a_data),
        (&old.simple().to_string()[..8], old),
    ] {
        let to = e.root.join(format!("img-{}", sel.replace('/', "_")));
        let out = ok(&cli(&e, "restore", &["--disk", sel, "--to", to.to_str().unwrap()]));
        assert_eq!(
            std::fs::read(&to).unwrap(),
            reference(disk, &sel.replace('/', "_")).await,
            "--disk {sel}"
        );
        let want = if disk == old {
            old.to_string()
        } else {
            sel.replace("logs", "host-a/logs")
        };
        assert!(out.contains(&format!("of disk {want}")), "{out}");
    }
    // Ambiguous, unknown, and no --disk with several disks: refused, the
    // candidates listed, no target written.
    let to = e.root.join("never");
    let t = to.to_str().unwrap();
    refused(
        &cli(&e, "restore", &["--disk", "data", "--to", t]),
        &["matches 2 disks", "host-a/data (", "host-b/data ("],
    );
    refused(
        &cli(&e, "restore", &["--disk", "host-c/data", "--to", t]),
        &["no disk \"host-c/data\"", "host-a/logs", &old.to_string()],
    );
    refused(&cli(&e, "restore", &["--to", t]), &["has 4 disks", "--disk HOST/NAME"]);
    refused(
        &cli(&e, "verify", &["--disk", "data", "--against", t]),
        &["matches 2 disks"],
    );
    assert!(!to.exists(), "a refused restore wrote its target");
    // points: names (or the UUID of the old spool's disk), the label, JSON.
    let text = ok(&cli(&e, "points", &[]));
    eprintln!("{text}");
    for n in [
        "host-a/data",
        "host-b/data",
        "host-a/logs",
        &old.to_string(),
        "lsn=0/3000060",
    ] {
        assert!(text.contains(n), "{n} missing from:\n{text}");
    }
    assert!(text.contains(" ago"), "times carry their age:\n{text}");
    let json = ok(&cli(&e, "points", &["--disk", "host-a/logs", "--json"]));
    let rows: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{json}");
    assert!(
        rows.iter().all(|r| r["host"] == "host-a" && r["name"] == "logs"),
        "{json}"
    );
    assert_eq!(rows[1]["label"], "lsn=0/3000060");
    assert!(rows[0].get("label").is_none(), "only point 2 has a label: {json}");
    let json = ok(&cli(&e, "points", &["--disk", &old.to_string(), "--json"]));
    assert!(json.lines().all(|l| !l.contains("\"name\"")), "{json}");
}
