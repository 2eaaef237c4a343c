//! `hrl-agent`: command line. It parses arguments, calls the library and
//! prints; every command's work is in `hrl_agent`.
//!
//! Exit codes (docs/operations.md): 0 success; 1 runtime failure, damaged
//! data or a point that was not taken; 2 usage or configuration error (bad
//! arguments, not a block device, spool on the tracked device, already
//! tracked, no permission, no agent running); 3 a peer or the network
//! failed (group members, the coordinator); 4 an internal error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hrl_agent::config::{AgentConfig, DiskConfig, GroupConfig, Settings};
use hrl_agent::daemon::control::{request, socket_path};
use hrl_agent::daemon::track::{run_track, TrackOptions};
use hrl_agent::AgentError;
use hrl_common::{ByteSize, HumanDuration};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "hrl-agent",
    version,
    about = "Track and capture changed blocks of Linux disks into .hrl logs"
)]
struct Cli {
    /// Log lines as text or JSON, one object per line.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Target {
    /// Agent config file (its spool's control socket is used) [default:
    /// /etc/hrl/agent.toml when it exists, else the only running agent].
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
    /// The socket given, or the config's, or the only running agent's.
    fn socket(&self) -> Result<PathBuf, AgentError> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(s) = &self.spool {
            return Ok(socket_path(s));
        }
        hrl_agent::daemon::registry::find_socket(self.config.as_deref())
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: track, capture and take points for one or more disks.
    Run(Box<RunArgs>),
    /// Ask the running agent for a point now; prints its sequence and freeze time.
    Point(PointArgs),
    /// Show every disk's mode, dirty and spool bytes, last point, rates.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Internal: the thaw guardian the agent spawns per frozen mount.
    #[command(hide = true)]
    FreezeGuard {
        /// The mount point to thaw if the agent dies.
        #[arg(long)]
        mount: PathBuf,
    },
    /// Track one device only (Extent/Flush/Lost records, no data) until
    /// SIGINT or SIGTERM.
    Track(TrackArgs),
    /// Take consistency-group points across member agents (each running
    /// with `--group`): one freeze window for every member disk.
    Coordinate(CoordinateArgs),
    /// Create a new random group key file (0600).
    GroupKey {
        /// Where to write the key; an existing file is never overwritten.
        file: PathBuf,
    },
}

