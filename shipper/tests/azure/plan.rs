//! Recovery plans: three disks in two groups at one consistency-group
//! point; a test run (stopped at a pause, then through), then the real run.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use hrl_format::{Group, PointKind};
use hrl_shipper::repo::{create_key_file, Repo};
use hrl_shipper::restore::{restore, PointSel};
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_testkit::spool::SpoolWriter;
use serde_json::Value;
use uuid::Uuid;

use super::{blob_info, py};

/// Three named disks: a full copy (point 1), a member of group point
/// `shop` 1 (point 2, app-consistent), then a newer crash point 3 the
/// group rule must not pick. Returns the disk ids.
async fn three_disks(repo: &Repo, root: &Path) -> Vec<Uuid> {
    let g = Group {
        id: Uuid::new_v4(),
        seq: 1,
        members: 3,
        name: "shop".into(),
    };
    let mut ids = Vec::new();
    for (i, (host, name)) in [("db01", "data"), ("db01", "wal"), ("web01", "data")]
        .into_iter()
        .enumerate()
    {
        let spool = root.join(format!("spool-{i}"));
        std::fs::create_dir_all(&spool).unwrap();
        let id = Uuid::new_v4();
        let mut w = SpoolWriter::named(&spool, id, 32, 40 + i as u64, host, name);
        w.full_copy();
        w.tag(1, false);
        for _ in 0..5 {
            let c = w.any_chunk();
            w.random(c);
        }
        w.tag_group(2, PointKind::App, &g);
        w.random(0);
        w.tag(3, false);
        w.close();
        let mut o = ShipOptions::new(&spool);
        o.once = true;
        ship(repo, &o, &AtomicBool::new(false)).await.unwrap();
        ids.push(id);
    }
    ids
}

fn run_plan(url: &str, key: &Path, plan: &Path, extra: &[&str]) -> (i32, String, Value) {
    let report = plan.with_extension(format!("{}.json", extra.join("").replace('-', "")));
    let out = Command::new(env!("CARGO_BIN_EXE_hrl-shipper"))
        .args(["failover", "--plan"])
        .arg(plan)
        .args(["--repo", url, "--report"])
        .arg(&report)
        .arg("--key-file")
        .arg(key)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rep = std::fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), text, rep)
}

fn steps(rep: &Value) -> Vec<(String, String, bool)> {
    rep["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let who = s["disk"].as_str().or(s["group"].as_str()).unwrap_or("").to_string();
            (s["what"].as_str().unwrap().to_string(), who, s["ok"].as_bool().unwrap())
        })
        .collect()
}

fn names(container: &str, prefix: &str) -> Vec<String> {
    serde_json::from_slice(&py(&["list", container, prefix]).stdout).unwrap()
}

pub fn a_recovery_plan_runs_its_groups_in_order_tests_clean_and_fails_over() {
    hrl_testkit::block_on(plan());
}

async fn plan() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let container = format!("plan-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let url = format!("az://{container}/repo");
    let key = d.join("key");
    create_key_file(&key).unwrap();
    let repo = Repo::init(&url, &key, 65536, 1 << 20, 4).await.unwrap();
    let ids = three_disks(&repo, d).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/py/azure_blob.py");
    // Each group's check: every target is a page blob, and the order is logged.
    let check = format!(
        "echo \"$HRL_GROUP test=$HRL_TEST $HRL_TARGETS\" >> order.log; for t in $HRL_TARGETS; do python3 {} info {container} ${{t#az://{container}/}} | grep -q PageBlob || exit 1; done",
        script.display()
    );
    let plan = d.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "name = \"shop\"\npoint = \"group:shop\"\ntarget = \"az://{container}/vm/{{host}}-{{name}}.vhd\"\n\n\
             [[group]]\nname = \"databases\"\nmachines = [\"db01\"]\nafter = '{check}'\npause = true\n\n\
             [[group]]\nname = \"app\"\ndisks = [\"web01/data\"]\nafter = '{check}'\n"
        ),
    )
    .unwrap();

    // A test run off a terminal without --yes stops at the pause; what it
    // wrote is removed.
    let (code, text, rep) = run_plan(&url, &key, &plan, &["--test"]);
    assert_eq!(code, 1, "{text}");
    let s = steps(&rep);
    assert_eq!(s.iter().filter(|x| x.0 == "restore").count(), 2, "{s:?}");
    assert!(s.iter().any(|x| x.0 == "pause" && !x.2), "{s:?}");
    assert!(!s.iter().any(|x| x.1 == "web01/data" && x.0 == "restore"), "{s:?}");
    assert_eq!(s.iter().filter(|x| x.0 == "remove" && x.2).count(), 2, "{s:?}");
    assert!(
        names(&container, "vm/").is_empty(),
        "the stopped test run left blobs behind"
    );

    // With --yes: both groups in order, checks pass, nothing left behind.
    let (code, text, rep) = run_plan(&url, &key, &plan, &["--test", "--yes"]);
    eprintln!("{text}");
    assert_eq!(code, 0, "{text}");
    assert_eq!(rep["ok"], true);
    let s = steps(&rep);
    let order: Vec<&str> = s.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(
        order,
        ["restore", "restore", "after", "pause", "restore", "after", "remove", "remove", "remove"],
        "{text}"
    );
    assert_eq!(s[4].1, "web01/data");
    for st in rep["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["what"] == "restore")
    {
        assert_eq!(st["point"], 2, "the group point, not the newest: {st}");
        assert!(st["target"].as_str().unwrap().contains("/vm/test-"), "{st}");
        assert!(st["seconds"].as_f64().unwrap() > 0.0);
    }
    assert!(names(&container, "vm/").is_empty(), "the test run left blobs behind");
    let log = std::fs::read_to_string(d.join("order.log")).unwrap();
    // The stopped run's databases, then this run's databases and app.
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(
        lines[1].starts_with("databases test=1")
            && lines[1].contains("db01-data.vhd")
            && lines[1].contains("db01-wal.vhd")
    );
    assert!(
        lines[2].starts_with("app test=1") && lines[2].contains("web01-data.vhd"),
        "{log}"
    );

    // The real run: the blobs stay, each equal to a raw restore of point 2.
    let (code, text, rep) = run_plan(&url, &key, &plan, &["--yes"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(rep["test"], false);
    let mut got = names(&container, "vm/");
    got.sort();
    assert_eq!(got, ["vm/db01-data.vhd", "vm/db01-wal.vhd", "vm/web01-data.vhd"]);
    for (id, blob) in ids
        .iter()
        .zip(["vm/db01-data.vhd", "vm/db01-wal.vhd", "vm/web01-data.vhd"])
    {
        let raw = d.join(format!("{id}.raw"));
        restore(&repo, id, PointSel::Seq(2), &raw, false).await.unwrap();
        let vhd = d.join(format!("{id}.vhd"));
        py(&["download", &container, blob, vhd.to_str().unwrap()]);
        let raw = std::fs::read(&raw).unwrap();
        assert!(
            std::fs::read(&vhd).unwrap()[..raw.len()] == raw[..],
            "{blob} differs from point 2"
        );
        assert_eq!(blob_info(&container, blob)["metadata"]["hrl_point"], "2");
    }
    // Failed over: running the plan again is refused before anything.
    let (code, text, _) = run_plan(&url, &key, &plan, &["--yes", "--force"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("exists"), "{text}");
}
