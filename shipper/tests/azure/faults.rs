//! Restore to VHD, the standby and a failover from it, all through the
//! fault proxy (500s, 503s, resets, stalls past the client's timeout,
//! truncated answers): retried requests must neither fail the command nor
//! change a byte of what it writes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use hrl_shipper::azure::vhd;
use hrl_shipper::repo::{create_key_file, Repo};
use hrl_shipper::restore::{restore, PointSel};
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_testkit::fault_proxy::{FaultPlan, FaultProxy};
use hrl_testkit::spool::{SpoolWriter, CHUNK};
use uuid::Uuid;

use super::{py, standby_snapshots};

/// The CLI with its Blob traffic (repository, VHDs, standby) through `proxy`.
fn through(proxy: SocketAddr, url: &str, key: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hrl-shipper"))
        .args(args)
        .args(["--repo", url])
        .arg("--key-file")
        .arg(key)
        .env("AZURITE_BLOB_STORAGE_URL", format!("http://{proxy}"))
        .env("HRL_STORE_TIMEOUT", "1s")
        .output()
        .unwrap()
}

/// Runs `args` until it succeeds (at most 8 times), as an operator or a
/// service's restart would; returns the attempts it took.
fn until_ok(proxy: SocketAddr, url: &str, key: &Path, args: &[&str]) -> usize {
    for attempt in 1..=8 {
        let out = through(proxy, url, key, args);
        if out.status.success() {
            return attempt;
        }
        eprintln!(
            "{args:?} attempt {attempt}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    panic!("{args:?} never succeeded through the faults");
}

fn downloaded_equals(container: &str, blob: &str, snapshot: Option<&str>, raw: &Path, at: &Path) {
    let mut args = vec!["download", container, blob, at.to_str().unwrap()];
    if let Some(s) = snapshot {
        args.push(s);
    }
    py(&args);
    let got = std::fs::read(at).unwrap();
    let want = std::fs::read(raw).unwrap();
    assert!(
        got[..want.len()] == want[..],
        "{blob} {snapshot:?} differs from its raw restore"
    );
    let virt = want.len().div_ceil(1 << 20) << 20;
    assert_eq!(got.len(), virt + 512);
    assert!(got[want.len()..virt].iter().all(|&b| b == 0));
    assert_eq!(vhd::parse(&got[virt..].try_into().unwrap()), Ok(virt as u64));
}

pub fn a_vhd_restore_and_the_standby_get_through_endpoint_faults() {
    hrl_testkit::block_on(faults());
}

async fn faults() {
    let direct = std::env::var("AZURITE_BLOB_STORAGE_URL").unwrap_or_default();
    let upstream: SocketAddr = direct
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let container = format!("flt-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let url = format!("az://{container}/repo");
    let key = d.join("key");
    create_key_file(&key).unwrap();
    let repo = Repo::init(&url, &key, CHUNK, 1 << 20, 4).await.unwrap();
    let spool = d.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Uuid::new_v4();
    let points = SpoolWriter::new(&spool, disk, 96, 1 << 20, 9).simple(5, 10);
    let mut o = ShipOptions::new(&spool);
    o.once = true;
    ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();

    let mut plan = FaultPlan::uniform(0.08, 7);
    plan.stall_for = Duration::from_secs(3);
    let proxy = FaultProxy::start(upstream, plan).await.unwrap();
    let p = proxy.addr;
    let vhd = format!("az://{container}/vm/p5.vhd");
    let tries_restore = until_ok(p, &url, &key, &["restore", "--point", "5", "--to", &vhd, "--force"]);
    let sb = format!("az://{container}/standby");
    let tries_standby = until_ok(p, &url, &key, &["standby", "--once", "--to", &sb]);
    let copy = format!("az://{container}/vm/p3.vhd");
    let tries_copy = until_ok(
        p,
        &url,
        &key,
        &["restore", "--point", "3", "--standby", &sb, "--to", &copy, "--force"],
    );
    proxy.set_enabled(false);
    let c = proxy.counts();
    eprintln!("faults {c:?}; attempts: restore {tries_restore}, standby {tries_standby}, copy {tries_copy}");
    assert!(
        c.faults() >= 10 && c.reset > 0 && c.busy_503 > 0 && c.error_500 > 0,
        "{c:?}"
    );

    for seq in &points {
        restore(&repo, &disk, PointSel::Seq(*seq), &d.join(format!("raw-{seq}")), false)
            .await
            .unwrap();
    }
    downloaded_equals(&container, "vm/p5.vhd", None, &d.join("raw-5"), &d.join("p5.vhd"));
    downloaded_equals(&container, "vm/p3.vhd", None, &d.join("raw-3"), &d.join("p3.vhd"));
    let blob = format!("standby/{disk}.vhd");
    let snaps = standby_snapshots(&container, &blob);
    assert_eq!(snaps.keys().copied().collect::<Vec<_>>(), points);
    for (seq, snap) in &snaps {
        let raw = d.join(format!("raw-{seq}"));
        downloaded_equals(&container, &blob, Some(snap), &raw, &d.join(format!("s{seq}.vhd")));
    }
}
