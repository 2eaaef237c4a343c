//! `hrl-shipper restore`: a point onto an image file, a block device or a
//! VHD page blob, or every member of a group point into a directory.

use std::path::PathBuf;

use super::{print_json, stderr_is_terminal, SourceArgs};
use crate::error::{Result, ShipError};
use crate::restore::group::restore_group;
use crate::restore::{PointSel, RestoreOptions};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    src: SourceArgs,
    /// The disk: HOST/NAME, NAME when unique in the repository, its id, or
    /// a unique id prefix (`hrl-shipper points` lists them). Default: the
    /// repository's only disk.
    #[arg(long, conflicts_with = "group")]
    disk: Option<String>,
    /// Restore every member of a complete point of this consistency group.
    #[arg(long, requires = "to_dir", conflicts_with = "identity")]
    group: Option<String>,
    /// `latest` or a point sequence (with --group: a group sequence).
    #[arg(long, default_value = "latest")]
    point: PointSel,
    /// The newest point taken at or before this time: RFC 3339
    /// (2026-11-28T16:21:40Z) or an age ("10 min ago").
    #[arg(long, value_parser = super::parse_before, conflicts_with = "group")]
    before: Option<u64>,
    /// The target: a new image file (created 0600), a block device at
    /// least as large as the disk, neither mounted nor tracked by an agent,
    /// or az://CONTAINER/NAME.vhd: a fixed VHD page blob Azure can create
    /// a managed disk from (the AZURE_STORAGE_* variables name the account).
    #[arg(long, required_unless_present = "group")]
    to: Option<PathBuf>,
    /// With --group: the directory for the members' images (<disk id>.img).
    #[arg(long)]
    to_dir: Option<PathBuf>,
    /// With --to az://...: copy the point's snapshot from this standby
    /// (az://CONTAINER[/PREFIX] of `hrl-shipper standby`), a server-side
    /// copy, instead of restoring from the repository.
    #[arg(long, conflicts_with_all = ["group", "identity"])]
    standby: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Overwrite an existing non-empty image file or blob given as --to (a
    /// mounted or tracked device is refused even so).
    #[arg(long)]
    force: bool,
}

/// Prints a restore's report.
fn report(rep: &crate::restore::RestoreReport, json: bool) -> Result<u8> {
    if json {
        return print_json(rep).map(|()| 0);
    }
    println!(
        "restored point {} ({}) of disk {} to {}: {} disk, {} of data written in {:.2}s ({:.0} MiB/s of data), {} stored and {} zero chunks, every chunk verified",
        rep.point,
        format!("{:?}", rep.kind).to_lowercase(),
        rep.disk_label,
        rep.target.display(),
        hrl_format::human_bytes(rep.device_size),
        hrl_format::human_bytes(rep.bytes_written),
        rep.seconds,
        rep.bytes_written as f64 / 1048576.0 / rep.seconds.max(1e-9),
        rep.stored_chunks,
        rep.zero_chunks
    );
    if rep.kind == hrl_format::PointKind::Fuzzy {
        println!(
            "note: this point is FUZZY (the disk had no frozen filesystem): it is not an exact image of one moment"
        );
    }
    Ok(0)
}

/// `restore --identity`: through the process server.
async fn via_gateway(a: &Args, identity: &std::path::Path, to: &std::path::Path) -> Result<u8> {
    if matches!((a.before, a.point), (Some(_), PointSel::Seq(_))) {
        return Err(ShipError::Usage("give --point SEQ or --before TIME, not both".into()));
    }
    if super::blob_target(to).is_some() {
        return Err(ShipError::Usage(format!(
            "{}: restoring into Azure runs where the storage key is (the process server), not through --identity",
            to.display()
        )));
    }
    let id = crate::forward::Identity::load(identity)?;
    let disk = crate::forward::restore::resolve(&id, a.disk.as_deref()).await?;
    let rep = crate::forward::restore::restore(&id, &disk, a.point, a.before, to, a.force).await?;
    report(&rep, a.json)
}

pub async fn run(a: Args) -> Result<u8> {
    if let (Some(identity), Some(to)) = (&a.src.identity, &a.to) {
        return via_gateway(&a, identity, to).await;
    }
    let repo = a.src.open_repo("restore").await?;
    if let (Some(group), Some(dir)) = (&a.group, &a.to_dir) {
        let reps = restore_group(&repo, group, a.point, dir).await?;
        for rep in &reps {
            if a.json {
                print_json(rep)?;
            } else {
                println!(
                    "restored disk {} point {} to {} ({:.1}s), every chunk verified",
                    rep.disk_label,
                    rep.point,
                    rep.target.display(),
                    rep.seconds
                );
            }
        }
        if !a.json {
            println!("group {group}: {} members restored into {}", reps.len(), dir.display());
        }
        return Ok(0);
    }
    let Some(to) = &a.to else {
        return Err(ShipError::Usage("restore needs --to (or --group and --to-dir)".into()));
    };
    let disk = crate::repo::disks::resolve(&repo, a.disk.as_deref()).await?;
    let point = match (a.before, a.point) {
        (None, p) => p,
        (Some(t), PointSel::Latest) => PointSel::Seq(crate::restore::newest_before(&repo, &disk, t).await?),
        (Some(_), PointSel::Seq(_)) => {
            return Err(ShipError::Usage("give --point SEQ or --before TIME, not both".into()))
        }
    };
    let o = RestoreOptions {
        progress: stderr_is_terminal() || !a.json,
        force: a.force,
    };
    let rep = crate::standby::write_point(&repo, &disk, point, to, a.standby.as_deref(), o).await?;
    report(&rep, a.json)
}
