//! `scripts/bench.sh gateway`: simulated machines write spools at fixed
//! rates (a share of their chunks identical across machines) for a while;
//! run 1 forwards them through one process server (`serve` + one
//! `run --identity` per machine), run 2 ships the same data with one local
//! `run --repo` per machine (the direct path). Both into the repository URL
//! given (Azurite). Prints throughput, RPO (tag written -> point
//! published) p50/p99, the gateway's CPU and peak RSS, the dedup ratio,
//! the protected machines' CPU per GB, and the ratios between the runs.
//!
//! Usage: bench_gateway BIN_DIR WORK_DIR az://container/prefix
//! Environment: BENCH_SECS (120), BENCH_MACHINES (20), BENCH_RATE_MB (2),
//! BENCH_BIG_MB (25), BENCH_SHARED (0.3), BENCH_GATEWAYS (1: with more,
//! run 1 uses that many process servers on the one repository, each
//! machine enrolled on one of them in turn and forwarding to all; the
//! chunks they stored twice are counted), BENCH_DIRECT (1; 0 skips run 2),
//! BENCH_LOGS (a folder that keeps every shipper's, forwarder's and process
//! server's log; by default the forwarders' and servers' logs go with the
//! work folder and the local shippers' nowhere).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hrl_format::{Data, Identity, LogConfig, LogWriter, PointKind, Record, Tag};
use hrl_shipper::repo::{create_key_file, manifest, Repo};
use uuid::Uuid;

const CHUNK: usize = 65536;
/// Chunks per simulated disk (its initial copy is part of the load).
const DISK_CHUNKS: u64 = 256;

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chunk(&mut self) -> Vec<u8> {
        (0..CHUNK / 8).flat_map(|_| self.next().to_le_bytes()).collect()
    }
}

/// One simulated machine's load.
#[derive(Clone)]
struct Load {
    host: String,
    disk: Uuid,
    rate: f64,
    seed: u64,
}

/// Writes the machine's spool: an initial copy, then `rate` bytes/s of
/// chunks (a `shared` share from a pool common to every machine) with a
/// point every second, for `secs`. Returns the tag times by sequence.
fn write_spool(spool: &Path, l: &Load, secs: f64, shared: f64) -> Vec<(u64, u64)> {
    let mut cfg = LogConfig::new(spool, l.disk, CHUNK as u32, 512, DISK_CHUNKS * CHUNK as u64);
    cfg.identity = Some(Identity {
        host: l.host.clone(),
        name: "data".into(),
    });
    let mut w = LogWriter::open(cfg).expect("spool writer");
    let mut rng = Rng(l.seed | 1);
    let put = |w: &mut LogWriter, rng: &mut Rng, c: u64| {
        let data = if (rng.next() % 1000) as f64 / 1000.0 < shared {
            Rng(7 + rng.next() % 512).chunk()
        } else {
            rng.chunk()
        };
        w.append(&Record::Data(Data {
            offset: c * CHUNK as u64,
            flags: 0,
            data,
        }))
        .expect("append");
    };
    let mut tags = Vec::new();
    let tag = |w: &mut LogWriter, seq: u64, tags: &mut Vec<(u64, u64)>| {
        let t = hrl_format::now_ns();
        w.append(&Record::Tag(Tag {
            seq,
            kind: PointKind::Crash,
            aborted: false,
            time_ns: t,
            freeze_ns: 0,
            group: None,
        }))
        .expect("tag");
        tags.push((seq, t));
    };
    for c in 0..DISK_CHUNKS {
        put(&mut w, &mut rng, c);
    }
    tag(&mut w, 1, &mut tags);
    let t0 = Instant::now();
    let mut written = 0f64;
    let mut seq = 1;
    let mut next_tag = 1.0;
    while t0.elapsed().as_secs_f64() < secs {
        let el = t0.elapsed().as_secs_f64();
        if written < l.rate * el {
            let c = rng.next() % DISK_CHUNKS;
            put(&mut w, &mut rng, c);
            written += CHUNK as f64;
        } else {
            std::thread::sleep(Duration::from_millis(2));
        }
        if el >= next_tag {
            seq += 1;
            tag(&mut w, seq, &mut tags);
            next_tag += 1.0;
        }
    }
    w.close().expect("close");
    tags
}

/// utime + stime of a process, in seconds, and its peak RSS in bytes.
fn cpu_and_peak(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    (ticks / 100.0, hwm * 1024)
}

