//! Repository conformance: spools written by test code are shipped, every
//! point restores byte-identical to `hrl replay` of the same spool, dedup
//! stores repeated content once, and damage or a wrong key fails clearly.
//! Runs against the local directory store (the embedded default) and
//! Azurite; `conformance/names.rs` covers `--disk` as operators type it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use hrl_format::{Data, LogConfig, LogWriter, PointKind, Record, Tag};
use hrl_shipper::repo::{create_key_file, Repo};
use hrl_shipper::restore::{check, restore, PointSel};
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_shipper::ShipError;
use uuid::Uuid;

use hrl_testkit::spool::{SpoolWriter, CHUNK};
use hrl_testkit::{Need, Rng};

/// Writes a spool for one disk: an initial full copy, then `points` windows
/// of random, repeated and zero chunks, each ended by a tag (every fifth
/// aborted). Returns the disk id and the published point sequences.
fn make_spool(spool: &Path, chunks: u64, last_short: usize, points: u64, seed: u64, shared: &[u8]) -> (Uuid, Vec<u64>) {
    let disk = Uuid::new_v4();
    let mut w = SpoolWriter::with_last_len(spool, disk, chunks, last_short, 1 << 20, seed);
    // 0: zero, 1: the shared chunk (where it fits), else random.
    let put = |w: &mut SpoolWriter, c: u64, kind: u64| match kind {
        0 => w.zero(c),
        1 if w.len_of(c) == CHUNK as usize => w.data(c, shared.to_vec()),
        _ => w.random(c),
    };
    for c in 0..chunks {
        put(&mut w, c, c % 4);
    }
    let mut seqs = Vec::new();
    for p in 1..=points {
        for _ in 0..(1 + w.rng.next() % 6) {
            let c = w.any_chunk();
            let kind = w.rng.next() % 3;
            put(&mut w, c, kind);
            // Sometimes the same chunk twice in a window: the last must win.
            if w.rng.next() % 4 == 0 {
                w.random(c);
            }
        }
        let aborted = p % 5 == 3;
        w.tag(p, aborted);
        if !aborted {
            seqs.push(p);
        }
    }
    w.close();
    (disk, seqs)
}

/// The store a scenario runs against.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Local,
    Azurite,
}

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    url: String,
    key: PathBuf,
    backend: Backend,
}

impl Env {
    /// Another (empty) repository URL on the same backend.
    fn other_url(&self) -> String {
        match self.backend {
            Backend::Local => format!("file://{}", self.root.join("nothing").display()),
            Backend::Azurite => format!("{}-nothing", self.url),
        }
    }
}

async fn env(backend: Backend) -> (Env, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let url = match backend {
        Backend::Local => format!("file://{}", root.join("repo").display()),
        Backend::Azurite => format!("az://hrl-{}/repo", &Uuid::new_v4().simple().to_string()[..20]),
    };
    let key = root.join("key");
    create_key_file(&key).unwrap();
    let repo = Repo::init(&url, &key, CHUNK, 1 << 20, 4).await.unwrap();
    (
        Env {
            _dir: dir,
            root,
            url,
            key,
            backend,
        },
        repo,
    )
}

/// The harness: one test per backend for each scenario; the Azurite ones
/// are reported as ignored when Azurite is not running (failed under CI=true).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        fn main() {
            let args = hrl_testkit::libtest_mimic::Arguments::from_args();
            let trials = vec![
                $(hrl_testkit::trial(concat!("local::", stringify!($name)), Need::Nothing, || {
                    hrl_testkit::block_on($name(Backend::Local))
                }),)*
                $(hrl_testkit::trial(concat!("azurite::", stringify!($name)), Need::Azurite, || {
                    hrl_testkit::block_on($name(Backend::Azurite))
                }),)*
            ];
            hrl_testkit::libtest_mimic::run(&args, trials).exit();
        }
    };
}

