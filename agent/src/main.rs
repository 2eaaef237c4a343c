//! `hrl-agent`: command line.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 usage or configuration error
//! (bad arguments, not a block device, spool on the tracked device, already
//! tracked, no permission).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hrl_agent::track::{parse_size, run_track, TrackOptions};
use hrl_agent::AgentError;

#[derive(Parser)]
#[command(
    name = "hrl-agent",
    version,
    about = "Track changed blocks of Linux disks into .hrl logs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Track one device in the foreground (Extent/Flush/Lost records only)
    /// until SIGINT or SIGTERM.
    Track {
        #[arg(long)]
        device: PathBuf,
        #[arg(long)]
        spool: PathBuf,
        /// Disk name for state and logs (default: the kernel device name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "64KiB")]
        chunk_size: String,
        /// Kernel ring buffer per CPU.
        #[arg(long, default_value = "4096KiB")]
        trace_buffer: String,
        /// How often the buffers are read, in milliseconds.
        #[arg(long, default_value_t = 20)]
        poll_ms: u64,
        /// Rotate spool segments at this size.
        #[arg(long, default_value = "64MiB")]
        segment_size: String,
    },
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HRL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Track {
            device,
            spool,
            name,
            chunk_size,
            trace_buffer,
            poll_ms,
            segment_size,
        } => (|| {
            let mut o = TrackOptions::new(device, spool);
            o.name = name;
            o.chunk_size = u32::try_from(parse_size(&chunk_size)?)
                .map_err(|_| AgentError::Config(format!("chunk size {chunk_size} too large")))?;
            o.buffer_kb = (parse_size(&trace_buffer)? / 1024).max(1) as u32;
            o.poll_interval = Duration::from_millis(poll_ms);
            o.rotate_bytes = parse_size(&segment_size)?;
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())
                    .map_err(|e| AgentError::io("signal handler", "register", e))?;
            }
            let s = run_track(&o, stop)?;
            tracing::info!(
                disk = %s.disk_id,
                changes = s.changes,
                extent_records = s.extent_records,
                losses = s.losses,
                "stopped cleanly"
            );
            Ok(())
        })(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hrl-agent: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
