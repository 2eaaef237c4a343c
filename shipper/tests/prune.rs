//! Prune keeps what a running shipper still needs: packs younger than
//! --pack-grace that no point uses yet (a journaled window's) stay, and so
//! do their index entries, so the shipper publishes its next point.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use hrl_shipper::index::DiskIndex;
use hrl_shipper::prune::{prune, Policy, PruneOptions};
use hrl_shipper::repo::{create_key_file, manifest, Repo};
use hrl_shipper::restore::{restore, PointSel};
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_testkit::spool::{SpoolWriter, CHUNK};
use uuid::Uuid;

/// A new repository in `dir`, with `spool` shipped into it once.
async fn ship_into_new_repo(dir: &std::path::Path, spool: &std::path::Path) -> (Repo, ShipOptions) {
    let url = format!("file://{}", dir.join("repo").display());
    let key = dir.join("key");
    create_key_file(&key).unwrap();
    let repo = Repo::init(&url, &key, CHUNK, 256 << 10, 4).await.unwrap();
    let mut o = ShipOptions::new(spool);
    o.once = true;
    ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
    (repo, o)
}

fn prune_keeps_the_index_entries_of_packs_it_keeps_for_their_grace() {
    hrl_testkit::block_on(journaled_window_survives_prune());
}

async fn journaled_window_survives_prune() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Uuid::new_v4();
    // Point 1, then a window of 8 new chunks over several segments and no
    // tag yet: the shipper journals it (packs and index, no manifest).
    let mut w = SpoolWriter::new(&spool, disk, 16, 256 << 10, 3);
    w.full_copy();
    w.tag(1, false);
    for c in 0..8 {
        w.random(c);
    }
    w.close();
    let (repo, o) = ship_into_new_repo(dir.path(), &spool).await;
    let (_, map) = manifest::full_map(&repo, &disk, 1).await.unwrap();
    let used: HashSet<_> = map
        .values()
        .filter_map(|r| match r {
            manifest::ChunkRef::Stored(id) => Some(*id),
            manifest::ChunkRef::Zero => None,
        })
        .collect();
    let window: Vec<_> = repo
        .load_index()
        .await
        .unwrap()
        .into_keys()
        .filter(|id| !used.contains(id))
        .collect();
    assert!(
        !window.is_empty(),
        "the journaled window stored chunks no point uses yet"
    );

    let opts = PruneOptions {
        policy: Policy {
            keep_within: None,
            keep_hourly: Some(1),
            keep_daily: None,
            keep_weekly: None,
        },
        per_disk: Default::default(),
        dry_run: false,
        grace: Duration::ZERO,
        pack_grace: Duration::from_secs(86_400),
    };
    prune(&repo, &opts).await.unwrap();
    let after = repo.load_index().await.unwrap();
    for id in &window {
        assert!(
            after.contains_key(id),
            "prune dropped the index entry of a chunk in a pack it kept"
        );
    }

    // The agent's next tag closes the window: the shipper publishes it.
    let mut w = SpoolWriter::new(&spool, disk, 16, 256 << 10, 4);
    w.tag(2, false);
    w.close();
    let rep = ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
    assert_eq!(rep.points_published, 1);
    restore(&repo, &disk, PointSel::Seq(2), &dir.path().join("p2.img"), false)
        .await
        .unwrap();
}

fn prune_rewrites_only_the_index_objects_it_must_and_stops_on_an_unindexed_chunk() {
    hrl_testkit::block_on(rewrites_what_it_must());
}

fn policy(p: Policy) -> PruneOptions {
    PruneOptions {
        policy: p,
        per_disk: Default::default(),
        dry_run: false,
        grace: Duration::ZERO,
        pack_grace: Duration::ZERO,
    }
}

async fn index_keys(repo: &Repo) -> Vec<String> {
    repo.list("index").await.unwrap().into_iter().map(|(k, _)| k).collect()
}