#[path = "conformance/names.rs"]
mod names;
use names::disks_are_chosen_by_host_and_name_and_never_guessed;
#[path = "conformance/index.rs"]
mod index;
use index::index_files_learn_each_others_chunks_and_follow_a_prune;
#[path = "conformance/leases.rs"]
mod leases;
use leases::{
    a_stale_lease_holder_with_a_stopped_clock_cannot_publish, an_upload_limit_slower_than_the_lease_keeps_the_lease,
};

conformance!(
    disks_are_chosen_by_host_and_name_and_never_guessed,
    a_stale_lease_holder_with_a_stopped_clock_cannot_publish,
    an_upload_limit_slower_than_the_lease_keeps_the_lease,
    index_files_learn_each_others_chunks_and_follow_a_prune,
    every_point_of_several_disks_restores_identical_to_replay_and_dedup_stores_once,
    a_wrong_key_a_loose_key_file_and_a_newer_repository_are_clear_errors,
    a_flipped_byte_in_a_pack_fails_restore_and_check_naming_the_chunk,
    the_store_sees_no_plaintext,
    failback_writes_only_what_differs_verify_lists_it_and_failover_fences_the_old_shipper,
    prune_beside_a_running_shipper_keeps_every_kept_point_restorable,
);

/// Points every 40 ms into a live spool while a shipper follows it; the
/// first 20 carry tag times hours old, the rest are recent. Midway, prune
/// with `--keep-within 30m` runs beside the shipper. New points reuse the
/// content of chunks the old points wrote, so the shipper dedups against
/// packs prune may delete: it must notice and ship those chunks again.
async fn prune_beside_a_running_shipper_keeps_every_kept_point_restorable(backend: Backend) {
    use hrl_shipper::prune::{prune, Policy, PruneOptions};
    use std::sync::Arc;
    let (e, repo) = env(backend).await;
    let spool = e.root.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Uuid::new_v4();
    let chunks = 48u64;
    let mut cfg = LogConfig::new(&spool, disk, CHUNK, 512, chunks * CHUNK as u64);
    cfg.rotate_bytes = 1 << 20;
    let old = 20u64;
    let total = 44u64;
    let hour = 3_600_000_000_000u64;
    let writer = std::thread::spawn(move || {
        let mut w = LogWriter::open(cfg).unwrap();
        let mut rng = Rng::new(99);
        let mut seen: Vec<Vec<u8>> = Vec::new();
        for c in 0..chunks {
            w.append(&Record::Data(Data {
                offset: c * CHUNK as u64,
                flags: 0,
                data: rng.bytes(CHUNK as usize),
            }))
            .unwrap();
        }
        for p in 1..=total {
            for _ in 0..3 {
                let c = rng.next() % chunks;
                // New points sometimes bring back content old points wrote.
                let bytes = if p > old && !seen.is_empty() && rng.next() % 2 == 0 {
                    seen[(rng.next() % seen.len() as u64) as usize].clone()
                } else {
                    rng.bytes(CHUNK as usize)
                };
                if p <= old {
                    seen.push(bytes.clone());
                }
                w.append(&Record::Data(Data {
                    offset: c * CHUNK as u64,
                    flags: 0,
                    data: bytes,
                }))
                .unwrap();
            }
            let now = hrl_format::now_ns();
            let time_ns = if p <= old { now - (3 + old - p) * hour } else { now };
            w.append(&Record::Tag(Tag {
                seq: p,
                kind: PointKind::Crash,
                aborted: false,
                time_ns,
                freeze_ns: 1000,
                group: None,
            }))
            .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(40));
        }
        w.close().unwrap();
    });
    let stop = Arc::new(AtomicBool::new(false));
    let shipper = {
        let repo = repo.clone();
        let stop = stop.clone();
        let mut o = ShipOptions::new(&spool);
        o.delete_shipped = false;
        o.poll = std::time::Duration::from_millis(20);
        tokio::spawn(async move { ship(&repo, &o, &stop).await })
    };
    // Prune once the old points are published.
    let published = |repo: Repo| async move { hrl_shipper::repo::manifest::list_points(&repo, &disk).await.unwrap() };
    while published(repo.clone()).await.len() < old as usize {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    use hrl_shipper::repo::lock::pruned_version;
    assert_eq!(pruned_version(&repo).await.unwrap(), None, "no prune has run");
    let rep = prune(
        &repo,
        &PruneOptions {
            policy: Policy {
                keep_within: Some(std::time::Duration::from_secs(1800)),
                ..Default::default()
            },
            per_disk: Default::default(),
            dry_run: false,
            grace: std::time::Duration::from_millis(300),
            pack_grace: std::time::Duration::ZERO,
        },
    )
    .await
    .unwrap();
    eprintln!("prune beside a running shipper: {rep:?}");
    // The mark shippers compare (one HEAD per point) is there now.
    assert!(
        pruned_version(&repo).await.unwrap().is_some(),
        "locks/pruned after a prune"
    );
    writer.join().unwrap();
    while published(repo.clone()).await.last() != Some(&total) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ship_rep = shipper.await.unwrap().unwrap();
    eprintln!(
        "points shipped again after prune removed their chunks: {}",
        ship_rep.points_reshipped
    );
    // Prune removed old points only, and all of them but possibly the
    // newest (always kept).
    assert!(
        rep.removed.iter().all(|&(d, s)| d == disk && s <= old),
        "{:?}",
        rep.removed
    );
    assert!(rep.points_removed >= old - 1, "removed {}", rep.points_removed);
    assert!(rep.packs_deleted > 0, "overwritten old chunks free packs: {rep:?}");
    let left = published(repo.clone()).await;
    for (_, s) in &rep.removed {
        assert!(!left.contains(s), "point {s} was removed but is listed");
    }
    assert!(
        (old + 1..=total).all(|s| left.contains(&s)),
        "every recent point is there: {left:?}"
    );
    for &p in &left {
        let want = e.root.join(format!("want-{p}"));
        hrl_format::replay(&spool, Some(disk), Some(p), &want).unwrap();
        let got = e.root.join(format!("got-{p}"));
        restore(&repo, &disk, PointSel::Seq(p), &got, false).await.unwrap();
        assert!(
            std::fs::read(&want).unwrap() == std::fs::read(&got).unwrap(),
            "point {p}: restore after prune differs from replay"
        );
        std::fs::remove_file(&want).unwrap();
        std::fs::remove_file(&got).unwrap();
    }
    let c = check(&repo, true).await.unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    eprintln!(
        "after prune: {} points restored byte-identical, check --read-data: {} chunks, no problems",
        left.len(),
        c.chunks_read
    );
    hrl_format::testutil::reliability_report(
        &format!(
            "prune beside a running shipper ({})",
            if backend == Backend::Local { "local" } else { "Azurite" }
        ),
        1,
        rep.points_removed,
        left.len() as u64,
        0,
        &format!(
            "{} points and {} packs removed, {} points re-shipped by the shipper, every kept point byte-identical",
            rep.points_removed, rep.packs_deleted, ship_rep.points_reshipped
        ),
    );
}

