//! `hrl-agent`: command line.
//!
//! Exit codes: 0 success; 1 runtime failure (or a point that was not
//! taken); 2 usage or configuration error (bad arguments, not a block
//! device, spool on the tracked device, already tracked, no permission, no
//! agent running).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hrl_agent::config::{parse_duration, parse_size, AgentConfig, DiskConfig};
use hrl_agent::control::{request, socket_path};
use hrl_agent::track::{run_track, TrackOptions};
use hrl_agent::AgentError;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "hrl-agent",
    version,
    about = "Track and capture changed blocks of Linux disks into .hrl logs"
)]
struct Cli {
    /// Log lines as text (default) or JSON, one object per line.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Target {
    /// Agent config file (its spool's control socket is used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Spool directory of the running agent.
    #[arg(long)]
    spool: Option<PathBuf>,
    /// Control socket path.
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl Target {
    fn socket(&self) -> Result<PathBuf, AgentError> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(s) = &self.spool {
            return Ok(socket_path(s));
        }
        let cfg = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/hrl/agent.toml"));
        Ok(socket_path(&AgentConfig::load(&cfg)?.spool))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: track, capture and take points for one or more disks.
    Run(Box<RunArgs>),
    /// Ask the running agent for a point now; prints its sequence and freeze time.
    Point {
        #[arg(long)]
        disk: String,
        /// App-consistent point (runs the pre-freeze and post-thaw hooks).
        #[arg(long)]
        app: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Show every disk's mode, dirty and spool bytes, last point, rates.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Internal: the thaw guardian the agent spawns per frozen mount.
    #[command(hide = true)]
    FreezeGuard {
        #[arg(long)]
        mount: PathBuf,
    },
    /// Track one device only (Extent/Flush/Lost records, no data) until
    /// SIGINT or SIGTERM.
    Track {
        #[arg(long)]
        device: PathBuf,
        #[arg(long)]
        spool: PathBuf,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "64KiB")]
        chunk_size: String,
        #[arg(long, default_value = "4096KiB")]
        trace_buffer: String,
        #[arg(long, default_value_t = 20)]
        poll_ms: u64,
        #[arg(long, default_value = "64MiB")]
        segment_size: String,
    },
    /// Take consistency-group points across member agents (each running
    /// with `--group`): one freeze window for every member disk.
    Coordinate {
        #[arg(long)]
        group: String,
        /// A member agent's group address (repeat for each member).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// The shared group key (64 hex, mode 0600).
        #[arg(long)]
        key_file: PathBuf,
        /// Every member must be frozen within this of the freeze order.
        #[arg(long, default_value = "300ms")]
        deadline: String,
        #[arg(long, default_value = "10s")]
        interval: String,
        /// Points to take, then exit (0: until SIGTERM).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// One JSON line per group point.
        #[arg(long)]
        json: bool,
        /// Test hook: wait this long between the barrier and the commit.
        #[arg(long, hide = true, default_value = "0ms")]
        pause_frozen: String,
    },
    /// Create a new random group key file (0600).
    GroupKey { file: PathBuf },
}

#[derive(Args)]
struct RunArgs {
    /// TOML config (see docs/operations.md). The flags below describe one
    /// disk instead, and override agent-wide options of the file.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    device: Option<PathBuf>,
    #[arg(long)]
    spool: Option<PathBuf>,
    /// Disk name (default: the kernel device name).
    #[arg(long)]
    name: Option<String>,
    /// Mount point to freeze (default: found in /proc/self/mountinfo).
    #[arg(long)]
    mount: Option<PathBuf>,
    #[arg(long)]
    point_interval: Option<String>,
    #[arg(long)]
    max_freeze: Option<String>,
    #[arg(long)]
    spool_limit: Option<String>,
    #[arg(long)]
    pre_freeze: Option<String>,
    #[arg(long)]
    while_frozen: Option<String>,
    #[arg(long)]
    post_thaw: Option<String>,
    /// Periodic points are app points.
    #[arg(long)]
    app_points: bool,
    #[arg(long)]
    chunk_size: Option<String>,
    #[arg(long)]
    trace_buffer: Option<String>,
    #[arg(long)]
    segment_size: Option<String>,
    /// Capture read limit, bytes per second (e.g. 50MiB).
    #[arg(long)]
    capture_rate: Option<String>,
    #[arg(long)]
    hot_delay: Option<String>,
    #[arg(long)]
    hook_timeout: Option<String>,
    /// Prometheus endpoint address (default 127.0.0.1:9561; "" for none).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Warn when the newest point is older than this (default 5m; 0: never).
    #[arg(long)]
    rpo_warn: Option<String>,
    /// Be a member of this consistency group (with --group-listen, --group-key).
    #[arg(long)]
    group: Option<String>,
    /// Address the group member endpoint listens on.
    #[arg(long, requires = "group")]
    group_listen: Option<String>,
    /// The shared group key file.
    #[arg(long, requires = "group")]
    group_key: Option<PathBuf>,
}

