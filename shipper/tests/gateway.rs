//! The process server, in process on loopback with a local repository:
//! enrolled machines forward spools written by test code over TLS; every
//! point restores byte-identical to `hrl replay` of the original spool;
//! content shared between machines is stored once; and every peer that
//! misbehaves is refused, logged and changes nothing: a wrong fingerprint,
//! no or a wrong or a revoked credential, another machine's disk, damaged
//! bytes, a replayed range, a delete, a machine over its quota.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl_shipper::forward::client::GatewayClient;
use hrl_shipper::forward::{enroll, forward, ForwardOptions, Identity};
use hrl_shipper::gateway::machines::Registry;
use hrl_shipper::gateway::{serve, GatewayFile};
use hrl_shipper::repo::{create_key_file, manifest, Repo};
use hrl_shipper::restore::{restore, PointSel};
use hrl_testkit::spool::{SpoolWriter, CHUNK};
use hrl_testkit::Rng;
use reqwest::Method;
use uuid::Uuid;

/// A process server on a free loopback port with its own runtime.
struct Gw {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    url: String,
    fingerprint: String,
    repo_url: String,
    key: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Gw {
    fn start(quota: &str) -> Gw {
        Self::start_with(quota, "")
    }

    /// [`Gw::start`] with more lines of gateway.toml.
    fn start_with(quota: &str, extra: &str) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let key = dir.path().join("repo.key");
        create_key_file(&key).unwrap();
        let repo_url = format!("file://{}", dir.path().join("repo").display());
        rt.block_on(Repo::init(&repo_url, &key, CHUNK, 1 << 20, 4)).unwrap();
        let f: GatewayFile = toml::from_str(&format!(
            "listen = \"127.0.0.1:0\"\nrepo = {repo_url:?}\nkey_file = {:?}\nstate_dir = {:?}\nmachine_quota = {quota:?}\n{extra}",
            key.display().to_string(),
            dir.path().join("state").display().to_string()
        ))
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (serving, _task) = rt.block_on(serve(f.resolve().unwrap(), stop.clone())).unwrap();
        Gw {
            url: format!("https://127.0.0.1:{}", serving.addr.port()),
            fingerprint: serving.fingerprint,
            dir,
            rt,
            repo_url,
            key,
            stop,
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn token(&self, name: &str) -> String {
        Registry::update(&self.state(), |r| r.add(name, hrl_format::now_ns())).unwrap()
    }

    fn enroll(&self, name: &str) -> (Identity, PathBuf) {
        let path = self.dir.path().join(format!("{name}.id"));
        let id = self
            .rt
            .block_on(enroll(&self.url, &self.fingerprint, &self.token(name), &path))
            .unwrap();
        (id, path)
    }

    fn forward(&self, id: &Identity, spool: &Path) -> hrl_shipper::Result<hrl_shipper::forward::ForwardReport> {
        let mut o = ForwardOptions::new(spool);
        o.once = true;
        self.rt.block_on(forward(id, &o, &AtomicBool::new(false)))
    }

    fn repo(&self) -> Repo {
        self.rt.block_on(Repo::open(&self.repo_url, &self.key)).unwrap()
    }

    /// Waits until `disk` has `n` published points.
    fn wait_points(&self, repo: &Repo, disk: &Uuid, n: usize) {
        let t = Instant::now();
        loop {
            let got = self.rt.block_on(manifest::list_points(repo, disk)).unwrap().len();
            if got >= n {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "disk {disk}: {got} of {n} points published"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn client(&self, auth: Option<(&str, &str)>) -> GatewayClient {
        GatewayClient::new(&self.url, &self.fingerprint, auth).unwrap()
    }

    fn call(&self, c: &GatewayClient, m: Method, path: &str, body: Option<Vec<u8>>) -> (u16, serde_json::Value) {
        match self.rt.block_on(c.call(m, path, body.map(Into::into))).unwrap() {
            Ok(v) => (200, v),
            Err(a) => (a.status, a.body),
        }
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A machine's spool: `chunks` chunks, the first `shared` of them the same
/// content on every machine, then `points` points of random changes.
fn machine_spool(dir: &Path, host: &str, chunks: u64, shared: u64, points: u64, seed: u64) -> (Uuid, PathBuf) {
    let spool = dir.join(format!("spool-{host}"));
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Uuid::new_v4();
    let mut w = SpoolWriter::named(&spool, disk, chunks, seed, host, "data");
    for c in 0..chunks {
        if c < shared {
            w.data(c, Rng::new(1000 + c).bytes(CHUNK as usize));
        } else {
            w.random(c);
        }
    }
    w.tag(1, false);
    for p in 2..=points {
        for _ in 0..3 {
            let c = shared + w.rng.below(chunks - shared);
            w.random(c);
        }
        w.tag(p, false);
    }
    w.close();
    (disk, spool)
}

/// A copy of a spool's segments (forwarding deletes them).
fn archive(spool: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for s in hrl_format::list_segments(spool, None).unwrap() {
        std::fs::copy(&s.path, to.join(s.path.file_name().unwrap())).unwrap();
    }
}

fn machines_forward_through_the_gateway_and_every_point_restores() {
    let gw = Gw::start("0");
    let work = tempfile::tempdir().unwrap();
    let mut machines = Vec::new();
    for (i, host) in ["web01", "web02", "db01"].iter().enumerate() {
        let (disk, spool) = machine_spool(work.path(), host, 24, 8, 6, 10 + i as u64 * 10);
        let arch = work.path().join(format!("archive-{host}"));
        archive(&spool, &arch);
        let (id, _) = gw.enroll(host);
        let rep = gw.forward(&id, &spool).unwrap();
        assert!(rep.bytes_sent > 0 && rep.segments_completed > 0, "{host}: {rep:?}");
        assert!(
            hrl_format::list_segments(&spool, None).unwrap().is_empty(),
            "{host}: the gateway holds every sealed segment, so the spool is empty"
        );
        machines.push((host.to_string(), disk, arch));
    }
    let repo = gw.repo();
    for (host, disk, arch) in &machines {
        gw.wait_points(&repo, disk, 6);
        for p in 1..=6u64 {
            let want = work.path().join("want");
            let got = work.path().join("got");
            hrl_format::replay(arch, Some(*disk), Some(p), &want).unwrap();
            let r = gw
                .rt
                .block_on(restore(&repo, disk, PointSel::Seq(p), &got, false))
                .unwrap();
            assert_eq!(r.disk_label, format!("{host}/data"));
            assert!(
                std::fs::read(&want).unwrap() == std::fs::read(&got).unwrap(),
                "{host} point {p}"
            );
            std::fs::remove_file(&want).unwrap();
            std::fs::remove_file(&got).unwrap();
        }
    }
    // 3 machines x 24 random chunks, 8 of them the same on every machine,
    // plus 15 changed chunks each: stored once, the shared ones are 8, not 24.
    let packs: u64 = gw.rt.block_on(repo.list("packs")).unwrap().iter().map(|(_, n)| n).sum();
    let unique = (8 + 3 * (16 + 15)) * CHUNK as u64;
    assert!(packs >= unique, "{packs} < {unique}: chunks lost?");
    assert!(
        packs < unique + 8 * CHUNK as u64,
        "{packs}: shared content stored more than once"
    );
    let list = Registry::load(&gw.state()).unwrap();
    assert_eq!(list.machines["db01"].disks, vec![machines[2].1]);
    // A machine restores and lists its own points through the gateway,
    // holding no key; another machine's disk is refused.
    let (host, disk, arch) = &machines[0];
    let idf = gw.dir.path().join(format!("{host}.id"));
    let via = work.path().join("via.img");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hrl-shipper"))
            .args(args)
            .env_remove("HRL_KEY_FILE")
            .output()
            .unwrap()
    };
    // The machine's own restore of point P through the gateway.
    let restore_via = |point: &str, to: &Path| {
        cli(&[
            "restore",
            "--identity",
            idf.to_str().unwrap(),
            "--disk",
            "data",
            "--point",
            point,
            "--to",
            to.to_str().unwrap(),
        ])
    };
    let o = restore_via("4", &via);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = work.path().join("want4");
    hrl_format::replay(arch, Some(*disk), Some(4), &want).unwrap();
    assert!(
        std::fs::read(&want).unwrap() == std::fs::read(&via).unwrap(),
        "restore through the gateway"
    );
    let o = cli(&["points", "--identity", idf.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 6);
    let other = Identity::load(&gw.dir.path().join("web02.id")).unwrap();
    let c = gw.client(Some((&other.machine, &other.secret)));
    for path in [
        format!("/v1/disks/{disk}/points"),
        format!("/v1/disks/{disk}/points/4/chunks?from=0&count=4"),
    ] {
        let (st, v) = gw.call(&c, Method::GET, &path, None);
        assert_eq!(st, 403, "{path}: {v}");
    }
    let other_id = gw.dir.path().join("web02.id");
    let o = cli(&[
        "restore",
        "--identity",
        other_id.to_str().unwrap(),
        "--disk",
        "web01/data",
        "--to",
        work.path().join("no.img").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!work.path().join("no.img").exists());
    // The gateway looks a point's chunks up in its index file, not in
    // every index object: with every index object damaged after it was
    // read, a restore reading them fails and one through the gateway
    // still restores point 5.
    let index_dir = gw.dir.path().join("repo").join("index");
    for f in std::fs::read_dir(&index_dir).unwrap().flatten() {
        std::fs::write(f.path(), b"damaged").unwrap();
    }
    let direct = gw.rt.block_on(restore(
        &repo,
        disk,
        PointSel::Seq(5),
        &work.path().join("d5.img"),
        false,
    ));
    assert!(direct.is_err(), "a restore read damaged index objects");
    let via5 = work.path().join("via5.img");
    let o = restore_via("5", &via5);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want5 = work.path().join("want5");
    hrl_format::replay(arch, Some(*disk), Some(5), &want5).unwrap();
    assert!(
        std::fs::read(&want5).unwrap() == std::fs::read(&via5).unwrap(),
        "restore through the gateway from its index file"
    );
    eprintln!(
        "3 machines forwarded 18 points through the gateway; {packs} bytes of packs for {unique} of unique chunks"
    );
}

fn every_peer_that_misbehaves_is_refused_and_changes_nothing() {
    let gw = Gw::start("2MiB");
    let work = tempfile::tempdir().unwrap();
    // A wrong fingerprint: enroll refuses to send the token at all.
    let token = gw.token("web01");
    let bad_fp = format!("SHA256:{}", "ab".repeat(32));
    let out = work.path().join("web01.id");
    let e = gw
        .rt
        .block_on(enroll(&gw.url, &bad_fp, &token, &out))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not the pinned"), "{e}");
    assert!(!out.exists());
    // The token was never sent, so it still works.
    let id = gw.rt.block_on(enroll(&gw.url, &gw.fingerprint, &token, &out)).unwrap();
    let again = gw
        .rt
        .block_on(enroll(&gw.url, &gw.fingerprint, &token, &work.path().join("x.id")));
    assert!(again
        .unwrap_err()
        .to_string()
        .contains("token unknown, used or expired"));
    let (other, _) = gw.enroll("web02");
    // The identity holds no repository key and no storage credential.
    let text = std::fs::read_to_string(&out).unwrap();
    let repo_key = std::fs::read_to_string(&gw.key).unwrap();
    assert!(!text.contains(repo_key.trim()) && !text.contains("AZURE"), "{text}");
    let (disk, spool) = machine_spool(work.path(), "web01", 8, 0, 2, 5);
    let seg = hrl_format::list_segments(&spool, None).unwrap()[0].path.clone();
    let bytes = std::fs::read(&seg).unwrap();
    let put = format!("/v1/disks/{disk}/segments/1?offset=0");
    // No credential, a wrong secret, a wrong machine name.
    for auth in [None, Some(("web01", "0000")), Some(("nobody", other.secret.as_str()))] {
        let (st, _) = gw.call(&gw.client(auth), Method::PUT, &put, Some(bytes.clone()));
        assert_eq!(st, 401, "{auth:?}");
    }
    let me = gw.client(Some((&id.machine, &id.secret)));
    let web02 = gw.client(Some((&other.machine, &other.secret)));
    // Damaged bytes: one flipped bit, refused, nothing kept.
    let mut bad = bytes[..bytes.len() / 2].to_vec();
    let n = bad.len();
    bad[n - 100] ^= 0x10;
    let (st, v) = gw.call(&me, Method::PUT, &put, Some(bad));
    assert_eq!(st, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("web01/"),
        "names machine and segment: {v}"
    );
    let (_, p) = gw.call(&me, Method::GET, &format!("/v1/disks/{disk}"), None);
    assert!(
        p["open"].is_null() || p["open"][1] == 0,
        "nothing of the damaged range kept: {p}"
    );
    // A good first range, then the same range replayed: 409, stored once.
    let half = {
        let mut s = hrl_format::SegmentStream::new("x");
        s.take_whole(&bytes[..bytes.len() / 2]).unwrap()
    };
    let (st, v) = gw.call(&me, Method::PUT, &put, Some(bytes[..half].to_vec()));
    assert_eq!(st, 200, "{v}");
    let (st, v) = gw.call(&me, Method::PUT, &put, Some(bytes[..half].to_vec()));
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["progress"]["open"][1], half as u64);
    // Another machine's disk: neither its progress nor an append.
    let (st, _) = gw.call(&web02, Method::GET, &format!("/v1/disks/{disk}"), None);
    assert_eq!(st, 403);
    let (st, _) = gw.call(
        &web02,
        Method::PUT,
        &format!("/v1/disks/{disk}/segments/1?offset={half}"),
        Some(bytes[half..].to_vec()),
    );
    assert_eq!(st, 403);
    // Another machine cannot make the gateway drop this disk's copy; this
    // machine's own `restart` at a segment the gateway does not expect
    // past changes nothing.
    let restart = format!("/v1/disks/{disk}/restart?segment=9");
    let (st, _) = gw.call(&web02, Method::POST, &restart, None);
    assert_eq!(st, 403);
    let (st, v) = gw.call(&me, Method::POST, &format!("/v1/disks/{disk}/restart?segment=1"), None);
    assert_eq!((st, &v["open"][1]), (200, &serde_json::json!(half as u64)), "{v}");
    // Nothing can be deleted.
    let (st, _) = gw.call(&me, Method::DELETE, &format!("/v1/disks/{disk}"), None);
    assert_eq!(st, 405);
    // The forwarder continues from where the gateway stands.
    gw.forward(&id, &spool).unwrap();
    let repo = gw.repo();
    gw.wait_points(&repo, &disk, 2);
    // Over its quota (2 MiB), a machine's bytes wait: 507, spool kept.
    let (big, big_spool) = machine_spool(work.path(), "web02", 64, 0, 1, 6);
    let rep = gw.forward(&other, &big_spool);
    let left = hrl_format::list_segments(&big_spool, None).unwrap().len();
    assert!(rep.is_ok() && left > 0, "{rep:?}: {left} segments left");
    let (_, p) = gw.call(&web02, Method::GET, &format!("/v1/disks/{big}"), None);
    assert!(p["complete_through"].is_null(), "{p}");
    // A bit flipped in a chunk in a machine's spool: the forwarder sends
    // it (payload checksums are the gateway's to check), the gateway
    // refuses it naming where, and the forwarder stops with that reason,
    // keeping the segment.
    let (db, _) = gw.enroll("db01");
    let (_, bad_spool) = machine_spool(work.path(), "db01", 8, 0, 1, 7);
    let seg = hrl_format::list_segments(&bad_spool, None).unwrap()[0].path.clone();
    let mut r = hrl_format::SegmentReader::open(&seg, hrl_format::RecoveryMode::AbsoluteConsistency).unwrap();
    let at = loop {
        match r.next_record().unwrap() {
            Some((pos, hrl_format::Record::Data(d))) if !d.data.is_empty() => break pos,
            Some(_) => {}
            None => panic!("no Data record"),
        }
    };
    let mut b = std::fs::read(&seg).unwrap();
    b[at as usize + hrl_format::record::DATA_HEAD + 100] ^= 0x10;
    std::fs::write(&seg, &b).unwrap();
    let e = gw.forward(&db, &bad_spool).unwrap_err().to_string();
    assert!(
        e.contains("refused the spool's bytes") && e.contains("checksum mismatch") && e.contains("db01/"),
        "{e}"
    );
    assert!(seg.exists(), "the damaged segment is kept");
    // Revoked: the next request is refused, and the forwarder says so.
    Registry::update(&gw.state(), |r| r.revoke("web01", hrl_format::now_ns())).unwrap();
    let mut w = SpoolWriter::named(&spool, disk, 8, 9, "web01", "data");
    w.random(1);
    w.tag(3, false);
    w.close();
    let e = gw.forward(&id, &spool).unwrap_err().to_string();
    assert!(e.contains("revoked"), "{e}");
}

/// Forwards through a TCP proxy that resets and stalls connections: every
/// point arrives once and restores exactly, and the proxy saw only TLS
/// (a marker written into the disk never crosses the wire readable).
fn resets_and_stalls_on_the_way_lose_nothing_and_the_wire_is_only_tls() {
    use hrl_testkit::tcp_proxy::{TcpFaults, TcpProxy};
    let gw = Gw::start("0");
    let work = tempfile::tempdir().unwrap();
    let upstream: std::net::SocketAddr = gw.url.trim_start_matches("https://").parse().unwrap();
    let plan = TcpFaults {
        reset: 0.2,
        stall: 0.1,
        stall_for: Duration::from_secs(2),
        first: 4,
        seed: 3,
    };
    let proxy = gw.rt.block_on(TcpProxy::start(upstream, plan)).unwrap();
    let (mut id, _) = gw.enroll("web01");
    id.gateway = format!("https://{}", proxy.addr);
    let spool = work.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Uuid::new_v4();
    let marker: Vec<u8> = b"PLAINTEXT-MARKER-"
        .iter()
        .copied()
        .cycle()
        .take(CHUNK as usize)
        .collect();
    let mut w = SpoolWriter::named(&spool, disk, 96, 3, "web01", "data");
    w.full_copy();
    w.data(0, marker.clone());
    w.tag(1, false);
    for p in 2..=12 {
        for _ in 0..6 {
            let c = 1 + w.rng.below(95);
            w.random(c);
        }
        w.tag(p, false);
    }
    w.close();
    let arch = work.path().join("archive");
    archive(&spool, &arch);
    // The forwarder as a daemon, stopped once the spool is empty (every
    // segment held whole by the gateway).
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (spool, stop) = (spool.clone(), stop.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            while !hrl_format::list_segments(&spool, None).unwrap().is_empty() && t.elapsed() < Duration::from_secs(120)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let o = ForwardOptions::new(&spool);
    let rep = gw.rt.block_on(forward(&id, &o, &stop)).unwrap();
    watcher.join().unwrap();
    assert!(
        hrl_format::list_segments(&spool, None).unwrap().is_empty(),
        "not everything arrived: {rep:?}"
    );
    let repo = gw.repo();
    gw.wait_points(&repo, &disk, 12);
    for p in 1..=12u64 {
        let (want, got) = (work.path().join("want"), work.path().join("got"));
        hrl_format::replay(&arch, Some(disk), Some(p), &want).unwrap();
        gw.rt
            .block_on(restore(&repo, &disk, PointSel::Seq(p), &got, false))
            .unwrap();
        assert!(
            std::fs::read(&want).unwrap() == std::fs::read(&got).unwrap(),
            "point {p}"
        );
        std::fs::remove_file(&want).unwrap();
        std::fs::remove_file(&got).unwrap();
    }
    let wire = proxy.client_bytes();
    let faults = proxy.faults.load(Ordering::Relaxed);
    assert!(
        faults > 0 && rep.endpoint_errors > 0,
        "no fault was injected: {rep:?}, {faults} faults in {} connections",
        proxy.connections.load(Ordering::Relaxed)
    );
    assert!(
        wire.len() as u64 > 96 * CHUNK as u64,
        "the proxy saw {} bytes",
        wire.len()
    );
    assert!(
        !wire.windows(16).any(|w| w == &marker[..16]),
        "disk content crossed the wire in clear"
    );
    eprintln!(
        "{} connections, {faults} reset or stalled; forwarder: {rep:?}; 12 points exact; {} bytes on the wire, none readable",
        proxy.connections.load(Ordering::Relaxed),
        wire.len()
    );
}

#[path = "gateway/failback.rs"]
mod failback;
use failback::a_machine_fails_back_through_the_gateway_writing_only_what_differs;

#[path = "gateway/fleet.rs"]
mod fleet;
use fleet::{
    a_forwarder_reports_where_the_gateway_stands_and_when_it_is_unreachable,
    the_fleet_view_shows_every_machine_and_its_alerts_to_the_admin_only,
};

hrl_testkit::tests!(Nothing: [
    resets_and_stalls_on_the_way_lose_nothing_and_the_wire_is_only_tls,
    machines_forward_through_the_gateway_and_every_point_restores,
    every_peer_that_misbehaves_is_refused_and_changes_nothing,
    a_forwarder_reports_where_the_gateway_stands_and_when_it_is_unreachable,
    a_machine_fails_back_through_the_gateway_writing_only_what_differs,
], Browser: [
    the_fleet_view_shows_every_machine_and_its_alerts_to_the_admin_only,
]);