async fn every_point_of_several_disks_restores_identical_to_replay_and_dedup_stores_once(backend: Backend) {
    let (e, repo) = env(backend).await;
    let spool = e.root.join("spool");
    let archive = e.root.join("archive");
    std::fs::create_dir_all(&spool).unwrap();
    let shared: Vec<u8> = Rng::new(1).bytes(CHUNK as usize);
    let (a, pa) = make_spool(&spool, 40, 1000, 12, 7, &shared);
    let (b, pb) = make_spool(&spool, 25, CHUNK as usize, 9, 8, &shared);
    // Keep a copy of the spool: shipping deletes what it shipped.
    std::fs::create_dir_all(&archive).unwrap();
    for s in hrl_format::list_segments(&spool, None).unwrap() {
        std::fs::copy(&s.path, archive.join(s.path.file_name().unwrap())).unwrap();
    }
    let stop = AtomicBool::new(false);
    let mut o = ShipOptions::new(&spool);
    o.once = true;
    let rep = ship(&repo, &o, &stop).await.unwrap();
    assert_eq!(rep.points_published as usize, pa.len() + pb.len());
    // Shipping again finds nothing new.
    let again = ship(&repo, &o, &stop).await.unwrap();
    assert_eq!(again.points_published, 0);
    assert!(rep.segments_deleted > 0);
    assert!(
        hrl_format::list_segments(&spool, None).unwrap().is_empty(),
        "every segment was wholly shipped and must be deleted"
    );
    // The shared chunk content is stored exactly once across both disks.
    let shared_refs = rep.chunks_deduplicated;
    assert!(
        shared_refs > 10,
        "repeated chunks should be deduplicated ({shared_refs})"
    );
    for (disk, points) in [(a, &pa), (b, &pb)] {
        for &p in points.iter() {
            let want = e.root.join(format!("want-{disk}-{p}"));
            hrl_format::replay(&archive, Some(disk), Some(p), &want).unwrap();
            let got = e.root.join(format!("got-{disk}-{p}"));
            let r = restore(&repo, &disk, PointSel::Seq(p), &got, false).await.unwrap();
            assert_eq!(r.point, p);
            assert!(
                std::fs::read(&want).unwrap() == std::fs::read(&got).unwrap(),
                "disk {disk} point {p}: restore differs from replay"
            );
            std::fs::remove_file(&want).unwrap();
            std::fs::remove_file(&got).unwrap();
        }
    }
    // Restoring over an existing, dirty image needs force, and writes
    // zero chunks too.
    let got = e.root.join("over");
    std::fs::write(&got, vec![0xAAu8; 40 * CHUNK as usize]).unwrap();
    let last = *pa.last().unwrap();
    let refused = restore(&repo, &a, PointSel::Latest, &got, false).await.unwrap_err();
    assert!(refused.to_string().contains("--force"), "{refused}");
    assert_eq!(std::fs::read(&got).unwrap(), vec![0xAAu8; 40 * CHUNK as usize]);
    let force = hrl_shipper::restore::RestoreOptions {
        progress: false,
        force: true,
    };
    hrl_shipper::restore::restore_to(&repo, &a, PointSel::Latest, &got, force)
        .await
        .unwrap();
    let want = e.root.join("want-over");
    hrl_format::replay(&archive, Some(a), Some(last), &want).unwrap();
    assert!(
        std::fs::read(&want).unwrap() == std::fs::read(&got).unwrap(),
        "restore over a dirty image"
    );
    // Checkpoints bound the chain: with checkpoint_every = 4, at most 4 manifests per restore.
    let (h, _) = hrl_shipper::repo::manifest::load(&repo, &a, pa[0]).await.unwrap();
    assert!(h.checkpoint, "a disk's first point is a checkpoint");
    let cps = {
        let mut n = 0;
        for &p in &pa {
            if hrl_shipper::repo::manifest::load(&repo, &a, p)
                .await
                .unwrap()
                .0
                .checkpoint
            {
                n += 1;
            }
        }
        n
    };
    assert!(cps >= 2, "expected periodic checkpoints, found {cps}");
    let c = check(&repo, true).await.unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert!(c.chunks_read > 0);
}

