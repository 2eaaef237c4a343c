//! Failback through the process server (a machine that holds no key): the
//! machine's old device, a copy of an earlier point with writes made after
//! it, is brought to the newest point with only the differing chunks
//! written; a second run writes nothing; another machine is refused and
//! changes nothing; a malformed comparison is refused.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

use hrl_testkit::spool::CHUNK;
use hrl_testkit::Rng;
use reqwest::Method;
use serde_json::Value;

use super::Gw;

const CHUNKS: u64 = 300;

fn cli(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hrl-shipper"))
        .args(args)
        .env_remove("HRL_KEY_FILE")
        .output()
        .unwrap()
}

fn failback(idf: &Path, img: &Path) -> Output {
    cli(&[
        "failback",
        "--identity",
        idf.to_str().unwrap(),
        "--disk",
        "data",
        "--point",
        "6",
        "--to",
        img.to_str().unwrap(),
        "--json",
    ])
}

/// Chunks in which two images differ.
fn differing(a: &Path, b: &Path) -> u64 {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(a.len(), b.len());
    a.chunks(CHUNK as usize)
        .zip(b.chunks(CHUNK as usize))
        .filter(|(x, y)| x != y)
        .count() as u64
}

pub fn a_machine_fails_back_through_the_gateway_writing_only_what_differs() {
    let gw = Gw::start("0");
    let work = tempfile::tempdir().unwrap();
    let (disk, spool) = super::machine_spool(work.path(), "web01", CHUNKS, 0, 6, 7);
    let arch = work.path().join("archive");
    super::archive(&spool, &arch);
    let (id, idf) = gw.enroll("web01");
    gw.forward(&id, &spool).unwrap();
    let repo = gw.repo();
    gw.wait_points(&repo, &disk, 6);
    // The old device: point 2, then writes made after the failover, in
    // both comparison batches (256 chunks each) and at the very end.
    let img = work.path().join("old.img");
    hrl_format::replay(&arch, Some(disk), Some(2), &img).unwrap();
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    for c in [0u64, 1, 150, 257, CHUNKS - 1] {
        f.write_all_at(&Rng::new(c).bytes(CHUNK as usize), c * CHUNK as u64)
            .unwrap();
    }
    drop(f);
    let want = work.path().join("want");
    hrl_format::replay(&arch, Some(disk), Some(6), &want).unwrap();
    let differ = differing(&img, &want);
    assert!(differ >= 5, "{differ}");

    let o = failback(&idf, &img);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["compared"], CHUNKS, "{r}");
    assert_eq!(
        r["stored_chunks"].as_u64().unwrap() + r["zero_chunks"].as_u64().unwrap(),
        differ,
        "{r}"
    );
    assert_eq!(r["skipped"], CHUNKS - differ, "{r}");
    assert_eq!(differing(&img, &want), 0, "the failed-back image is point 6");

    let o = failback(&idf, &img);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["skipped"], CHUNKS, "a second failback writes nothing: {r}");

    // Another machine: refused, and the image is not touched.
    let before = std::fs::read(&img).unwrap();
    let (other, other_idf) = gw.enroll("web02");
    let o = failback(&other_idf, &img);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&img).unwrap() == before);
    let c = gw.client(Some((&other.machine, &other.secret)));
    let path = format!("/v1/disks/{disk}/points/6/differ?from=0");
    let (st, v) = gw.call(&c, Method::POST, &path, Some(vec![0; 64]));
    assert_eq!(st, 403, "{v}");
    // Malformed comparisons from the owner: refused with a reason.
    let c = gw.client(Some((&id.machine, &id.secret)));
    for body in [vec![0u8; 33], vec![0u8; 32 * 257]] {
        let (st, v) = gw.call(&c, Method::POST, &path, Some(body));
        assert_eq!(st, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains("hashes of 32 bytes"), "{v}");
    }
    let (st, v) = gw.call(
        &c,
        Method::POST,
        &format!("/v1/disks/{disk}/points/60/differ?from=0"),
        Some(vec![0; 32]),
    );
    assert_eq!(st, 404, "{v}");
    // Failback needs an existing target.
    let o = failback(&idf, &work.path().join("missing.img"));
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("existing device or image"));
    eprintln!(
        "failback through the gateway: {differ} of {CHUNKS} chunks differed and were written; a second run wrote none"
    );
}