#[derive(Args)]
struct PointArgs {
    /// The disk, by its name in the agent's config (default: the only one).
    #[arg(long)]
    disk: Option<String>,
    /// App-consistent point (runs the pre-freeze and post-thaw hooks).
    #[arg(long)]
    app: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
struct TrackArgs {
    /// The block device to track.
    #[arg(long)]
    device: PathBuf,
    /// Spool directory for the .hrl segments (not on the tracked device).
    #[arg(long)]
    spool: PathBuf,
    /// Disk name (default: the kernel device name).
    #[arg(long)]
    name: Option<String>,
    /// Chunk size: a power of two from 4KiB to 16MiB.
    #[arg(long, default_value = "64KiB")]
    chunk_size: ByteSize,
    /// Trace ring buffer per CPU.
    #[arg(long, default_value = "4MiB")]
    trace_buffer: ByteSize,
    /// How often the trace buffers are read, in milliseconds.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// Spool segment size before rotation.
    #[arg(long, default_value = "64MiB")]
    segment_size: ByteSize,
}

#[derive(Args)]
struct CoordinateArgs {
    /// The group's name (members refuse another).
    #[arg(long)]
    group: String,
    /// A member agent's group address, HOST:PORT (repeat for each member).
    #[arg(long = "member", required = true)]
    members: Vec<String>,
    /// The shared group key (64 hex, mode 0600).
    #[arg(long)]
    key_file: PathBuf,
    /// Every member must be frozen within this of the freeze order.
    #[arg(long, default_value = "300ms")]
    deadline: HumanDuration,
    /// Time between group points.
    #[arg(long, default_value = "10s")]
    interval: HumanDuration,
    /// Points to take, then exit (0: until SIGTERM).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// One JSON line per group point.
    #[arg(long)]
    json: bool,
    /// Test hook: wait this long between the barrier and the commit.
    #[arg(long, hide = true, default_value = "0ms")]
    pause_frozen: HumanDuration,
}

#[derive(Args)]
struct RunArgs {
    /// TOML config (see docs/operations.md). The flags below describe one
    /// disk instead, and override agent-wide options of the file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The block device to track (one disk given by flags).
    #[arg(long)]
    device: Option<PathBuf>,
    /// Spool directory for the .hrl segments (not on a tracked device).
    #[arg(long)]
    spool: Option<PathBuf>,
    /// Disk name (default: the kernel device name).
    #[arg(long)]
    name: Option<String>,
    /// Mount point to freeze (default: found in /proc/self/mountinfo).
    #[arg(long)]
    mount: Option<PathBuf>,
    /// Command run before an app point (sh -c; HRL_DISK, HRL_POINT, ... set).
    #[arg(long)]
    pre_freeze: Option<String>,
    /// Command run inside the freeze, within max_freeze.
    #[arg(long)]
    while_frozen: Option<String>,
    /// Command run after the thaw of an app point.
    #[arg(long)]
    post_thaw: Option<String>,
    #[command(flatten)]
    settings: Settings,
    /// Be a member of this consistency group (with --group-listen, --group-key).
    #[arg(long)]
    group: Option<String>,
    /// Address the group member endpoint listens on, HOST:PORT.
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
            None => hrl_agent::tracking::device::BlockDevice::open(&dev)?.name,
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
    cfg.apply(&a.settings)?;
    if let Some(name) = a.group {
        let (Some(listen), Some(key_file)) = (a.group_listen, a.group_key) else {
            return Err(AgentError::Config(
                "--group needs --group-listen ADDR and --group-key FILE".into(),
            ));
        };
        cfg.group = Some(GroupConfig {
            name,
            listen,
            key_file,
            disks: Vec::new(),
        });
    }
    cfg.validate()?;
    Ok(cfg)
}

fn stop_flag() -> Result<Arc<AtomicBool>, AgentError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| AgentError::io("signal handler", "register", e))?;
    }
    Ok(stop)
}

fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("HRL_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_writer(|| hrl_agent::daemon::progress::LogWriter)
            .with_env_filter(filter())
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(|| hrl_agent::daemon::progress::LogWriter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter())
            .init();
    }
}

fn point(a: PointArgs) -> Result<u8, AgentError> {
    let PointArgs {
        disk,
        app,
        json,
        target,
    } = a;
    let socket = target.socket()?;
    let disk = match disk {
        Some(d) => d,
        None => hrl_agent::daemon::registry::only_disk(&request(&socket, &json!({"cmd": "status"}))?)?,
    };
    let v = request(&socket, &json!({"cmd": "point", "disk": disk, "app": app}))?;
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
        if let Some(l) = v["label"].as_str() {
            println!("label: {l}");
        }
        if let Some(n) = v["note"].as_str() {
            println!("note: {n}");
        }
    } else {
        eprintln!(
            "hrl-agent: point not taken: {}",
            v["error"].as_str().unwrap_or("unknown error")
        );
    }
    Ok(if v["ok"].as_bool() == Some(true) { 0 } else { 1 })
}