async fn a_wrong_key_a_loose_key_file_and_a_newer_repository_are_clear_errors(backend: Backend) {
    let (e, repo) = env(backend).await;
    let other = e.root.join("other-key");
    create_key_file(&other).unwrap();
    let err = Repo::open(&e.url, &other).await.err().expect("a wrong key must fail");
    assert!(matches!(err, ShipError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("wrong key"), "{err}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&e.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Repo::open(&e.url, &e.key)
        .await
        .err()
        .expect("a world-readable key file must be refused");
    assert!(err.to_string().contains("readable by others"), "{err}");
    std::fs::set_permissions(&e.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Refuses to initialise over an existing repository.
    let err = Repo::init(&e.url, &e.key, CHUNK, 1 << 20, 4).await.err().unwrap();
    assert!(matches!(err, ShipError::RepositoryExists { .. }), "{err}");
    // A changed parameter is detected; a newer version refused.
    let text = String::from_utf8(repo.get("config").await.unwrap().to_vec()).unwrap();
    let changed = text.replace("\"checkpoint_every\": 4", "\"checkpoint_every\": 5");
    assert_ne!(changed, text);
    repo.put("config", changed.into_bytes(), false).await.unwrap();
    let err = Repo::open(&e.url, &e.key).await.err().unwrap();
    assert!(err.to_string().contains("parameters were changed"), "{err}");
    repo.put(
        "config",
        text.replace("\"version\": 1", "\"version\": 2").into_bytes(),
        false,
    )
    .await
    .unwrap();
    let err = Repo::open(&e.url, &e.key).await.err().unwrap();
    assert!(matches!(err, ShipError::NewerRepository { version: 2, .. }), "{err}");
    let err = Repo::open(&e.other_url(), &e.key).await.err().unwrap();
    assert!(matches!(err, ShipError::NoRepository { .. }), "{err}");
}

async fn a_flipped_byte_in_a_pack_fails_restore_and_check_naming_the_chunk(backend: Backend) {
    let (e, repo) = env(backend).await;
    let spool = e.root.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let (disk, points) = make_spool(&spool, 20, CHUNK as usize, 3, 3, &Rng::new(2).bytes(CHUNK as usize));
    let mut o = ShipOptions::new(&spool);
    o.once = true;
    ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
    // Flip one byte in the middle of a chunk the last point uses.
    let last = *points.last().unwrap();
    let (_, map) = hrl_shipper::repo::manifest::full_map(&repo, &disk, last).await.unwrap();
    let index = repo.load_index().await.unwrap();
    let loc = map
        .values()
        .find_map(|r| match r {
            hrl_shipper::repo::manifest::ChunkRef::Stored(id) => index.get(id).copied(),
            _ => None,
        })
        .unwrap();
    let key = hrl_shipper::repo::pack_key(&loc.pack);
    let mut b = repo.get(&key).await.unwrap().to_vec();
    b[(loc.offset + loc.len as u64 / 2) as usize] ^= 0x10;
    repo.put(&key, b, false).await.unwrap();
    let target = e.root.join("img");
    let err = restore(&repo, &disk, PointSel::Seq(*points.last().unwrap()), &target, false)
        .await
        .expect_err("restore from a tampered pack must fail");
    let msg = err.to_string();
    assert!(msg.contains("chunk ") && msg.contains(&key), "{msg}");
    assert!(msg.contains("incomplete"), "{msg}");
    let c = check(&repo, true).await.unwrap();
    assert!(!c.problems.is_empty(), "check --read-data must find the flipped byte");
    assert!(
        c.problems.iter().any(|p| p.object == key && p.what.contains("chunk ")),
        "{:?}",
        c.problems
    );
    // Without --read-data the structure is still fine.
    assert!(check(&repo, false).await.unwrap().problems.is_empty());
}

async fn the_store_sees_no_plaintext(backend: Backend) {
    let (e, repo) = env(backend).await;
    let spool = e.root.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let marker = b"HRL-PLAINTEXT-MARKER-0123456789";
    let disk = Uuid::new_v4();
    let mut w = LogWriter::open(LogConfig::new(&spool, disk, CHUNK, 512, 2 * CHUNK as u64)).unwrap();
    let mut chunk = marker.repeat(CHUNK as usize / marker.len() + 1);
    chunk.truncate(CHUNK as usize);
    for c in 0..2 {
        w.append(&Record::Data(Data {
            offset: c * CHUNK as u64,
            flags: 0,
            data: chunk.clone(),
        }))
        .unwrap();
    }
    w.append(&Record::Tag(Tag {
        seq: 1,
        kind: PointKind::App,
        aborted: false,
        time_ns: 1,
        freeze_ns: 1,
        group: None,
    }))
    .unwrap();
    w.close().unwrap();
    let mut o = ShipOptions::new(&spool);
    o.once = true;
    ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
    let objects = repo.list("").await.unwrap();
    assert!(objects.len() >= 4, "{objects:?}");
    for (key, _) in &objects {
        let b = repo.get(key).await.unwrap();
        assert!(!b.windows(marker.len()).any(|w| w == marker), "{key} holds plaintext");
    }
    let _ = (e.backend, disk);
}

async fn failback_writes_only_what_differs_verify_lists_it_and_failover_fences_the_old_shipper(backend: Backend) {
    use hrl_shipper::restore::{failback, verify};
    let (e, repo) = env(backend).await;
    let spool = e.root.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let (disk, points) = make_spool(&spool, 200, CHUNK as usize, 4, 11, &Rng(3).bytes(CHUNK as usize));
    let mut o = ShipOptions::new(&spool);
    o.once = true;
    ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
    let last = *points.last().unwrap();
    let img = e.root.join("img");
    restore(&repo, &disk, PointSel::Latest, &img, false).await.unwrap();
    let (seq, d) = verify(&repo, &disk, PointSel::Latest, &img).await.unwrap();
    assert_eq!((seq, d.len()), (last, 0));
    // Change 1% of the chunks (2 of 200), plus a byte in a third.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&Rng(9).bytes(CHUNK as usize), 17 * CHUNK as u64)
            .unwrap();
        f.write_all_at(&Rng(10).bytes(100), 120 * CHUNK as u64 + 5).unwrap();
        f.write_all_at(b"x", 121 * CHUNK as u64 + 999).unwrap();
    }
    let (_, d) = verify(&repo, &disk, PointSel::Latest, &img).await.unwrap();
    let ranges: Vec<(u64, u64)> = d
        .iter()
        .map(|x| (x.offset / CHUNK as u64, x.len / CHUNK as u64))
        .collect();
    assert_eq!(
        ranges,
        vec![(17, 1), (120, 2)],
        "verify must list the changed chunks, merged"
    );
    let r = failback(&repo, &disk, PointSel::Latest, &img, false).await.unwrap();
    eprintln!(
        "failback: compared {} written {} skipped {}",
        r.compared,
        r.stored_chunks + r.zero_chunks,
        r.skipped
    );
    assert_eq!(r.compared, 200);
    assert_eq!(
        r.stored_chunks + r.zero_chunks,
        3,
        "only the 3 changed chunks are written"
    );
    assert_eq!(r.skipped, 197);
    assert!(verify(&repo, &disk, PointSel::Latest, &img).await.unwrap().1.is_empty());
    // Failover fences the old source's shipper.
    hrl_shipper::repo::fence::record(
        &repo,
        &hrl_shipper::repo::fence::FailoverRecord {
            disk,
            point: last,
            time_ns: 1,
            target: "x".into(),
            forced: false,
        },
    )
    .await
    .unwrap();
    {
        let mut w = LogWriter::open(LogConfig::new(&spool, disk, CHUNK, 512, 200 * CHUNK as u64)).unwrap();
        w.append(&Record::Data(Data {
            offset: 0,
            flags: 0,
            data: Rng(4).bytes(CHUNK as usize),
        }))
        .unwrap();
        w.append(&Record::Tag(Tag {
            seq: 100,
            kind: PointKind::Crash,
            aborted: false,
            time_ns: 1,
            freeze_ns: 1,
            group: None,
        }))
        .unwrap();
        w.close().unwrap();
    }
    let err = ship(&repo, &o, &AtomicBool::new(false))
        .await
        .expect_err("a fenced disk must not publish");
    assert!(matches!(err, ShipError::Fenced { .. }), "{err}");
    assert!(!repo
        .exists(&hrl_shipper::repo::manifest::point_key(&disk, 100))
        .await
        .unwrap());
}
