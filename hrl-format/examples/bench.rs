//! Writer and reader throughput of the `.hrl` format against plain
//! write(2)/read(2) of the same bytes in the same directory, measured in one
//! run (`scripts/bench.sh hrl` runs it on tmpfs).
//!
//! Usage: bench DIR [MiB]

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use hrl_format::*;
use uuid::Uuid;

const CHUNK: usize = 65536;

fn best_of<T>(n: usize, mut f: impl FnMut() -> (f64, T)) -> (f64, T) {
    let mut best: Option<(f64, T)> = None;
    for _ in 0..n {
        let r = f();
        if best.as_ref().is_none_or(|b| r.0 < b.0) {
            best = Some(r);
        }
    }
    best.expect("n > 0")
}

fn clean(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let _ = std::fs::remove_file(e.path());
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let root = std::path::PathBuf::from(args.next().expect("usage: bench DIR [MiB]"));
    let mib: usize = args.next().map_or(1024, |s| s.parse().expect("MiB"));
    let dir = root.join(format!("hrl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let n = mib * (1 << 20) / CHUNK;
    let payload: Vec<u8> = (0..CHUNK).map(|i| (i * 131 % 251) as u8).collect();
    let bytes = (n * CHUNK) as f64;
    let disk = Uuid::new_v4();
    let mut cfg = LogConfig::new(&dir, disk, CHUNK as u32, 512, 1 << 40);
    cfg.sync_interval = std::time::Duration::from_secs(3600);
    cfg.rotate_age = std::time::Duration::from_secs(3600);

    // Plain write(2) of the same payload bytes in 1 MiB calls (the writer's
    // own buffer size, so the baseline is not handicapped by small writes).
    let big: Vec<u8> = payload.repeat(16);
    let (t_plain_w, _) = best_of(3, || {
        clean(&dir);
        let t = Instant::now();
        let mut f = File::create(dir.join("plain")).expect("create");
        for _ in 0..n / 16 {
            f.write_all(&big).expect("write");
        }
        f.write_all(&payload.repeat(n % 16)).expect("write");
        drop(f);
        (t.elapsed().as_secs_f64(), ())
    });
    // The hrl writer: framing, crc, buffering, rotation every 64 MiB.
    let (t_hrl_w, _) = best_of(3, || {
        clean(&dir);
        let t = Instant::now();
        let mut w = LogWriter::open(cfg.clone()).expect("open");
        for i in 0..n {
            w.append(&Record::Data(Data {
                offset: (i * CHUNK) as u64,
                flags: 0,
                data: payload.clone(),
            }))
            .expect("append");
        }
        w.close().expect("close");
        (t.elapsed().as_secs_f64(), ())
    });
    // Reader over the files the last writer run left.
    let segs = list_segments(&dir, Some(disk)).expect("list");
    let (t_hrl_r, got) = best_of(3, || {
        let t = Instant::now();
        let mut got = 0u64;
        for s in &segs {
            read_segment(&s.path, RecoveryMode::AbsoluteConsistency, |_, _, r| {
                if let Record::Data(d) = r {
                    got += d.data.len() as u64;
                }
                Ok(())
            })
            .expect("read");
        }
        (t.elapsed().as_secs_f64(), got)
    });
    assert_eq!(got as f64, bytes);
    let (t_plain_r, _) = best_of(3, || {
        let t = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        for s in &segs {
            let mut f = File::open(&s.path).expect("open");
            loop {
                let k = f.read(&mut buf).expect("read");
                if k == 0 {
                    break;
                }
                total += k;
            }
        }
        (t.elapsed().as_secs_f64(), total)
    });
    let mb = |t: f64| bytes / t / 1e6;
    println!("data records: {n} x 64 KiB = {mib} MiB, dir {}", root.display());
    println!(
        "  write  hrl {:8.0} MB/s   plain write(2) {:8.0} MB/s   ratio {:.2}",
        mb(t_hrl_w),
        mb(t_plain_w),
        t_plain_w / t_hrl_w
    );
    println!(
        "  read   hrl {:8.0} MB/s   plain read(2)  {:8.0} MB/s   ratio {:.2}",
        mb(t_hrl_r),
        mb(t_plain_r),
        t_plain_r / t_hrl_r
    );

    extent_records(&dir, &cfg, disk);
    clean(&dir);
    let _ = std::fs::remove_dir(&dir);
}

/// Small Extent records: write and read rates.
fn extent_records(dir: &Path, cfg: &LogConfig, disk: Uuid) {
    clean(dir);
    let m = 2_000_000usize;
    let t = Instant::now();
    let mut w = LogWriter::open(cfg.clone()).expect("open");
    for i in 0..m {
        w.append(&Record::Extent(Extent {
            op: ExtentOp::Write,
            failed: false,
            offset: (i as u64 * 4096) % (1 << 36),
            len: 4096,
            time_ns: i as u64,
        }))
        .expect("append");
    }
    w.close().expect("close");
    let tw = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut count = 0;
    for s in list_segments(dir, Some(disk)).expect("list") {
        read_segment(&s.path, RecoveryMode::AbsoluteConsistency, |_, _, _| {
            count += 1;
            Ok(())
        })
        .expect("read");
    }
    let tr = t.elapsed().as_secs_f64();
    println!(
        "extent records: {m}: write {:.2} M records/s, read {:.2} M records/s ({count} incl. seals)",
        m as f64 / tw / 1e6,
        m as f64 / tr / 1e6
    );
}
