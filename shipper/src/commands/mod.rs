//! One module per verb of `hrl-shipper`: its arguments (with their help
//! text and defaults) and what it does and prints. `main.rs` only parses
//! the command line, sets up logging and the runtime, and maps an error to
//! its exit code.
//!
//! To add a command: a file here with an `Args` struct and
//! `pub async fn run(a: Args) -> Result<u8>`, a variant in [`Cmd`], an arm
//! in [`dispatch`], and its section in docs/operations.md.

pub mod check;
pub mod enroll;
pub mod failback;
pub mod failover;
pub mod fleet;
pub mod init;
pub mod machines;
pub mod points;
pub mod prune;
pub mod restore;
pub mod run;
pub mod serve;
pub mod standby;
pub mod status;
pub mod test_failover;
pub mod verify;

use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;
use uuid::Uuid;

use crate::error::{Result, ShipError};
use crate::repo::Repo;
use crate::restore::PointSel;

/// `--to az://CONTAINER/NAME.vhd`: a page blob target (None: a file or
/// device path).
pub fn blob_target(to: &std::path::Path) -> Option<Result<crate::azure::BlobUrl>> {
    to.to_str().and_then(crate::azure::BlobUrl::parse)
}

/// The repository a command works on.
#[derive(clap::Args, Clone)]
pub struct RepoArgs {
    /// Repository URL: file:///path (or an absolute path), or
    /// az://container/prefix with the AZURE_STORAGE_* variables (Azurite:
    /// AZURE_STORAGE_USE_EMULATOR and AZURITE_BLOB_STORAGE_URL).
    #[arg(long)]
    pub repo: String,
    /// Key file (64 hex characters, mode 0600).
    #[arg(long, env = "HRL_KEY_FILE")]
    pub key_file: PathBuf,
}

impl RepoArgs {
    pub async fn open(&self) -> Result<Repo> {
        Repo::open(&self.repo, &self.key_file).await
    }
}

/// A repository, or the process server this machine is enrolled with
/// (`points`, `restore` and `failback` on a machine that holds no key).
#[derive(clap::Args, Clone)]
pub struct SourceArgs {
    /// Repository URL: file:///path (or an absolute path), or
    /// az://container/prefix with the AZURE_STORAGE_* variables.
    #[arg(long, required_unless_present = "identity")]
    pub repo: Option<String>,
    /// Key file (64 hex characters, mode 0600).
    #[arg(long, env = "HRL_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Through the process server this machine is enrolled with (its
    /// identity file): this machine's disks only, no key needed.
    #[arg(long, conflicts_with = "repo")]
    pub identity: Option<PathBuf>,
}

impl SourceArgs {
    /// The repository (without --identity).
    pub async fn open_repo(&self, verb: &str) -> Result<Repo> {
        let key_file = self
            .key_file
            .clone()
            .ok_or_else(|| ShipError::Usage(format!("{verb} needs --key-file (or HRL_KEY_FILE), or --identity")))?;
        Repo::open(self.repo.as_deref().unwrap_or_default(), &key_file).await
    }
}

/// Which disk and point.
#[derive(clap::Args, Clone)]
pub struct PointArgs {
    /// The disk: HOST/NAME, NAME when unique in the repository, its id, or
    /// a unique id prefix (`hrl-shipper points` lists them). Default: the
    /// repository's only disk.
    #[arg(long)]
    pub disk: Option<String>,
    /// `latest` or a point sequence.
    #[arg(long, default_value = "latest")]
    pub point: PointSel,
}