fn build_config(a: RunArgs) -> Result<AgentConfig, AgentError> {
    let mut cfg = match (&a.config, &a.spool) {
        (Some(p), _) => AgentConfig::load(p)?,
        (None, Some(s)) => AgentConfig::new(s),
        (None, None) => {
            return Err(AgentError::Config(
                "give --config FILE, or --device DEV and --spool DIR".into(),
            ))
        }
    };
    if let Some(s) = a.spool {
        cfg.spool = s;
    }
    if let Some(dev) = a.device {
        let name = match a.name {
            Some(n) => n,
            None => hrl_agent::device::BlockDevice::open(&dev)?.name,
        };
        cfg.disks.push(DiskConfig {
            name,
            device: dev,
            mount: a.mount,
            pre_freeze: a.pre_freeze,
            while_frozen: a.while_frozen,
            post_thaw: a.post_thaw,
        });
    }
    if let Some(v) = a.point_interval {
        cfg.point_interval = parse_duration(&v)?;
    }
    if let Some(v) = a.max_freeze {
        cfg.max_freeze = parse_duration(&v)?;
    }
    if let Some(v) = a.hook_timeout {
        cfg.hook_timeout = parse_duration(&v)?;
    }
    if let Some(v) = a.hot_delay {
        cfg.hot_delay = parse_duration(&v)?;
    }
    if let Some(v) = a.spool_limit {
        cfg.spool_limit = parse_size(&v)?;
    }
    if let Some(v) = a.capture_rate {
        cfg.capture_rate = parse_size(&v)?;
    }
    if let Some(v) = a.chunk_size {
        cfg.chunk_size =
            u32::try_from(parse_size(&v)?).map_err(|_| AgentError::Config("chunk size too large".into()))?;
    }
    if let Some(v) = a.trace_buffer {
        cfg.trace_buffer_kb = (parse_size(&v)? / 1024).max(1) as u32;
    }
    if let Some(v) = a.segment_size {
        cfg.segment_size = parse_size(&v)?;
    }
    if a.app_points {
        cfg.app_points = true;
    }
    if let Some(v) = a.metrics_listen {
        cfg.metrics_listen = v;
    }
    if let Some(v) = a.rpo_warn {
        cfg.rpo_warn = parse_duration(&v)?;
    }
    if let Some(name) = a.group {
        let (Some(listen), Some(key_file)) = (a.group_listen, a.group_key) else {
            return Err(AgentError::Config(
                "--group needs --group-listen ADDR and --group-key FILE".into(),
            ));
        };
        cfg.group = Some(hrl_agent::group::GroupConfig {
            name,
            listen,
            key_file,
            disks: Vec::new(),
        });
    }
    cfg.validate()?;
    Ok(cfg)
}

fn exit_code(e: &AgentError) -> u8 {
    match e {
        AgentError::NotBlockDevice { .. }
        | AgentError::SpoolOnTrackedDevice { .. }
        | AgentError::AlreadyTracked { .. }
        | AgentError::Permission { .. }
        | AgentError::Config(_) => 2,
        AgentError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 2,
        _ => 1,
    }
}