fn status(json: bool, target: Target) -> Result<u8, AgentError> {
    let v = request(&target.socket()?, &json!({"cmd": "status"}))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    println!(
        "{:<12} {:<12} {:>10} {:>10} {:>8} {:<34} {:>9} {:>7}",
        "DISK", "MODE", "DIRTY", "SPOOL", "POINT", "LAST POINT (UTC)", "FREEZE", "LOSSES"
    );
    let now = hrl_format::now_ns();
    for d in v["disks"].as_array().into_iter().flatten() {
        let mode = match (d["mode"].as_str(), d["scan_progress"].as_f64()) {
            (Some(m), Some(p)) => format!("{m} {:.0}%", p * 100.0),
            (Some(m), None) => m.to_string(),
            _ => "?".into(),
        };
        println!(
            "{:<12} {:<12} {:>10} {:>10} {:>8} {:<34} {:>9} {:>7}",
            d["name"].as_str().unwrap_or("?"),
            mode,
            hrl_format::human_bytes(d["dirty_bytes"].as_u64().unwrap_or(0)),
            hrl_format::human_bytes(d["spool_bytes"].as_u64().unwrap_or(0)),
            d["last_point"]["seq"].as_u64().map_or("-".into(), |s| s.to_string()),
            d["last_point"]["time_ns"]
                .as_u64()
                .map_or("-".into(), |t| hrl_common::time::when(t, now)),
            d["last_freeze_ms"].as_f64().map_or("-".into(), |f| format!("{f:.1}ms")),
            d["losses"].as_u64().unwrap_or(0),
        );
        if let Some(t) = d["scan_end_ns"].as_u64() {
            let left = t.saturating_sub(now) / 1_000_000_000;
            println!(
                "  {} ends about {} (in {} min at its rate so far)",
                d["mode"].as_str().unwrap_or("scan"),
                hrl_common::time::rfc3339(t),
                left.div_ceil(60)
            );
        }
        if let Some(s) = d["start"].as_str().filter(|s| !s.is_empty()) {
            println!("  started: {s}");
        }
        if let Some(m) = d["settings"].as_object().filter(|m| !m.is_empty()) {
            let list: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
                .collect();
            println!("  settings: {}", list.join(", "));
        }
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

fn coordinate(a: CoordinateArgs) -> Result<u8, AgentError> {
    let o = hrl_agent::group::CoordinateOptions {
        group: a.group,
        members: a.members,
        key: hrl_agent::group::read_key(&a.key_file)?,
        deadline: a.deadline.into(),
        interval: a.interval.into(),
        count: a.count,
        pause_frozen: a.pause_frozen.into(),
    };
    let json = a.json;
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

fn track(a: TrackArgs) -> Result<u8, AgentError> {
    let mut o = TrackOptions::new(a.device, a.spool);
    o.name = a.name;
    o.chunk_size = a
        .chunk_size
        .to_u32()
        .map_err(|e| AgentError::Config(format!("--chunk-size: {e}")))?;
    o.buffer_kb = u32::try_from((a.trace_buffer.bytes() / 1024).max(1))
        .map_err(|_| AgentError::Config(format!("--trace-buffer {} is too large", a.trace_buffer)))?;
    o.poll_interval = Duration::from_millis(a.poll_ms);
    o.rotate_bytes = a.segment_size.bytes();
    let s = run_track(&o, stop_flag()?)?;
    tracing::info!(disk = %s.disk_id, changes = s.changes, extent_records = s.extent_records, losses = s.losses, "stopped cleanly");
    Ok(0)
}

fn main() -> ExitCode {
    // FAILPOINTS (crash-matrix tests) only exist in `failpoints` builds.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let r = match cli.cmd {
        Cmd::Run(a) => build_config(*a).and_then(|cfg| {
            hrl_agent::daemon::run::run(&cfg, stop_flag()?)?;
            Ok(0)
        }),
        Cmd::Point(a) => point(a),
        Cmd::FreezeGuard { mount } => hrl_agent::point::guard::run_guard(&mount).map(|()| 0),
        Cmd::Status { json, target } => status(json, target),
        Cmd::GroupKey { file } => hrl_agent::group::new_key_file(&file).map(|()| {
            println!(
                "new group key in {} (0600): copy it to every member and the coordinator",
                file.display()
            );
            0
        }),
        Cmd::Coordinate(a) => coordinate(a),
        Cmd::Track(a) => track(a),
    };
    match r {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("hrl-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
