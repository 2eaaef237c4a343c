//! `hrl-shipper`: command line.
//!
//! Exit codes: 0 success; 1 failure (a damaged repository, a failed restore,
//! problems found by check); 2 usage or configuration (bad arguments, no
//! repository, wrong key, unreadable key file).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use hrl_shipper::restore::PointSel;
use hrl_shipper::{repo::Repo, ShipError};
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "hrl-shipper",
    version,
    about = "Ship .hrl spools into an encrypted, deduplicated repository; restore"
)]
struct Cli {
    /// Log lines as text (default) or JSON, one object per line.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct RepoArgs {
    /// Repository URL: file:///path (or an absolute path).
    #[arg(long)]
    repo: String,
    /// Key file (64 hex characters, mode 0600).
    #[arg(long, env = "HRL_KEY_FILE")]
    key_file: PathBuf,
}

/// Which disk and point.
#[derive(clap::Args, Clone)]
struct PointArgs {
    #[arg(long)]
    disk: Uuid,
    /// `latest` or a point sequence.
    #[arg(long, default_value = "latest")]
    point: PointSel,
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML config (/etc/hrl/shipper.toml); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Repository URL: file:///path or az://container/prefix.
    #[arg(long)]
    repo: Option<String>,
    #[arg(long, env = "HRL_KEY_FILE")]
    key_file: Option<PathBuf>,
    #[arg(long)]
    spool: Option<PathBuf>,
    #[arg(long)]
    once: bool,
    /// Keep shipped segments in the spool.
    #[arg(long)]
    keep_shipped: bool,
    #[arg(long)]
    json: bool,
    /// Prometheus endpoint (default 127.0.0.1:9562; "" for none).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Warn when the newest published point is older than this (default 5m; 0 never).
    #[arg(long)]
    rpo_warn: Option<String>,
    /// Pack upload limit in bytes per second, e.g. 50MiB (default 0: none).
    #[arg(long)]
    upload_rate: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a repository (and the key file, 0600, if it does not exist).
    Init {
        #[command(flatten)]
        r: RepoArgs,
        #[arg(long, default_value_t = 65536)]
        chunk_size: u32,
        #[arg(long, default_value_t = 16 << 20)]
        pack_size: u64,
        /// A full checkpoint manifest every N points.
        #[arg(long, default_value_t = 16)]
        checkpoint_every: u64,
    },
    /// Ship the spool: follow it (daemon) or, with --once, ship what is there.
    Run(Box<RunArgs>),
    /// What a running shipper reports (read from the spool's status file).
    Status {
        #[arg(long)]
        spool: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List published points (with --group: the group's points, and
    /// whether every member is published).
    Points {
        #[command(flatten)]
        r: RepoArgs,
        #[arg(long, conflicts_with = "group")]
        disk: Option<Uuid>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a point to an image file or a block device; with --group,
    /// every member of a complete group point into --to-dir.
    Restore {
        #[command(flatten)]
        r: RepoArgs,
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        disk: Option<Uuid>,
        #[arg(long, requires = "to_dir")]
        group: Option<String>,
        /// `latest` or a point sequence (with --group: a group sequence).
        #[arg(long, default_value = "latest")]
        point: PointSel,
        #[arg(long, required_unless_present = "group")]
        to: Option<PathBuf>,
        #[arg(long)]
        to_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a point for real and record that the disk failed over: from
    /// then on, a shipper of the old source refuses to publish its points.
    Failover {
        #[command(flatten)]
        r: RepoArgs,
        #[command(flatten)]
        p: PointArgs,
        #[arg(long)]
        to: PathBuf,
        /// Fail over again although the disk already failed over (the new
        /// record replaces the old one; the earlier target stops being the
        /// recorded one).
        #[arg(long)]
        force: bool,
    },
    /// Restore a point into a scratch target, run a check command on it
    /// (`{}` is replaced by the target path), report, and remove the target.
    /// Replication is not touched.
    TestFailover {
        #[command(flatten)]
        r: RepoArgs,
        #[command(flatten)]
        p: PointArgs,
        #[arg(long)]
        to: PathBuf,
        /// e.g. "e2fsck -fn {}"
        #[arg(long)]
        check: Option<String>,
        /// Keep the scratch target.
        #[arg(long)]
        keep: bool,
    },
    /// Bring an existing device or image to a point, writing only the
    /// chunks that differ.
    Failback {
        #[command(flatten)]
        r: RepoArgs,
        #[command(flatten)]
        p: PointArgs,
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Compare a device or image with a point by hash; exit 1 on any difference.
    Verify {
        #[command(flatten)]
        r: RepoArgs,
        #[command(flatten)]
        p: PointArgs,
        #[arg(long)]
        against: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove points outside a retention policy and the packs only they
    /// needed. The newest point of every disk is always kept.
    Prune {
        #[command(flatten)]
        r: RepoArgs,
        /// Keep every point younger than this (e.g. 24h, 7d).
        #[arg(long, value_parser = parse_duration)]
        keep_within: Option<std::time::Duration>,
        /// Keep the newest point of each of the last N hours.
        #[arg(long)]
        keep_hourly: Option<u64>,
        /// Keep the newest point of each of the last N days (UTC).
        #[arg(long)]
        keep_daily: Option<u64>,
        /// Say what would go; change nothing (takes no lock).
        #[arg(long)]
        dry_run: bool,
        /// Wait after taking the lock so shippers mid-publish finish.
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        grace: std::time::Duration,
        /// Never delete packs younger than this (unpublished windows of
        /// running shippers may use them).
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        pack_grace: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Check the repository: every referenced chunk exists; with
    /// --read-data, every chunk decrypts and hashes to its id.
    Check {
        #[command(flatten)]
        r: RepoArgs,
        #[arg(long)]
        read_data: bool,
        #[arg(long)]
        json: bool,
    },
}

/// `30s`, `15m`, `24h`, `7d`, or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d)")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

async fn run(a: RunArgs) -> Result<u8, ShipError> {
    use hrl_shipper::config::{parse_duration as dur, parse_rate, ShipperConfig};
    use std::sync::atomic::Ordering;
    let mut cfg = match &a.config {
        Some(p) => ShipperConfig::load(p)?,
        None => ShipperConfig::default(),
    };
    if let Some(v) = a.repo {
        cfg.repo = Some(v);
    }
    if let Some(v) = a.key_file {
        cfg.key_file = Some(v);
    }
    if let Some(v) = a.spool {
        cfg.spool = Some(v);
    }
    if let Some(v) = a.metrics_listen {
        cfg.metrics_listen = v;
    }
    if let Some(v) = a.rpo_warn {
        cfg.rpo_warn = dur(&v)?;
    }
    if let Some(v) = a.upload_rate {
        cfg.upload_rate = parse_rate(&v)?;
    }
    let need = |what: &str| {
        ShipError::Usage(format!(
            "run needs --{what} (or `{}` in --config)",
            what.replace('-', "_")
        ))
    };
    let url = cfg.repo.clone().ok_or_else(|| need("repo"))?;
    let key_file = cfg.key_file.clone().ok_or_else(|| need("key-file"))?;
    let spool = cfg.spool.clone().ok_or_else(|| need("spool"))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| ShipError::io("signal", "register", e))?;
    }
    // As a daemon, an endpoint that fails while the repository is opened is
    // waited out (1 s doubling to 60 s); everything else is an error.
    let mut backoff = std::time::Duration::from_secs(1);
    let repo = loop {
        match Repo::open(&url, &key_file).await {
            Ok(r) => break r,
            Err(e @ ShipError::Store { .. }) if !a.once && !stop.load(Ordering::Relaxed) => {
                tracing::error!(error = %e, backoff_s = backoff.as_secs(), "cannot open the repository; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(60));
            }
            Err(e) => return Err(e),
        }
    };
    let mut o = hrl_shipper::ship::ShipOptions::new(spool.clone());
    o.once = a.once;
    o.delete_shipped = !a.keep_shipped;
    o.upload.rate.store(cfg.upload_rate, Ordering::Relaxed);
    o.rpo_warn.store(cfg.rpo_warn.as_secs(), Ordering::Relaxed);
    if !a.once {
        let st = Arc::new(std::sync::Mutex::new(hrl_shipper::status::ShipStatus {
            repo: url.clone(),
            pid: std::process::id(),
            ..Default::default()
        }));
        if !cfg.metrics_listen.is_empty() {
            hrl_shipper::status::serve_metrics(&st, &cfg.metrics_listen);
        }
        o.status = Some(st);
        // SIGHUP: re-read the file's upload_rate and rpo_warn.
        if let Some(path) = a.config.clone() {
            let hup = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
                .map_err(|e| ShipError::io("signal", "register", e))?;
            let (rate, warn, stop) = (o.upload.clone(), o.rpo_warn.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if hup.swap(false, Ordering::Relaxed) {
                        match ShipperConfig::load(&path) {
                            Ok(c) => {
                                rate.rate.store(c.upload_rate, Ordering::Relaxed);
                                warn.store(c.rpo_warn.as_secs(), Ordering::Relaxed);
                                tracing::info!(
                                    upload_rate = c.upload_rate,
                                    rpo_warn_s = c.rpo_warn.as_secs(),
                                    "configuration reloaded"
                                );
                            }
                            Err(e) => tracing::error!(error = %e, "SIGHUP: config not reloaded, the running one stays"),
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            });
        }
    }
    let rep = hrl_shipper::ship::ship(&repo, &o, &stop).await?;
    if a.json {
        println!("{}", serde_json::to_string(&rep).unwrap_or_default());
    } else {
        println!(
            "published {} points; {} of chunk data ({} zero chunks), {} new chunks stored in {} ({} deduplicated), {} packs, {} spool segments deleted",
            rep.points_published,
            hrl_format::human_bytes(rep.data_bytes),
            rep.zero_chunks,
            rep.chunks_new,
            hrl_format::human_bytes(rep.stored_bytes),
            rep.chunks_deduplicated,
            rep.packs,
            rep.segments_deleted
        );
    }
    Ok(0)
}

fn code(e: &ShipError) -> u8 {
    match e {
        ShipError::Usage(_)
        | ShipError::NoRepository { .. }
        | ShipError::RepositoryExists { .. }
        | ShipError::WrongKey { .. }
        | ShipError::KeyFile { .. }
        | ShipError::NewerRepository { .. } => 2,
        _ => 1,
    }
}

async fn main_async(cli: Cli) -> Result<u8, ShipError> {
    match cli.cmd {
        Cmd::Init {
            r,
            chunk_size,
            pack_size,
            checkpoint_every,
        } => {
            if !chunk_size.is_power_of_two() || chunk_size < 4096 {
                return Err(ShipError::Usage(format!(
                    "chunk size {chunk_size}: a power of two of at least 4096"
                )));
            }
            let created = hrl_shipper::repo::create_key_file(&r.key_file)?;
            let repo = Repo::init(&r.repo, &r.key_file, chunk_size, pack_size, checkpoint_every).await?;
            println!(
                "initialised repository {} ({}), chunk size {chunk_size}; key file {}{}",
                repo.url,
                repo.config.repo_id,
                r.key_file.display(),
                if created {
                    " (new; keep a copy somewhere safe)"
                } else {
                    ""
                }
            );
            Ok(0)
        }
        Cmd::Run(a) => run(*a).await,
        Cmd::Status { spool, json } => {
            let st = hrl_shipper::status::load(&spool)?;
            let age = hrl_format::now_ns().saturating_sub(st.updated_ns) as f64 / 1e9;
            if json {
                println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
            } else {
                println!(
                    "shipper pid {} -> {}: {} points published, {} shipped, {} uploaded, {} endpoint errors",
                    st.pid,
                    st.repo,
                    st.points_published,
                    hrl_format::human_bytes(st.data_bytes),
                    hrl_format::human_bytes(st.upload_bytes),
                    st.endpoint_errors
                );
                println!("{:<36} {:>8} {:>10} {:>12}  RPO", "DISK", "POINT", "RPO", "UNPUBLISHED");
                for (d, ds) in &st.disks {
                    println!(
                        "{:<36} {:>8} {:>10} {:>12}  {}",
                        d.to_string(),
                        ds.last_point.map_or("-".into(), |p| p.to_string()),
                        ds.rpo_seconds.map_or("-".into(), |r| format!("{r:.1}s")),
                        hrl_format::human_bytes(ds.unpublished_bytes),
                        if ds.rpo_exceeded { "EXCEEDED rpo_warn" } else { "ok" }
                    );
                }
                if let Some(e) = &st.last_error {
                    println!("last error: {e}");
                }
                if let Some(m) = &st.metrics {
                    println!("metrics: http://{m}/metrics");
                }
            }
            // A status file nobody updates: the shipper is not running.
            if age > 10.0 {
                eprintln!("hrl-shipper: the status is {age:.0}s old: is the shipper running on this spool?");
                return Ok(1);
            }
            Ok(0)
        }
        Cmd::Points {
            r,
            group: Some(group),
            json,
            ..
        } => {
            let repo = Repo::open(&r.repo, &r.key_file).await?;
            let points = hrl_shipper::group::list(&repo, &group).await?;
            if json {
                for g in &points {
                    println!("{}", serde_json::to_string(g).unwrap_or_default());
                }
            } else {
                println!("{:<16} {:>16} {:>8}  STATE", "GROUP", "POINT", "MEMBERS");
                for g in &points {
                    println!(
                        "{:<16} {:>16} {:>3} of {:<2}  {}",
                        g.group,
                        g.seq,
                        g.published.len(),
                        g.members,
                        if g.complete {
                            "published"
                        } else {
                            "incomplete (not restorable)"
                        }
                    );
                }
            }
            Ok(0)
        }
        Cmd::Points { r, disk, json, .. } => {
            let repo = Repo::open(&r.repo, &r.key_file).await?;
            let disks = match disk {
                Some(d) => vec![d],
                None => hrl_shipper::manifest::list_disks(&repo).await?,
            };
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) ends the listing quietly.
            if !json
                && writeln!(
                    out,
                    "{:<36} {:>6} {:<6} {:>10} {:>24} {:>8} {:>10}",
                    "DISK", "POINT", "KIND", "SIZE", "TIME (ns since epoch)", "CHUNKS", "NEW"
                )
                .is_err()
            {
                return Ok(0);
            }
            for d in disks {
                for seq in hrl_shipper::manifest::list_points(&repo, &d).await? {
                    let (h, _) = hrl_shipper::manifest::load(&repo, &d, seq).await?;
                    let r = if json {
                        writeln!(out, "{}", serde_json::to_string(&h).unwrap_or_default())
                    } else {
                        writeln!(
                            out,
                            "{:<36} {:>6} {:<6} {:>10} {:>24} {:>8} {:>10}",
                            d.to_string(),
                            seq,
                            format!("{:?}", h.kind).to_lowercase(),
                            hrl_format::human_bytes(h.device_size),
                            h.time_ns,
                            h.entries,
                            hrl_format::human_bytes(h.new_bytes)
                        )
                    };
                    if r.is_err() {
                        return Ok(0);
                    }
                }
            }
            Ok(0)
        }
        Cmd::Restore {
            r,
            group: Some(group),
            point,
            to_dir: Some(dir),
            json,
            ..
        } => {
            let repo = Repo::open(&r.repo, &r.key_file).await?;
            let reps = hrl_shipper::group::restore_group(&repo, &group, point, &dir).await?;
            for rep in &reps {
                if json {
                    println!("{}", serde_json::to_string(rep).unwrap_or_default());
                } else {
                    println!(
                        "restored disk {} point {} to {} ({:.1}s), every chunk verified",
                        rep.disk,
                        rep.point,
                        rep.target.display(),
                        rep.seconds
                    );
                }
            }
            if !json {
                println!("group {group}: {} members restored into {}", reps.len(), dir.display());
            }
            Ok(0)
        }
        Cmd::Restore {
            r,
            disk,
            point,
            to,
            json,
            ..
        } => {
            let (Some(disk), Some(to)) = (disk, to) else {
                return Err(ShipError::Usage(
                    "restore needs --disk and --to (or --group and --to-dir)".into(),
                ));
            };
            let repo = Repo::open(&r.repo, &r.key_file).await?;
            let tty = {
                use std::io::IsTerminal;
                std::io::stderr().is_terminal()
            };
            let rep = hrl_shipper::restore::restore(&repo, &disk, point, &to, tty || !json).await?;
            if json {
                println!("{}", serde_json::to_string(&rep).unwrap_or_default());
            } else {
                println!(
                    "restored point {} ({:?}) of disk {} to {}: {} disk, {} of data written in {:.2}s ({:.0} MiB/s of data), {} stored and {} zero chunks, every chunk verified",
                    rep.point,
                    rep.kind,
                    rep.disk,
                    rep.target.display(),
                    hrl_format::human_bytes(rep.device_size),
                    hrl_format::human_bytes(rep.bytes_written),
                    rep.seconds,
                    rep.bytes_written as f64 / 1048576.0 / rep.seconds.max(1e-9),
                    rep.stored_chunks,
                    rep.zero_chunks
                );
                if rep.kind == hrl_format::PointKind::Fuzzy {
                    println!("note: this point is FUZZY (the disk had no frozen filesystem): it is not an exact image of one moment");
                }
            }
            Ok(0)
        }
        Cmd::Failover {
            r,
            p: PointArgs { disk, point },
            to,
            force,
        } => {
            let repo = Repo::open(&r.repo, &r.key_file).await?;
            if !force {
                if let Err(e) = hrl_shipper::failover::check_fence(&repo, &disk).await {
                    return Err(ShipError::Usage(format!(
                        "{e}\nIt already failed over; --force fails over again (only if the earlier target is abandoned: both sides would otherwise claim the disk)."
                    )));
                }
            }
            let rep = hrl_shipper::restore::restore(&repo, &disk, point, &to, true).await?;
            hrl_shipper::failover::record(
                &repo,
                &hrl_shipper::failover::FailoverRecord {
                    disk,
                    point: rep.point,
                    time_ns: hrl_format::now_ns(),
                    target: to.display().to_string(),
                    forced: force,
                },
            )
            .await?;
            println!(
                "failed over disk {disk} to point {} on {} ({:.1}s); shippers of the old source now refuse to publish for this disk",
                rep.point,
                to.display(),
                rep.seconds
            );
            Ok(0)
        }
        Cmd::TestFailover {
            r,
            p: PointArgs { disk, point },
            to,
            check,
            keep,
        } => {
            let repo = Repo::open(&r.repo, &r.key_file).await?;
            if to.exists() {
                return Err(ShipError::Usage(format!(
                    "{}: the scratch target exists; test-failover writes a new one and removes it after",
                    to.display()
                )));
            }
            let rep = hrl_shipper::restore::restore(&repo, &disk, point, &to, true).await?;
            println!(
                "test failover: restored point {} of disk {disk} to {} in {:.1}s",
                rep.point,
                to.display(),
                rep.seconds
            );
            let mut ok = true;
            if let Some(cmd) = check {
                let cmd = cmd.replace("{}", &to.display().to_string());
                let t = std::time::Instant::now();
                let st = std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&cmd)
                    .status()
                    .map_err(|e| ShipError::io("/bin/sh", "run check", e))?;
                ok = st.success();
                println!(
                    "test failover: check `{cmd}` {} in {:.1}s",
                    if ok { "PASSED" } else { "FAILED" },
                    t.elapsed().as_secs_f64()
                );
            }
            if keep {
                println!("test failover: kept {}", to.display());
            } else {
                std::fs::remove_file(&to).map_err(|e| ShipError::io(&to, "remove scratch target", e))?;
            }
            Ok(if ok { 0 } else { 1 })
        }
        Cmd::Failback {
            r,
            p: PointArgs { disk, point },
            to,
            json,
        } => {
            let repo = Repo::open(&r.repo, &r.key_file).await?;
            let rep = hrl_shipper::restore::failback(&repo, &disk, point, &to, true).await?;
            if json {
                println!("{}", serde_json::to_string(&rep).unwrap_or_default());
            } else {
                println!(
                    "failed back {} to point {} of disk {disk}: {} chunks compared, {} written ({} zero), {} already right; {:.1}s",
                    to.display(),
                    rep.point,
                    rep.compared,
                    rep.stored_chunks + rep.zero_chunks,
                    rep.zero_chunks,
                    rep.skipped,
                    rep.seconds
                );
            }
            Ok(0)
        }
        Cmd::Verify {
            r,
            p: PointArgs { disk, point },
            against,
            json,
        } => {
            let repo = Repo::open(&r.repo, &r.key_file).await?;
            let (seq, diffs) = hrl_shipper::restore::verify(&repo, &disk, point, &against).await?;
            if json {
                println!("{}", serde_json::json!({"point": seq, "differences": diffs}));
            } else if diffs.is_empty() {
                println!("{} matches point {seq} of disk {disk}", against.display());
            } else {
                for d in &diffs {
                    println!("differs: offset {} length {}", d.offset, d.len);
                }
                println!(
                    "{} differs from point {seq} of disk {disk} in {} ranges, {} in all",
                    against.display(),
                    diffs.len(),
                    hrl_format::human_bytes(diffs.iter().map(|d| d.len).sum())
                );
            }
            Ok(if diffs.is_empty() { 0 } else { 1 })
        }
        Cmd::Prune {
            r,
            keep_within,
            keep_hourly,
            keep_daily,
            dry_run,
            grace,
            pack_grace,
            json,
        } => {
            let repo = Repo::open(&r.repo, &r.key_file).await?;
            let opts = hrl_shipper::prune::PruneOptions {
                policy: hrl_shipper::prune::Policy {
                    keep_within,
                    keep_hourly,
                    keep_daily,
                },
                dry_run,
                grace,
                pack_grace,
            };
            let rep = hrl_shipper::prune::prune(&repo, &opts).await?;
            if json {
                println!("{}", serde_json::to_string(&rep).unwrap_or_default());
            } else {
                println!(
                    "{}{} disks: {} points kept, {} removed, {} rewritten as checkpoints; {} packs kept, {} deleted ({}); {} index objects consolidated",
                    if dry_run { "dry run (nothing changed): " } else { "" },
                    rep.disks,
                    rep.points_kept,
                    rep.points_removed,
                    rep.checkpoints_rewritten,
                    rep.packs_kept,
                    rep.packs_deleted,
                    hrl_format::human_bytes(rep.bytes_deleted),
                    rep.index_objects_replaced
                );
            }
            Ok(0)
        }
        Cmd::Check { r, read_data, json } => {
            let repo = Repo::open(&r.repo, &r.key_file).await?;
            let rep = hrl_shipper::restore::check(&repo, read_data).await?;
            if json {
                println!("{}", serde_json::to_string(&rep).unwrap_or_default());
            } else {
                for p in &rep.problems {
                    eprintln!("problem: {}: {}", p.object, p.what);
                }
                println!(
                    "{} points, {} referenced chunks, {} packs{}: {}",
                    rep.points,
                    rep.referenced_chunks,
                    rep.packs,
                    if read_data {
                        format!(", {} chunks read and verified", rep.chunks_read)
                    } else {
                        String::new()
                    },
                    if rep.problems.is_empty() {
                        "no problems".to_string()
                    } else {
                        format!("{} PROBLEMS", rep.problems.len())
                    }
                );
            }
            Ok(if rep.problems.is_empty() { 0 } else { 1 })
        }
    }
}

fn main() -> ExitCode {
    // FAILPOINTS (crash-matrix tests) only exist in `failpoints` builds.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    use std::io::IsTerminal;
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("HRL_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if cli.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter())
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter())
            .init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hrl-shipper: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(main_async(cli)) {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("hrl-shipper: {e}");
            ExitCode::from(code(&e))
        }
    }
}