impl PointArgs {
    /// The disk id `--disk` names in `repo` (refused when it names several
    /// or none, with the candidates listed).
    pub async fn disk_id(&self, repo: &Repo) -> Result<Uuid> {
        crate::repo::disks::resolve(repo, self.disk.as_deref()).await
    }
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a repository (and the key file, 0600, if it does not exist).
    Init(init::Args),
    /// Ship the spool: follow it (daemon) or, with --once, ship what is
    /// there. With --identity, forward it to a process server instead.
    Run(Box<run::Args>),
    /// The process server: machines stream their spools to it over TLS;
    /// it holds the repository key and ships for all of them.
    Serve(serve::Args),
    /// On the process server: add (enrollment token), list or revoke machines.
    Machines(machines::Args),
    /// The process server's fleet view: every machine and disk, RPO,
    /// alerts (exit 1 when an alert is raised).
    Fleet(fleet::Args),
    /// On a protected machine: pin the process server's certificate and
    /// trade an enrollment token for this machine's identity.
    Enroll(enroll::Args),
    /// What a running shipper reports (read from the spool's status file).
    Status(status::Args),
    /// List published points (with --group: the group's points, and
    /// whether every member is published).
    Points(points::Args),
    /// Restore a point to an image file, a block device or a VHD page blob
    /// (az://C/NAME.vhd); with --group,
    /// every member of a complete group point into --to-dir.
    Restore(restore::Args),
    /// Restore a point for real and record that the disk failed over: from
    /// then on, a shipper of the old source refuses to publish its points.
    Failover(failover::Args),
    /// Restore a point into a scratch target, run a check command on it,
    /// report, and remove the target. Replication is not touched.
    TestFailover(test_failover::Args),
    /// Keep a standby VHD page blob per disk at the newest point, with a
    /// blob snapshot per point (failover --standby copies one).
    Standby(standby::Args),
    /// Bring an existing device or image to a point, writing only the
    /// chunks that differ.
    Failback(failback::Args),
    /// Compare a device or image with a point by hash; exit 1 on any difference.
    Verify(verify::Args),
    /// Remove points outside a retention policy and the packs only they
    /// needed. The newest point of every disk is always kept.
    Prune(prune::Args),
    /// Check the repository: every referenced chunk exists; with
    /// --read-data, every chunk decrypts and hashes to its id.
    Check(check::Args),
}

impl Cmd {
    /// `run --identity`: the forwarder, which runs on one thread.
    pub fn forwards(&self) -> bool {
        matches!(self, Cmd::Run(a) if a.forwards())
    }
}

/// Runs a parsed command; the exit code on success (1: it ran, but found
/// a difference or a problem).
pub async fn dispatch(cmd: Cmd) -> Result<u8> {
    match cmd {
        Cmd::Init(a) => init::run(a).await,
        Cmd::Run(a) => run::run(*a).await,
        Cmd::Serve(a) => serve::run(a).await,
        Cmd::Machines(a) => machines::run(a).await,
        Cmd::Fleet(a) => fleet::run(a).await,
        Cmd::Enroll(a) => enroll::run(a).await,
        Cmd::Status(a) => status::run(a),
        Cmd::Points(a) => points::run(a).await,
        Cmd::Restore(a) => restore::run(a).await,
        Cmd::Failover(a) => failover::run(a).await,
        Cmd::TestFailover(a) => test_failover::run(a).await,
        Cmd::Standby(a) => standby::run(a).await,
        Cmd::Failback(a) => failback::run(a).await,
        Cmd::Verify(a) => verify::run(a).await,
        Cmd::Prune(a) => prune::run(a).await,
        Cmd::Check(a) => check::run(a).await,
    }
}

/// A `--before` value: RFC 3339 (`2026-11-28T16:21:40Z`) or an age
/// (`10 min ago`), as ns since the epoch.
pub fn parse_before(s: &str) -> std::result::Result<u64, String> {
    hrl_common::time::parse_time(s, hrl_format::now_ns()).map_err(|e| e.to_string())
}

/// One JSON document on stdout.
pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string(v).map_err(|e| ShipError::Internal(format!("encode JSON output: {e}")))?;
    println!("{s}");
    Ok(())
}

/// Whether stderr is a terminal (progress bars go there).
pub fn stderr_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}
