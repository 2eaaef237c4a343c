//! The chunk index file (`hrl_shipper::index`): shippers with their own
//! files learn each other's chunks by reading only index objects they have
//! not seen, a file follows a prune that merged the index objects without
//! starting afresh, and chunks two shippers stored at once are counted by
//! `check`.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use hrl_shipper::index::DiskIndex;
use hrl_shipper::prune::{prune, Policy, PruneOptions};
use hrl_shipper::restore::check;
use hrl_shipper::ship::{ship, ShipOptions, ShipReport};
use hrl_testkit::spool::SpoolWriter;
use hrl_testkit::Rng;
use uuid::Uuid;

use super::{env, Backend};

/// A spool of one disk whose chunks are `content`, as one point.
fn spool_of(dir: &Path, content: &[Vec<u8>], seq: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut w = SpoolWriter::new(dir, Uuid::new_v4(), content.len() as u64, 1 << 20, 1);
    for (c, d) in content.iter().enumerate() {
        w.data(c as u64, d.clone());
    }
    w.tag(seq, false);
    w.close();
}

async fn ship_once(repo: &hrl_shipper::repo::Repo, spool: &Path) -> ShipReport {
    let mut o = ShipOptions::new(spool);
    o.once = true;
    ship(repo, &o, &AtomicBool::new(false)).await.unwrap()
}

pub async fn index_files_learn_each_others_chunks_and_follow_a_prune(backend: Backend) {
    let (e, repo) = env(backend).await;
    let mut rng = Rng::new(41);
    let shared: Vec<Vec<u8>> = (0..12).map(|_| rng.bytes(65536)).collect();
    // A stores the shared content; B, with its own (new) index file, finds
    // it all in the repository.
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    spool_of(&a, &shared, 1);
    let ra = ship_once(&repo, &a).await;
    assert_eq!(ra.chunks_new, 12);
    spool_of(&b, &shared, 1);
    let rb = ship_once(&repo, &b).await;
    assert_eq!((rb.chunks_new, rb.chunks_deduplicated), (0, 12));
    let file_b = b.join(hrl_shipper::ship::options::INDEX_FILE);
    assert!(file_b.exists(), "run --repo keeps its index in a file in the spool");

    // Incremental: A stores more; B's file reads only that index object.
    let more: Vec<Vec<u8>> = (0..5).map(|_| rng.bytes(65536)).collect();
    let a2 = e.root.join("a2");
    spool_of(&a2, &more, 1);
    assert_eq!(ship_once(&repo, &a2).await.chunks_new, 5);
    {
        let idx = DiskIndex::open(&file_b, &repo.config.repo_id.to_string()).unwrap();
        let (read, rebuilt) = idx.refresh(&repo).await.unwrap();
        assert_eq!(
            (read, rebuilt),
            (1, false),
            "only the index object not seen yet is read"
        );
        assert_eq!(idx.chunks().unwrap(), 17);
    }

    // A prune that replaces the index objects: the file starts afresh and
    // holds exactly what the repository indexes.
    let pr = prune(
        &repo,
        &PruneOptions {
            policy: Policy {
                keep_within: Some(std::time::Duration::from_secs(3600)),
                ..Default::default()
            },
            per_disk: Default::default(),
            dry_run: false,
            grace: std::time::Duration::from_millis(100),
            pack_grace: std::time::Duration::ZERO,
        },
    )
    .await
    .unwrap();
    {
        let idx = DiskIndex::open(&file_b, &repo.config.repo_id.to_string()).unwrap();
        let (read, rebuilt) = idx.refresh(&repo).await.unwrap();
        assert!(
            !rebuilt && read >= 1 && pr.index_objects_replaced >= 2,
            "the file started afresh after a prune that merged objects (read {read}, prune: {pr:?})"
        );
        let truth = repo.load_index().await.unwrap();
        assert_eq!(idx.chunks().unwrap(), truth.len() as u64);
        for (id, loc) in &truth {
            assert_eq!(idx.get(id).unwrap(), Some(*loc));
        }
        assert_eq!(idx.seen().unwrap().len(), repo.list("index").await.unwrap().len());
    }

    // Two shippers storing the same new content at once: neither has seen
    // the other's index object, so some chunks are stored twice; check
    // counts exactly those and finds nothing wrong.
    let fresh: Vec<Vec<u8>> = (0..8).map(|_| rng.bytes(65536)).collect();
    let (c, d) = (e.root.join("c"), e.root.join("d"));
    spool_of(&c, &fresh, 1);
    spool_of(&d, &fresh, 1);
    let (rc, rd) = tokio::join!(ship_once(&repo, &c), ship_once(&repo, &d));
    let stored_twice = rc.chunks_new + rd.chunks_new - 8;
    let report = check(&repo, true).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.duplicate_chunks, stored_twice);
    eprintln!(
        "index files: 1 unseen index object read, followed a prune; racing shippers stored {stored_twice} of 8 chunks twice, check counted {}",
        report.duplicate_chunks
    );
}
