//! The repository on any `ObjectStore`: object_store's in-memory store
//! behind a wrapper that fails writes on demand. A store that refuses every
//! manifest write publishes no point and loses nothing: once it works
//! again, every point is published once and restores identical to a replay
//! of the spool.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hrl_shipper::repo::{create_key_file, manifest, Repo, Store};
use hrl_shipper::restore::{check, restore, PointSel};
use hrl_shipper::ship::{ship, ShipOptions};
use hrl_shipper::ShipError;
use hrl_testkit::spool::{SpoolWriter, CHUNK};
use hrl_testkit::store::FailingStore;
use object_store::memory::InMemory;
use uuid::Uuid;

fn a_store_that_refuses_manifests_publishes_nothing_and_loses_nothing() {
    hrl_testkit::block_on(refused_then_published());
}

async fn refused_then_published() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::create_dir_all(&archive).unwrap();
    let disk = Uuid::new_v4();
    let seqs = SpoolWriter::new(&spool, disk, 32, 1 << 20, 5).simple(6, 4);
    for s in hrl_format::list_segments(&spool, None).unwrap() {
        std::fs::copy(&s.path, archive.join(s.path.file_name().unwrap())).unwrap();
    }
    let key = dir.path().join("key");
    create_key_file(&key).unwrap();
    let failing = FailingStore::new(Arc::new(InMemory::new()));
    let store = Store::new(Arc::new(failing.clone()), "memory://test");
    let repo = Repo::init_in(store.clone(), &key, CHUNK, 1 << 20, 4).await.unwrap();

    failing.fail_writes_under(Some("points/"));
    let mut o = ShipOptions::new(&spool);
    o.once = true;
    let err = ship(&repo, &o, &AtomicBool::new(false)).await.unwrap_err();
    assert!(matches!(err, ShipError::Store { .. }), "{err}");
    assert_eq!(err.exit_code(), 3, "an endpoint failure exits 3");
    assert!(err.to_string().contains("points/"), "the error names the object: {err}");
    assert!(manifest::list_points(&repo, &disk).await.unwrap().is_empty());
    let (went, refused) = failing.writes();
    assert!(
        went > 0 && refused > 0,
        "packs went through ({went}), manifests were refused ({refused})"
    );

    failing.fail_writes_under(None);
    let rep = ship(&repo, &o, &AtomicBool::new(false)).await.unwrap();
    assert_eq!(rep.points_published, seqs.len() as u64);
    let repo = Repo::open_in(store, &key).await.unwrap();
    assert_eq!(manifest::list_points(&repo, &disk).await.unwrap(), seqs);
    for &p in &seqs {
        let got = dir.path().join(format!("got-{p}"));
        let want = dir.path().join(format!("want-{p}"));
        restore(&repo, &disk, PointSel::Seq(p), &got, false).await.unwrap();
        hrl_format::replay(&archive, None, Some(p), &want).unwrap();
        assert!(
            std::fs::read(&got).unwrap() == std::fs::read(&want).unwrap(),
            "point {p} differs from its replay"
        );
    }
    let c = check(&repo, true).await.unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
}

hrl_testkit::tests!(Nothing: [a_store_that_refuses_manifests_publishes_nothing_and_loses_nothing]);