fn stop_flag() -> Result<Arc<AtomicBool>, AgentError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| AgentError::io("signal handler", "register", e))?;
    }
    Ok(stop)
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
            .with_writer(|| hrl_agent::progress::LogWriter)
            .with_env_filter(filter())
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(|| hrl_agent::progress::LogWriter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter())
            .init();
    }
    let r: Result<u8, AgentError> = (|| match cli.cmd {
        Cmd::Run(a) => {
            let cfg = build_config(*a)?;
            hrl_agent::run::run(&cfg, stop_flag()?)?;
            Ok(0)
        }
        Cmd::Point {
            disk,
            app,
            json,
            target,
        } => {
            let v = request(&target.socket()?, &json!({"cmd": "point", "disk": disk, "app": app}))?;
            if json {
                println!("{v}");
            } else if v["ok"].as_bool() == Some(true) {
                println!(
                    "point {} ({}) of disk {} taken; frozen {:.1} ms",
                    v["seq"],
                    v["kind"].as_str().unwrap_or("?"),
                    disk,
                    v["freeze_ms"].as_f64().unwrap_or(0.0)
                );
            } else {
                eprintln!(
                    "hrl-agent: point not taken: {}",
                    v["error"].as_str().unwrap_or("unknown error")
                );
            }
            Ok(if v["ok"].as_bool() == Some(true) { 0 } else { 1 })
        }
        Cmd::FreezeGuard { mount } => {
            hrl_agent::guard::run_guard(&mount)?;
            Ok(0)
        }
        Cmd::Status { json, target } => {
            let v = request(&target.socket()?, &json!({"cmd": "status"}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(0);
            }
            println!(
                "{:<12} {:<12} {:>10} {:>10} {:>8} {:>10} {:>9} {:>7}",
                "DISK", "MODE", "DIRTY", "SPOOL", "POINT", "AGE", "FREEZE", "LOSSES"
            );
            for d in v["disks"].as_array().into_iter().flatten() {
                let mode = match (d["mode"].as_str(), d["scan_progress"].as_f64()) {
                    (Some(m), Some(p)) => format!("{m} {:.0}%", p * 100.0),
                    (Some(m), None) => m.to_string(),
                    _ => "?".into(),
                };
                println!(
                    "{:<12} {:<12} {:>10} {:>10} {:>8} {:>10} {:>9} {:>7}",
                    d["name"].as_str().unwrap_or("?"),
                    mode,
                    hrl_format::human_bytes(d["dirty_bytes"].as_u64().unwrap_or(0)),
                    hrl_format::human_bytes(d["spool_bytes"].as_u64().unwrap_or(0)),
                    d["last_point"]["seq"].as_u64().map_or("-".into(), |s| s.to_string()),
                    d["last_point_age_s"]
                        .as_f64()
                        .map_or("-".into(), |a| format!("{a:.1}s")),
                    d["last_freeze_ms"].as_f64().map_or("-".into(), |f| format!("{f:.1}ms")),
                    d["losses"].as_u64().unwrap_or(0),
                );
                if d["rpo_exceeded"].as_bool() == Some(true) {
                    println!("  WARNING: RPO threshold exceeded: no point for longer than rpo_warn");
                }
                if let Some(e) = d["last_error"].as_str() {
                    println!("  error: {e}");
                }
            }
            if let Some(m) = v["metrics"].as_str() {
                println!("metrics: http://{m}/metrics");
            }
            Ok(0)
        }
        Cmd::GroupKey { file } => {
            hrl_agent::group::new_key_file(&file)?;
            println!(
                "new group key in {} (0600): copy it to every member and the coordinator",
                file.display()
            );
            Ok(0)
        }
        Cmd::Coordinate {
            group,
            members,
            key_file,
            deadline,
            interval,
            count,
            json,
            pause_frozen,
        } => {
            let o = hrl_agent::group::CoordinateOptions {
                group,
                members,
                key: hrl_agent::group::read_key(&key_file)?,
                deadline: parse_duration(&deadline)?,
                interval: parse_duration(&interval)?,
                count,
                pause_frozen: parse_duration(&pause_frozen)?,
            };
            let stop = stop_flag()?;
            let mut failed = 0u64;
            hrl_agent::group::coordinate(&o, &stop, |r| {
                if !r.ok {
                    failed += 1;
                }
                if json {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                } else if r.ok {
                    println!(
                        "group {} point {}: {} disks, window {:.1} ms, longest freeze {:.1} ms",
                        r.group, r.seq, r.members, r.window_ms, r.max_freeze_ms
                    );
                } else {
                    println!(
                        "group {} point {}: ABORTED: {}",
                        r.group,
                        r.seq,
                        r.error.as_deref().unwrap_or("?")
                    );
                }
                // Piped output is read as the points happen.
                let _ = std::io::Write::flush(&mut std::io::stdout());
            })?;
            Ok(if failed > 0 { 1 } else { 0 })
        }
        Cmd::Track {
            device,
            spool,
            name,
            chunk_size,
            trace_buffer,
            poll_ms,
            segment_size,
        } => {
            let mut o = TrackOptions::new(device, spool);
            o.name = name;
            o.chunk_size = u32::try_from(parse_size(&chunk_size)?)
                .map_err(|_| AgentError::Config(format!("chunk size {chunk_size} too large")))?;
            o.buffer_kb = (parse_size(&trace_buffer)? / 1024).max(1) as u32;
            o.poll_interval = Duration::from_millis(poll_ms);
            o.rotate_bytes = parse_size(&segment_size)?;
            let s = run_track(&o, stop_flag()?)?;
            tracing::info!(disk = %s.disk_id, changes = s.changes, extent_records = s.extent_records, losses = s.losses, "stopped cleanly");
            Ok(0)
        }
    })();
    match r {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("hrl-agent: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
