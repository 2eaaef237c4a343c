//! Through a process server, as a fleet runs it: two real agents on loop
//! devices with ext4, each with a forwarder process (`hrl-shipper run
//! --identity`), ten more machines simulated by test code, one gateway
//! process (`hrl-shipper serve`) with Azurite behind it. The gateway and
//! the forwarders are killed with SIGKILL and restarted while the
//! workload runs. Every point of the real agents restores byte-identical
//! to the device inside its freeze; content shared by the simulated
//! machines is stored once; `check --read-data` is clean.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl_shipper::forward::{enroll, forward, ForwardOptions};
use hrl_shipper::repo::{create_key_file, manifest, Repo};
use hrl_shipper::restore::{restore, PointSel};
use hrl_testkit::agent::*;
use hrl_testkit::spool::{SpoolWriter, CHUNK};
use hrl_testkit::sys::*;
use hrl_testkit::{Need, Rng};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

fn shipper_bin() -> PathBuf {
    hrl_testkit::bin("hrl-shipper")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn out(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// An `hrl-shipper` process (the gateway or a forwarder), restartable;
/// killed when dropped. With `port`, `start` waits until it listens.
struct Proc {
    args: Vec<String>,
    port: Option<u16>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(shipper_bin())
                .args(&self.args)
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let t = Instant::now();
        while let Some(port) = self.port {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "{:?} did not listen", self.args);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A real machine: a loop device with ext4, an agent whose while-frozen
/// hook records the device's hash, and its forwarder.
/// Fields drop in order: the forwarder and the agent first (the agent
/// holds the mount open to freeze it), then the mount, then the loop
/// device, so a failed test leaves nothing mounted or attached.
struct Machine {
    fwd: Proc,
    agent: Option<Agent>,
    mount: Mount,
    _dev: LoopDev,
    shas: PathBuf,
}

fn machine(work: &Path, name: &str, gw_url: &str, fingerprint: &str, state: &Path) -> Machine {
    machine_with(work, name, gw_url, fingerprint, state, &["--point-interval", "1500ms"])
}

/// [`machine`] whose agent gets `args` (after its device, spool, name,
/// max-freeze and while-frozen hook).
fn machine_with(work: &Path, name: &str, gw_url: &str, fingerprint: &str, state: &Path, args: &[&str]) -> Machine {
    let dev = LoopDev::new(96 * MIB, false);
    mkfs("ext4", &dev.path);
    let mount = Mount::new(&dev.path);
    let spool = work.join(format!("spool-{name}"));
    let shas = work.join(format!("shas-{name}"));
    std::fs::create_dir_all(&shas).unwrap();
    let hook = sha_hook(&shas);
    let mut all = vec!["--name", name, "--max-freeze", "10s", "--while-frozen", &hook];
    all.extend_from_slice(args);
    let agent = Agent::run(&dev.path, &spool, &all);
    let identity = work.join(format!("{name}.id"));
    let token = work.join(format!("{name}.token"));
    let t = out(Command::new(shipper_bin()).args(["machines", "--state-dir", state.to_str().unwrap(), "add", name]));
    std::fs::write(&token, t).unwrap();
    out(Command::new(shipper_bin()).args([
        "enroll",
        "--gateway",
        gw_url,
        "--fingerprint",
        fingerprint,
        "--token-file",
        token.to_str().unwrap(),
        "--identity",
        identity.to_str().unwrap(),
    ]));
    let mut fwd = Proc {
        args: [
            "run",
            "--identity",
            identity.to_str().unwrap(),
            "--spool",
            spool.to_str().unwrap(),
        ]
        .map(str::to_string)
        .to_vec(),
        port: None,
        log: work.join(format!("forward-{name}.log")),
        child: None,
    };
    fwd.start();
    Machine {
        _dev: dev,
        mount,
        agent: Some(agent),
        shas,
        fwd,
    }
}

/// `n` simulated machines: 32 chunks each, the first 12 the same content
/// everywhere, 5 points; forwarded in process.
fn simulated(rt: &tokio::runtime::Runtime, work: &Path, gw: (&str, &str, &Path), n: u64) -> Vec<Uuid> {
    let (url, fingerprint, state) = gw;
    let mut disks = Vec::new();
    for i in 0..n {
        let host = format!("sim{i:02}");
        let spool = work.join(format!("spool-{host}"));
        std::fs::create_dir_all(&spool).unwrap();
        let disk = Uuid::new_v4();
        let mut w = SpoolWriter::named(&spool, disk, 32, 100 + i * 2 + 1, &host, "data");
        for c in 0..32 {
            if c < 12 {
                w.data(c, Rng::new(5000 + c).bytes(CHUNK as usize));
            } else {
                w.random(c);
            }
        }
        for p in 1..=5 {
            let c = 12 + w.rng.below(20);
            w.random(c);
            w.tag(p, false);
        }
        w.close();
        let token =
            hrl_shipper::gateway::machines::Registry::update(state, |r| r.add(&host, hrl_format::now_ns())).unwrap();
        let id = rt
            .block_on(enroll(url, fingerprint, &token, &work.join(format!("{host}.id"))))
            .unwrap();
        let mut o = ForwardOptions::new(&spool);
        o.once = true;
        rt.block_on(forward(&id, &o, &AtomicBool::new(false))).unwrap();
        disks.push(disk);
    }
    disks
}

/// An `hrl-shipper serve` process on a free loopback port for `repo`;
/// `extra` adds flags. Returns it with its URL and fingerprint.
fn gateway(w: &Path, repo: &str, key: &Path, state: &Path, extra: &[&str]) -> (Proc, String, String) {
    let fingerprint =
        out(Command::new(shipper_bin()).args(["serve", "--state-dir", state.to_str().unwrap(), "--fingerprint"]));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        &listen,
        "--repo",
        repo,
        "--key-file",
        key.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]
    .map(str::to_string)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut gw = Proc {
        args,
        port: Some(port),
        log: w.join("gateway.log"),
        child: None,
    };
    gw.start();
    (gw, format!("https://127.0.0.1:{port}"), fingerprint)
}

fn wait_published(rt: &tokio::runtime::Runtime, repo: &Repo, disk: &Uuid, n: usize, within: Duration) -> Vec<u64> {
    let t = Instant::now();
    loop {
        let pts = rt.block_on(manifest::list_points(repo, disk)).unwrap();
        if pts.len() >= n {
            return pts;
        }
        assert!(
            t.elapsed() < within,
            "disk {disk}: {} of {n} points published",
            pts.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn a_fleet_forwards_through_a_gateway_killed_and_restarted_and_every_point_is_exact() {
    hrl_testkit::require(
        "a_fleet_forwards_through_a_gateway_killed_and_restarted_and_every_point_is_exact",
        Need::RootAzurite,
    );
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let w = work.path();
    let key = w.join("repo.key");
    create_key_file(&key).unwrap();
    let url = format!("az://hrl-gw-{}/repo", &Uuid::new_v4().simple().to_string()[..16]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Repo::init(&url, &key, CHUNK, 4 << 20, 8)).unwrap();
    let state = w.join("gw-state");
    let (mut gw, gw_url, fingerprint) = gateway(w, &url, &key, &state, &[]);
    let mut real = vec![
        machine(w, "alpha", &gw_url, &fingerprint, &state),
        machine(w, "beta", &gw_url, &fingerprint, &state),
    ];
    let sims = simulated(&rt, w, (&gw_url, &fingerprint, &state), 10);
    // The workload on both filesystems while the gateway and forwarders die.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = real
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (dir, stop) = (m.mount.path().to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(40 + i as u64);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n_bytes = 4096 + rng.below(200_000) as usize;
                    let b = rng.bytes(n_bytes);
                    std::fs::write(dir.join(format!("f{}", n % 200)), &b).unwrap();
                    n += 1;
                    std::thread::sleep(Duration::from_millis(15));
                }
            })
        })
        .collect();
    let mut kills = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(16) {
        std::thread::sleep(Duration::from_millis(2500));
        match kills % 3 {
            0 => {
                gw.kill9();
                gw.start();
            }
            k => {
                let f = &mut real[k - 1].fwd;
                f.kill9();
                f.start();
            }
        }
        kills += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for h in writers {
        h.join().unwrap();
    }
    for m in real.iter_mut() {
        assert_eq!(m.agent.as_mut().unwrap().stop(), 0);
    }
    // Everything the agents wrote reaches the repository.
    let repo = rt.block_on(Repo::open(&url, &key)).unwrap();
    let mut checked = 0;
    for (name, m) in ["alpha", "beta"].iter().zip(&real) {
        let hashes: Vec<(u64, String)> = std::fs::read_dir(&m.shas)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let p: u64 = e.file_name().to_str()?.parse().ok()?;
                Some((p, std::fs::read_to_string(e.path()).ok()?.trim().to_string()))
            })
            .collect();
        let disk = rt
            .block_on(hrl_shipper::repo::disks::resolve(
                &repo,
                Some(&format!("{}/{name}", hrl_common::host_name())),
            ))
            .unwrap();
        let last = hashes.iter().map(|(p, _)| *p).max().unwrap();
        let pts = wait_published(&rt, &repo, &disk, 1, Duration::from_secs(120));
        let t = Instant::now();
        while !rt
            .block_on(manifest::list_points(&repo, &disk))
            .unwrap()
            .contains(&last)
        {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "{name}: point {last} never published ({pts:?})"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let pts = rt.block_on(manifest::list_points(&repo, &disk)).unwrap();
        let img = w.join("restore.img");
        for (p, want) in &hashes {
            assert!(
                pts.contains(p),
                "{name}: point {p} (hashed in its freeze) was not published: {pts:?}"
            );
            let _ = std::fs::remove_file(&img);
            rt.block_on(restore(&repo, &disk, PointSel::Seq(*p), &img, false))
                .unwrap();
            assert_eq!(
                &sha256(&img),
                want,
                "{name} point {p}: restore differs from the frozen device"
            );
            checked += 1;
        }
        let _ = std::fs::remove_file(&img);
    }
    for d in &sims {
        wait_published(&rt, &repo, d, 5, Duration::from_secs(60));
    }
    let check = Command::new(shipper_bin())
        .args([
            "check",
            "--repo",
            &url,
            "--key-file",
            key.to_str().unwrap(),
            "--read-data",
        ])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check --read-data: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let machines =
        out(Command::new(shipper_bin()).args(["machines", "--state-dir", state.to_str().unwrap(), "list", "--json"]));
    assert_eq!(machines.lines().count(), 12, "{machines}");
    eprintln!("{kills} kill -9 of gateway or forwarders; {checked} points of 2 real disks restored equal to their frozen devices; 10 simulated machines published; check --read-data clean");
    for m in real.iter_mut() {
        m.fwd.kill9();
    }
    gw.kill9();
}

#[path = "gateway/policy.rs"]
mod policy;
use policy::a_policy_set_on_the_gateway_drives_the_agents_points_and_retention;

#[path = "gateway/scaleout.rs"]
mod scaleout;
use scaleout::three_gateways_killed_in_turn_publish_every_point_of_twelve_machines_once;

hrl_testkit::tests!(
    RootAzurite: [a_fleet_forwards_through_a_gateway_killed_and_restarted_and_every_point_is_exact],
    Root: [a_policy_set_on_the_gateway_drives_the_agents_points_and_retention],
    Azurite: [three_gateways_killed_in_turn_publish_every_point_of_twelve_machines_once],
);
