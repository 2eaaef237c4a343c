//! The chunk index benchmark (`scripts/bench.sh index`): N synthetic
//! entries (random chunk ids, as keyed hashes are) in the local index file
//! against the in-memory map it replaces. Each phase runs in its own
//! process so its peak RSS is its own.
//!
//! bench_index build FILE N      fill a new file (sorted bulk load)
//! bench_index open FILE N       open it, then random lookups (hits, misses)
//! bench_index memory N          the map: fill, then the same lookups
//! bench_index add FILE N        N more entries in index-object-sized batches

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use hrl_shipper::index::DiskIndex;
use hrl_shipper::repo::Location;

const LOOKUPS: u64 = 1_000_000;

/// Deterministic random ids: entry `i` of the build has id `id(i)`.
fn id(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn loc(i: u64) -> Location {
    Location {
        pack: id(i / 256 + (1 << 60)),
        offset: (i % 256) * 65_600,
        len: 65_600,
    }
}

#[path = "common/rss.rs"]
mod rss;
use rss::peak_rss_mib;

fn arg(n: usize) -> String {
    std::env::args().nth(n).unwrap_or_else(|| {
        eprintln!("usage: bench_index build|open|add FILE N | memory N");
        std::process::exit(2)
    })
}

/// Lookups of ids from the build (hits) and of ids never stored (misses).
fn lookups(n: u64, mut contains: impl FnMut(&[[u8; 32]]) -> Vec<bool>) -> (f64, f64) {
    let batch = 64u64;
    let mut rates = [0.0; 2];
    for (k, rate) in rates.iter_mut().enumerate() {
        let t = Instant::now();
        let mut found = 0u64;
        let mut i = 0;
        while i < LOOKUPS {
            let ids: Vec<[u8; 32]> = (i..i + batch)
                .map(|j| {
                    let r = id(j ^ 0x5151_5151);
                    let pick = u64::from_le_bytes(r[..8].try_into().unwrap_or_default()) % n;
                    if k == 0 {
                        id(pick)
                    } else {
                        id(n + pick + (1 << 50))
                    }
                })
                .collect();
            found += contains(&ids).iter().filter(|&&b| b).count() as u64;
            i += batch;
        }
        let expect = if k == 0 { LOOKUPS } else { 0 };
        assert_eq!(found, expect, "lookups found the wrong entries");
        *rate = LOOKUPS as f64 / t.elapsed().as_secs_f64();
    }
    (rates[0], rates[1])
}

fn main() {
    let mode = arg(1);
    match mode.as_str() {
        "build" => {
            let (file, n) = (arg(2), arg(3).parse::<u64>().unwrap_or(0));
            let t = Instant::now();
            let idx = DiskIndex::open(Path::new(&file), "bench").expect("open");
            idx.bulk_load((0..n).map(|i| (id(i), loc(i)))).expect("bulk load");
            let secs = t.elapsed().as_secs_f64();
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            println!(
                "build {n} entries: {secs:.1} s ({:.0} entries/s), file {:.0} MiB ({:.0} B/entry), peak RSS {:.0} MiB",
                n as f64 / secs,
                size as f64 / (1 << 20) as f64,
                size as f64 / n.max(1) as f64,
                peak_rss_mib()
            );
        }
        "open" => {
            let (file, n) = (arg(2), arg(3).parse::<u64>().unwrap_or(0));
            let t = Instant::now();
            let idx = DiskIndex::open(Path::new(&file), "bench").expect("open");
            let chunks = idx.chunks().expect("count");
            let open = t.elapsed().as_secs_f64();
            assert_eq!(chunks, n, "the file does not hold the build's entries");
            let (hit, miss) = lookups(n, |ids| idx.contains_each(ids).expect("lookup"));
            println!(
                "file: open {open:.2} s, lookups {hit:.0}/s (hits) {miss:.0}/s (misses), peak RSS {:.0} MiB",
                peak_rss_mib()
            );
        }
        "add" => {
            let (file, n) = (arg(2), arg(3).parse::<u64>().unwrap_or(0));
            let idx = DiskIndex::open(Path::new(&file), "bench").expect("open");
            let base = idx.chunks().expect("count") + (1 << 40);
            let t = Instant::now();
            // An index object per published point: about 1000 entries.
            let per = 1000u64;
            for b in 0..n.div_ceil(per) {
                let v: Vec<_> = (b * per..((b + 1) * per).min(n))
                    .map(|i| (id(base + i), loc(i)))
                    .collect();
                idx.insert(Some(&format!("index/bench-{b}")), &v).expect("insert");
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "file: {n} entries added in index objects of {per}: {:.0} entries/s, peak RSS {:.0} MiB",
                n as f64 / secs,
                peak_rss_mib()
            );
        }
        "memory" => {
            let n = arg(2).parse::<u64>().unwrap_or(0);
            let t = Instant::now();
            let mut m: HashMap<[u8; 32], Location> = HashMap::new();
            for i in 0..n {
                m.insert(id(i), loc(i));
            }
            let fill = t.elapsed().as_secs_f64();
            let (hit, miss) = lookups(n, |ids| ids.iter().map(|i| m.contains_key(i)).collect());
            println!(
                "memory map: fill {fill:.1} s, lookups {hit:.0}/s (hits) {miss:.0}/s (misses), peak RSS {:.0} MiB",
                peak_rss_mib()
            );
        }
        _ => {
            eprintln!("unknown mode {mode}");
            std::process::exit(2);
        }
    }
}