/// Index objects that list no doomed pack and are large stay as they are;
/// small ones are merged; a kept point whose chunk is in no index stops
/// prune before it deletes a pack or an index object.
async fn rewrites_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Uuid::new_v4();
    // Point 2 overwrites every chunk of point 1: point 1's packs go.
    let img = hrl_testkit::Rng::new(7).bytes(16 * CHUNK as usize);
    let mut w = SpoolWriter::new(&spool, disk, 16, 256 << 10, 5);
    w.full_copy();
    w.tag(1, false);
    w.image(&img);
    w.tag(2, false);
    w.close();
    let (repo, _) = ship_into_new_repo(dir.path(), &spool).await;
    // An index file that holds every entry, point 1's packs' too.
    let file = DiskIndex::open(&dir.path().join("index.redb"), &repo.config.repo_id.to_string()).unwrap();
    file.refresh(&repo).await.unwrap();
    let held = file.chunks().unwrap();
    // A large index object of a pack the repository does not hold: nothing
    // in it to drop (an unlisted pack is never deleted).
    let fake = (
        [0xab; 32],
        (0..20_000u64)
            .map(|i| (*blake3::hash(&i.to_le_bytes()).as_bytes(), i * 100, 100))
            .collect(),
    );
    let big = repo.write_index(&[fake]).await.unwrap();
    let small: Vec<String> = index_keys(&repo).await.into_iter().filter(|k| *k != big).collect();
    assert!(
        small.len() >= 2,
        "the shipper wrote one index object per window: {small:?}"
    );

    let keep_newest = policy(Policy {
        keep_hourly: Some(1),
        ..Default::default()
    });
    let rep = prune(&repo, &keep_newest).await.unwrap();
    assert_eq!(rep.points_removed, 1);
    assert!(rep.packs_deleted > 0, "point 1's packs stayed: {rep:?}");
    let after = index_keys(&repo).await;
    assert!(
        after.contains(&big),
        "prune rewrote an index object with nothing to drop"
    );
    assert_eq!(
        after.len(),
        2,
        "the small index objects were not merged into one: {after:?}"
    );
    assert!(small.iter().all(|k| !after.contains(k)));
    let out = dir.path().join("p2.img");
    restore(&repo, &disk, PointSel::Seq(2), &out, false).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == img, "point 2 differs after prune");
    let c = hrl_shipper::restore::check(&repo, true).await.unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    // The file drops the entries of the deleted packs without starting
    // afresh, and then holds exactly what the repository indexes.
    let (_, rebuilt) = file.refresh(&repo).await.unwrap();
    let truth = repo.load_index().await.unwrap();
    assert!(!rebuilt);
    assert!(held > truth.len() as u64 - 20_000, "the file held point 1's chunks");
    assert_eq!(
        file.chunks().unwrap(),
        truth.len() as u64,
        "entries of deleted packs stayed"
    );
    for (id, loc) in &truth {
        assert_eq!(file.get(id).unwrap(), Some(*loc));
    }

    // Again: nothing to drop and one small object: nothing is rewritten.
    let rep = prune(&repo, &keep_newest).await.unwrap();
    assert_eq!((rep.index_objects_replaced, rep.packs_deleted), (0, 0), "{rep:?}");
    assert_eq!(index_keys(&repo).await, after);

    // The small object lost: point 2's chunks are in no index.
    let lost = after.iter().find(|k| **k != big).unwrap();
    repo.delete(lost).await.unwrap();
    let packs = repo.list("packs").await.unwrap();
    let err = prune(&repo, &keep_newest).await.unwrap_err().to_string();
    assert!(
        err.contains("in no index object") && err.contains(&manifest::point_key(&disk, 2)),
        "{err}"
    );
    assert_eq!(repo.list("packs").await.unwrap(), packs, "prune deleted packs");
    assert_eq!(index_keys(&repo).await, vec![big]);
    let c = hrl_shipper::restore::check(&repo, false).await.unwrap();
    assert_eq!(c.problems.len(), 16, "{:?}", c.problems);
    assert!(c.problems[0].what.contains("is in no index"), "{:?}", c.problems[0]);
}

hrl_testkit::tests!(Nothing: [
    prune_keeps_the_index_entries_of_packs_it_keeps_for_their_grace,
    prune_rewrites_only_the_index_objects_it_must_and_stops_on_an_unindexed_chunk
]);
