//! `check` and `prune` on a large synthetic repository (`scripts/bench.sh
//! index`): N index entries in index objects of 65 536, one empty object
//! per pack of 256 entries, and D disks whose one point each references
//! the chunks of every even pack (N/2 references). Each phase runs in its
//! own process so its peak RSS is its own; no chunk data is written.
//!
//! bench_prune make DIR N D   the repository in DIR
//! bench_prune check DIR N    check (no data read): no problem, N/2 references
//! bench_prune prune DIR N    prune keeping every point, no pack grace:
//!                            the odd packs and their entries go
//! bench_prune index DIR N    bring the chunk index file DIR/index.redb up
//!                            to the repository (a first load, or after
//!                            the prune: it drops the deleted packs)

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hrl_shipper::index::DiskIndex;
use hrl_shipper::prune::{prune, Policy, PruneOptions};
use hrl_shipper::repo::manifest::{self, ChunkRef, PointHeader};
use hrl_shipper::repo::pack::PackEntry;
use hrl_shipper::repo::{create_key_file, Repo};
use uuid::Uuid;

const PER_PACK: u64 = 256;
const PER_OBJECT: u64 = 65_536;
const CHUNK: u32 = 65_536;

fn id(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn pack(p: u64) -> [u8; 32] {
    id(p + (1 << 60))
}

#[path = "common/rss.rs"]
mod rss;
use rss::peak_rss_mib;

fn arg(n: usize) -> String {
    std::env::args().nth(n).unwrap_or_else(|| {
        eprintln!("usage: bench_prune make DIR N DISKS | check DIR N | prune DIR N");
        std::process::exit(2)
    })
}

async fn open(dir: &Path) -> Repo {
    let url = format!("file://{}", dir.join("repo").display());
    Repo::open(&url, &dir.join("key")).await.expect("open the repository")
}

async fn make(dir: &Path, n: u64, disks: u64) {
    std::fs::create_dir_all(dir).expect("create the bench directory");
    let key = dir.join("key");
    create_key_file(&key).expect("key file");
    let url = format!("file://{}", dir.join("repo").display());
    let repo = Repo::init(&url, &key, CHUNK, 16 << 20, 1 << 20).await.expect("init");
    let t = Instant::now();
    for p in 0..n.div_ceil(PER_PACK) {
        repo.put(&hrl_shipper::repo::pack_key(&pack(p)), Vec::new(), false)
            .await
            .expect("pack");
    }
    for o in 0..n.div_ceil(PER_OBJECT) {
        let mut packs: BTreeMap<[u8; 32], Vec<PackEntry>> = BTreeMap::new();
        for i in o * PER_OBJECT..((o + 1) * PER_OBJECT).min(n) {
            let e = (id(i), (i % PER_PACK) * CHUNK as u64, CHUNK);
            packs.entry(pack(i / PER_PACK)).or_default().push(e);
        }
        repo.write_index(&packs.into_iter().collect::<Vec<_>>())
            .await
            .expect("index");
    }
    // Disk d's point references the even packs p with (p / 2) % D == d.
    let mut maps: Vec<BTreeMap<u64, ChunkRef>> = vec![BTreeMap::new(); disks as usize];
    for p in (0..n.div_ceil(PER_PACK)).step_by(2) {
        let m = &mut maps[((p / 2) % disks) as usize];
        for i in p * PER_PACK..((p + 1) * PER_PACK).min(n) {
            let next = m.len() as u64;
            m.insert(next, ChunkRef::Stored(id(i)));
        }
    }
    let now = hrl_format::now_ns();
    for (d, map) in maps.iter().enumerate() {
        let h = PointHeader {
            disk: Uuid::from_u64_pair(1, d as u64),
            seq: 1,
            kind: hrl_format::PointKind::Crash,
            time_ns: now,
            freeze_ns: 0,
            device_size: map.len() as u64 * CHUNK as u64,
            chunk_size: CHUNK,
            checkpoint: true,
            base: None,
            entries: map.len() as u64,
            new_bytes: 0,
            data_bytes: 0,
            published_ns: now,
            group: None,
            host: None,
            name: None,
            label: None,
            lease: None,
        };
        let body = manifest::encode(&repo, &h, map).expect("encode");
        repo.put(&manifest::point_key(&h.disk, 1), body, false)
            .await
            .expect("manifest");
    }
    println!(
        "make: {n} index entries in {} objects, {} packs, {disks} disks: {:.1} s",
        n.div_ceil(PER_OBJECT),
        n.div_ceil(PER_PACK),
        t.elapsed().as_secs_f64()
    );
}

fn main() {
    let mode = arg(1);
    let dir = std::path::PathBuf::from(arg(2));
    let n = arg(3).parse::<u64>().unwrap_or(0);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let packs = n.div_ceil(PER_PACK);
    let referenced: u64 = (0..packs)
        .step_by(2)
        .map(|p| ((p + 1) * PER_PACK).min(n) - p * PER_PACK)
        .sum();
    let t = Instant::now();
    match mode.as_str() {
        "make" => rt.block_on(make(&dir, n, arg(4).parse().unwrap_or(1000))),
        "check" => {
            let rep = rt.block_on(async { hrl_shipper::restore::check(&open(&dir).await, false).await });
            let rep = rep.expect("check");
            assert!(
                rep.problems.is_empty(),
                "check found problems: {:?}",
                &rep.problems[..1]
            );
            assert_eq!(rep.referenced_chunks, referenced, "check counted the wrong references");
            println!(
                "check: {} points, {} references, {} packs: {:.1} s, peak RSS {:.0} MiB",
                rep.points,
                rep.referenced_chunks,
                rep.packs,
                t.elapsed().as_secs_f64(),
                peak_rss_mib()
            );
        }
        "prune" => {
            let opts = PruneOptions {
                policy: Policy {
                    keep_within: Some(Duration::from_secs(86_400)),
                    ..Default::default()
                },
                per_disk: Default::default(),
                dry_run: false,
                grace: Duration::ZERO,
                pack_grace: Duration::ZERO,
            };
            let rep = rt
                .block_on(async { prune(&open(&dir).await, &opts).await })
                .expect("prune");
            assert_eq!(rep.packs_deleted, packs / 2, "prune deleted the wrong packs");
            assert_eq!(rep.points_removed, 0);
            println!(
                "prune: {} packs deleted, {} kept, {} index objects replaced: {:.1} s, peak RSS {:.0} MiB",
                rep.packs_deleted,
                rep.packs_kept,
                rep.index_objects_replaced,
                t.elapsed().as_secs_f64(),
                peak_rss_mib()
            );
        }
        "index" => {
            let (read, rebuilt, chunks) = rt.block_on(async {
                let repo = open(&dir).await;
                let idx = DiskIndex::open(&dir.join("index.redb"), &repo.config.repo_id.to_string()).expect("open");
                let (read, rebuilt) = idx.refresh(&repo).await.expect("refresh");
                (read, rebuilt, idx.chunks().expect("count"))
            });
            println!(
                "index file: {read} index objects read, rebuilt {rebuilt}, {chunks} chunks: {:.1} s, peak RSS {:.0} MiB",
                t.elapsed().as_secs_f64(),
                peak_rss_mib()
            );
        }
        _ => {
            eprintln!("unknown mode {mode}");
            std::process::exit(2);
        }
    }
}
