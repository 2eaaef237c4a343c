//! Crash matrix of the publish order: the shipper binary aborts (as a
//! kill -9 would) right after each step: packs written, index written,
//! manifest written, cursor saved, a spool segment deleted. Restarted, it
//! finishes; then every point is published exactly once, restores
//! byte-identical to the spool, and `check --read-data` is clean.
//! Needs the `failpoints` feature (scripts/test.sh enables it).

#[cfg(not(feature = "failpoints"))]
fn crash_matrix_needs_the_failpoints_feature() {
    hrl_testkit::failpoints_missing("hrl-shipper/failpoints");
}

#[cfg(feature = "failpoints")]
mod matrix {
    use std::path::Path;
    use std::process::Command;

    use hrl_shipper::repo::{create_key_file, Repo};
    use hrl_shipper::restore::{check, restore, PointSel};
    use hrl_testkit::spool::{SpoolWriter, CHUNK};
    use uuid::Uuid;

    const POINTS: u64 = 8;

    fn spool(dir: &Path, disk: Uuid) {
        let mut w = SpoolWriter::new(dir, disk, 40, 512 << 10, disk.as_u128() as u64);
        w.full_copy();
        for p in 1..=POINTS {
            for c in [p % 40, (p * 7) % 40, (p * 13) % 40] {
                w.random(c);
            }
            w.tag(p, false);
        }
        w.close();
    }

    fn shipper(url: &str, key: &Path, spool: &Path, failpoint: Option<String>) -> std::process::Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hrl-shipper"));
        c.args(["run", "--once", "--repo", url, "--key-file", key.to_str().unwrap()])
            .args(["--spool", spool.to_str().unwrap()]);
        match failpoint {
            Some(f) => c.env("FAILPOINTS", f),
            None => c.env_remove("FAILPOINTS"),
        };
        c.output().unwrap()
    }

    pub fn a_crash_after_every_publish_step_loses_and_duplicates_nothing() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut lines = Vec::new();
        let mut total_crashes = 0u64;
        for fp in [
            "ship-packs-written",
            "ship-index-written",
            "ship-manifest-written",
            "ship-cursor-saved",
            "ship-segment-deleted",
            "ship-window-journaled",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let sp = dir.path().join("spool");
            let archive = dir.path().join("archive");
            std::fs::create_dir_all(&sp).unwrap();
            std::fs::create_dir_all(&archive).unwrap();
            let disk = Uuid::new_v4();
            spool(&sp, disk);
            for s in hrl_format::list_segments(&sp, None).unwrap() {
                std::fs::copy(&s.path, archive.join(s.path.file_name().unwrap())).unwrap();
            }
            let key = dir.path().join("key");
            create_key_file(&key).unwrap();
            let url = format!("file://{}", dir.path().join("repo").display());
            rt.block_on(Repo::init(&url, &key, CHUNK, 256 << 10, 3)).unwrap();
            // Run i crashes at the (i+1)-th time it reaches the step, so the
            // crashes land at different points and every restart gets
            // further; until a run gets through.
            let mut crashes = 0;
            loop {
                let spec = if crashes == 0 {
                    format!("{fp}=return")
                } else {
                    format!("{fp}={crashes}*off->return")
                };
                let o = shipper(&url, &key, &sp, Some(spec));
                if o.status.success() {
                    break;
                }
                assert!(
                    String::from_utf8_lossy(&o.stderr).contains(&format!("failpoint {fp}: aborting")),
                    "{fp}: the shipper failed otherwise: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                crashes += 1;
                assert!(crashes <= 3 * POINTS + 20, "{fp}: no progress after {crashes} crashes");
            }
            let o = shipper(&url, &key, &sp, None);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let repo = rt.block_on(Repo::open(&url, &key)).unwrap();
            let points = rt
                .block_on(hrl_shipper::repo::manifest::list_points(&repo, &disk))
                .unwrap();
            assert_eq!(
                points,
                (1..=POINTS).collect::<Vec<_>>(),
                "{fp}: every point exactly once"
            );
            for p in 1..=POINTS {
                let want = dir.path().join("want");
                hrl_format::replay(&archive, Some(disk), Some(p), &want).unwrap();
                let got = dir.path().join("got");
                let _ = std::fs::remove_file(&got);
                rt.block_on(restore(&repo, &disk, PointSel::Seq(p), &got, false))
                    .unwrap();
                assert!(
                    std::fs::read(&want).unwrap() == std::fs::read(&got).unwrap(),
                    "{fp}: point {p} differs after the crashes"
                );
            }
            let c = rt.block_on(check(&repo, true)).unwrap();
            assert!(c.problems.is_empty(), "{fp}: {:?}", c.problems);
            assert!(
                hrl_format::list_segments(&sp, None).unwrap().is_empty(),
                "{fp}: shipped segments are all deleted in the end"
            );
            total_crashes += crashes;
            lines.push(format!("{fp}: {crashes} crashes, {POINTS} points exact"));
        }
        eprintln!("crash matrix (shipper): {}", lines.join("; "));
        hrl_format::testutil::reliability_report(
            "crash matrix: shipper publish order (6 failpoints)",
            lines.len() as u64,
            total_crashes,
            lines.len() as u64 * POINTS,
            0,
            "every point exactly once, byte-identical, check --read-data clean",
        );
    }
}

#[cfg(not(feature = "failpoints"))]
hrl_testkit::tests!(Nothing: [crash_matrix_needs_the_failpoints_feature]);
#[cfg(feature = "failpoints")]
use matrix::a_crash_after_every_publish_step_loses_and_duplicates_nothing;
#[cfg(feature = "failpoints")]
hrl_testkit::tests!(Nothing: [a_crash_after_every_publish_step_loses_and_duplicates_nothing]);
