//! `hrl-shipper`: command line. It parses arguments, sets up logging and
//! the runtime, runs the command (`hrl_shipper::commands`) and maps an
//! error to its exit code.
//!
//! Exit codes (docs/operations.md): 0 success; 1 failure (a damaged
//! repository, a failed restore, problems found by check, a difference
//! found by verify); 2 usage or configuration (bad arguments, no
//! repository, wrong key, unreadable key file); 3 the store or the network
//! failed; 4 an internal error.

use std::process::ExitCode;

use clap::Parser;
use hrl_shipper::commands::{dispatch, Cmd};

#[derive(Parser)]
#[command(
    name = "hrl-shipper",
    version,
    about = "Ship .hrl spools into an encrypted, deduplicated repository; restore"
)]
struct Cli {
    /// Log lines as text or JSON, one object per line.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
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
}

fn main() -> ExitCode {
    // FAILPOINTS (crash-matrix tests) only exist in `failpoints` builds.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    // The forwarder waits on its spool and the gateway and does little
    // work per wake-up: one thread is enough (the gateway benchmark
    // measured the same CPU per GB as with two workers).
    let mut builder = if cli.cmd.forwards() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hrl-shipper: cannot start the runtime: {e}");
            return ExitCode::from(4);
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("hrl-shipper: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
