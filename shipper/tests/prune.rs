//! Prune keeps what a running shipper still needs: packs younger than
//! --pack-grace that no point uses yet (a journaled window's) stay, and so
//! do their index entries, so the shipper publishes its next point.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use hrl_shipper::prune::{prune, Policy, PruneOptions};
use hrl_shipper::repo::{create_key_file, manifest, Repo};
use hrl_shipper::restore::{restore, PointSel};
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_testkit::spool::{SpoolWriter, CHUNK};
use uuid::Uuid;

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
    let url = format!("file://{}", dir.path().join("repo").display());
    let key = dir.path().join("key");
    create_key_file(&key).unwrap();
    let repo = Repo::init(&url, &key, CHUNK, 256 << 10, 4).await.unwrap();
    let mut o = ShipOptions::new(&spool);
    o.once = true;
    ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
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

hrl_testkit::tests!(Nothing: [prune_keeps_the_index_entries_of_packs_it_keeps_for_their_grace]);