fn stop(mut c: Child) -> (f64, u64) {
    let r = cpu_and_peak(c.id());
    // SAFETY: a child we started; SIGTERM lets it finish its step.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let _ = c.wait();
    r
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

struct Run {
    secs: f64,
    rpo: Vec<f64>,
    /// Every point's RPO with its machine and sequence (the slowest are
    /// printed: where the tail comes from).
    points: Vec<(f64, String, u64)>,
    side_cpu: f64,
    gw: Option<(f64, u64)>,
    stored: u64,
    /// Chunks stored twice and chunks indexed (run 1 only).
    dup: Option<(u64, u64)>,
    /// The forwarders' requests and bytes sent (run 1 only).
    requests: Option<(u64, u64)>,
}

/// Runs the load with `start(i, spool)` starting what ships machine `i`.
fn run(
    rt: &tokio::runtime::Runtime,
    repo: &Repo,
    loads: &[Load],
    work: &Path,
    secs: f64,
    shared: f64,
    start: &dyn Fn(usize, &Path) -> Child,
) -> Run {
    let t0 = Instant::now();
    let mut shippers = Vec::new();
    let mut writers = Vec::new();
    for (i, l) in loads.iter().enumerate() {
        let spool = work.join(format!("spool-{}", l.host));
        std::fs::create_dir_all(&spool).unwrap();
        shippers.push(start(i, &spool));
        let l = l.clone();
        writers.push(std::thread::spawn(move || write_spool(&spool, &l, secs, shared)));
    }
    let tags: Vec<Vec<(u64, u64)>> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    for (l, t) in loads.iter().zip(&tags) {
        let last = t.last().map(|x| x.0).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(900);
        while !rt
            .block_on(manifest::list_points(repo, &l.disk))
            .unwrap_or_default()
            .contains(&last)
        {
            assert!(Instant::now() < deadline, "{}: point {last} never published", l.host);
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // Every point is published: what the machines' side spent shipping,
    // not what it spends idle while the bench reads the manifests.
    let elapsed = t0.elapsed().as_secs_f64();
    let side_cpu = shippers.iter().map(|c| cpu_and_peak(c.id()).0).sum();
    let mut rpo = Vec::new();
    let mut points = Vec::new();
    for (l, t) in loads.iter().zip(&tags) {
        for &(seq, tag_ns) in t {
            if let Ok((h, _)) = rt.block_on(manifest::load(repo, &l.disk, seq)) {
                let r = h.published_ns.saturating_sub(tag_ns) as f64 / 1e9;
                rpo.push(r);
                points.push((r, l.host.clone(), seq));
            }
        }
    }
    for c in shippers {
        stop(c);
    }
    let stored = rt.block_on(repo.list("packs")).unwrap().iter().map(|(_, n)| n).sum();
    Run {
        secs: elapsed,
        rpo,
        points,
        side_cpu,
        gw: None,
        stored,
        dup: None,
        requests: None,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, bin, work, url] = args.as_slice() else {
        eprintln!("usage: bench_gateway BIN_DIR WORK_DIR az://container/prefix");
        std::process::exit(2);
    };
    let (bin, work) = (PathBuf::from(bin), PathBuf::from(work));
    let secs: f64 = env_or("BENCH_SECS", 120.0);
    let n: usize = env_or("BENCH_MACHINES", 20);
    let rate: f64 = env_or("BENCH_RATE_MB", 2.0) * 1e6;
    let big: f64 = env_or("BENCH_BIG_MB", 25.0) * 1e6;
    let shared: f64 = env_or("BENCH_SHARED", 0.3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = work.join("repo.key");
    create_key_file(&key).unwrap();
    let mut loads: Vec<Load> = (0..n)
        .map(|i| Load {
            host: format!("m{i:02}"),
            disk: Uuid::new_v4(),
            rate,
            // Odd and distinct: the generator forces the low bit, so
            // 100 + i gave two machines the same data.
            seed: 101 + 2 * i as u64,
        })
        .collect();
    loads.push(Load {
        host: "big".into(),
        disk: Uuid::new_v4(),
        rate: big,
        seed: 97,
    });
    let offered = loads
        .iter()
        .map(|l| l.rate * secs + (DISK_CHUNKS as usize * CHUNK) as f64)
        .sum::<f64>();
    println!(
        "{} machines, {:.1} MB/s offered in all for {secs:.0} s ({:.0}% of chunks shared across machines)",
        loads.len(),
        loads.iter().map(|l| l.rate).sum::<f64>() / 1e6,
        shared * 100.0
    );

    let ctx = Ctx {
        rt,
        bin,
        work,
        key,
        url: url.clone(),
        loads,
        secs,
        shared,
        gateways: env_or("BENCH_GATEWAYS", 1),
    };
    let mut r1 = via_gateway(&ctx);
    // BENCH_DIRECT=0 skips run 2 (to try a change to the gateway path
    // quickly; the ratios need it).
    let mut r2 = (env_or("BENCH_DIRECT", 1) != 0).then(|| direct(&ctx));
    report(&mut r1, r2.as_mut(), offered);
}

/// What both runs share.
struct Ctx {
    rt: tokio::runtime::Runtime,
    bin: PathBuf,
    work: PathBuf,
    key: PathBuf,
    url: String,
    loads: Vec<Load>,
    secs: f64,
    shared: f64,
    gateways: usize,
}

impl Ctx {
    /// A new repository at `url` (16 MiB packs, as a gateway would use).
    fn repo(&self, url: &str) -> Repo {
        self.rt
            .block_on(Repo::init(url, &self.key, CHUNK as u32, 16 << 20, 16))
            .unwrap();
        self.rt.block_on(Repo::open(url, &self.key)).unwrap()
    }
}

/// A log file named `name`: in BENCH_LOGS when set (kept after the run, to
/// find a stall), else in `work` (removed with it).
fn log_file(work: &Path, name: &str) -> std::fs::File {
    let dir = std::env::var_os("BENCH_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.to_path_buf());
    std::fs::File::create(dir.join(name)).unwrap()
}

/// Starts process server `k` of run 1 (all share gateway 0's certificate);
/// returns it and its port.
fn start_gateway(c: &Ctx, gw_url: &str, k: usize) -> (Child, u16) {
    let state = c.work.join(format!("gw-state-{k}"));
    std::fs::create_dir_all(&state).unwrap();
    if k > 0 {
        for f in ["gateway.crt", "gateway.key"] {
            std::fs::copy(c.work.join("gw-state-0").join(f), state.join(f)).unwrap();
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Command::new(c.bin.join("hrl-shipper"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--repo",
            gw_url,
            "--key-file",
            c.key.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .stderr(log_file(&c.work, &format!("gateway-{k}.log")))
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    (gw, port)
}

/// Run 1: through BENCH_GATEWAYS process servers (one by default).
fn via_gateway(c: &Ctx) -> Run {
    let Ctx {
        rt, bin, work, loads, ..
    } = c;
    let gw_url = format!("{}-gw", c.url);
    let repo = c.repo(&gw_url);
    let state0 = work.join("gw-state-0");
    let fp = String::from_utf8(
        Command::new(bin.join("hrl-shipper"))
            .args(["serve", "--state-dir", state0.to_str().unwrap(), "--fingerprint"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let n = c.gateways.max(1);
    let gws: Vec<(Child, u16)> = (0..n).map(|k| start_gateway(c, &gw_url, k)).collect();
    let urls: Vec<String> = gws.iter().map(|(_, p)| format!("https://127.0.0.1:{p}")).collect();
    for (i, l) in loads.iter().enumerate() {
        let state = work.join(format!("gw-state-{}", i % n));
        let token =
            hrl_shipper::gateway::machines::Registry::update(&state, |r| r.add(&l.host, hrl_format::now_ns())).unwrap();
        rt.block_on(hrl_shipper::forward::enroll(
            &urls[i % n],
            fp.trim(),
            &token,
            &work.join(format!("{}.id", l.host)),
        ))
        .unwrap();
    }
    let fwd = |i: usize, spool: &Path| {
        let order: Vec<&str> = (0..n).map(|k| urls[(i + k) % n].as_str()).collect();
        let mut cmd = Command::new(bin.join("hrl-shipper"));
        cmd.args([
            "run",
            "--identity",
            work.join(format!("{}.id", loads[i].host)).to_str().unwrap(),
            "--spool",
            spool.to_str().unwrap(),
            "--metrics-listen",
            "",
            "--json",
        ]);
        if n > 1 {
            cmd.args(["--gateway", &order.join(",")]);
        }
        let log = log_file(work, &format!("forward-{}.log", loads[i].host));
        let report = std::fs::File::create(work.join(format!("forward-{}.json", loads[i].host))).unwrap();
        cmd.stdout(report).stderr(log).spawn().unwrap()
    };
    let gw_work = work.join("via-gateway");
    let mut r1 = run(rt, &repo, loads, &gw_work, c.secs, c.shared, &fwd);
    r1.requests = Some(loads.iter().fold((0, 0), |(q, b), l| {
        let f = work.join(format!("forward-{}.json", l.host));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(f).unwrap_or_default()).unwrap_or_default();
        (
            q + v["requests"].as_u64().unwrap_or(0),
            b + v["bytes_sent"].as_u64().unwrap_or(0),
        )
    }));
    let stopped: Vec<(f64, u64)> = gws.into_iter().map(|(g, _)| stop(g)).collect();
    r1.gw = Some((
        stopped.iter().map(|s| s.0).sum(),
        stopped.iter().map(|s| s.1).max().unwrap_or(0),
    ));
    let checked = rt.block_on(hrl_shipper::restore::check::check(&repo, false)).unwrap();
    let indexed = rt.block_on(repo.load_index()).unwrap().len() as u64;
    r1.dup = Some((checked.duplicate_chunks, indexed + checked.duplicate_chunks));
    r1
}

/// Run 2: the same loads, one local shipper per machine (the direct path).
fn direct(c: &Ctx) -> Run {
    let Ctx {
        rt,
        bin,
        work,
        key,
        loads,
        ..
    } = c;
    let direct_url = format!("{}-direct", c.url);
    let repo2 = c.repo(&direct_url);
    let ship = |i: usize, spool: &Path| {
        let log = match std::env::var_os("BENCH_LOGS") {
            Some(_) => Stdio::from(log_file(work, &format!("direct-{}.log", loads[i].host))),
            None => Stdio::null(),
        };
        Command::new(bin.join("hrl-shipper"))
            .args([
                "run",
                "--repo",
                &direct_url,
                "--key-file",
                key.to_str().unwrap(),
                "--spool",
                spool.to_str().unwrap(),
                "--metrics-listen",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    run(rt, &repo2, loads, &work.join("direct"), c.secs, c.shared, &ship)
}

fn report(r1: &mut Run, mut r2: Option<&mut Run>, offered: f64) {
    let gb = offered / 1e9;
    let (gcpu, grss) = r1.gw.unwrap_or((0.0, 0));
    let mut runs = vec![("via gateway", &mut *r1)];
    if let Some(r2) = r2.as_deref_mut() {
        runs.push(("direct run --repo", r2));
    }
    for (name, r) in runs {
        let (p50, p99) = (pct(&mut r.rpo, 0.5), pct(&mut r.rpo, 0.99));
        println!(
            "{name:<18} {:>7.1} MB/s ingest   RPO p50 {p50:>5.2} s p99 {p99:>6.2} s ({} points)   machines' side CPU {:>6.1} s = {:.2} s/GB   stored/offered {:.2}",
            offered / r.secs / 1e6,
            r.rpo.len(),
            r.side_cpu,
            r.side_cpu / gb,
            r.stored as f64 / offered
        );
        r.points.sort_by(|a, b| b.0.total_cmp(&a.0));
        let slow: Vec<String> = r
            .points
            .iter()
            .take(8)
            .map(|(s, h, q)| format!("{h}#{q} {s:.1}s"))
            .collect();
        let big = r.points.iter().filter(|p| p.1 == "big").count();
        let big_slow = r
            .points
            .iter()
            .take(r.points.len() / 100)
            .filter(|p| p.1 == "big")
            .count();
        println!(
            "  slowest: {} (the big machine holds {big_slow} of the slowest 1%, {big} points in all)",
            slow.join(", ")
        );
    }
    println!(
        "gateway: CPU {gcpu:.1} s ({:.2} s/GB), peak RSS {} MiB (the largest of them)",
        gcpu / gb,
        grss >> 20
    );
    if let Some((q, b)) = r1.requests {
        println!(
            "forwarders: {q} requests, {:.0} KiB sent per request",
            b as f64 / 1024.0 / q.max(1) as f64
        );
    }
    if let Some((dup, all)) = r1.dup {
        println!(
            "chunks stored twice via the gateways: {dup} of {all} index entries ({:.2}%)",
            dup as f64 * 100.0 / all.max(1) as f64
        );
    }
    if let Some(r2) = r2 {
        println!(
            "ratios: gateway/direct throughput {:.2}; machines' CPU per GB gateway/direct {:.2}",
            r2.secs / r1.secs,
            r1.side_cpu / r2.side_cpu.max(1e-9)
        );
    }
}
