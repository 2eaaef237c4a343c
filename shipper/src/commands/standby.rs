//! `hrl-shipper standby`: keep a standby VHD page blob per disk at the
//! newest published point, with a blob snapshot per point, so a failover
//! into Azure is a server-side copy (`failover --standby`).

use std::time::Duration;

use super::{print_json, RepoArgs};
use crate::azure::BlobUrl;
use crate::error::{Result, ShipError};
use crate::standby::{Applied, StandbyOptions};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    r: RepoArgs,
    /// Where the standby blobs go: az://CONTAINER[/PREFIX]; one
    /// `<disk id>.vhd` per disk (the AZURE_STORAGE_* variables name the
    /// account).
    #[arg(long)]
    to: String,
    /// A disk to keep (repeatable; HOST/NAME, NAME, id or id prefix).
    /// Default: every disk of the repository, new ones as they appear.
    #[arg(long)]
    disk: Vec<String>,
    /// Snapshots kept per disk at most (0: as many as the repository has
    /// points; snapshots of pruned points are always deleted).
    #[arg(long, default_value_t = 0)]
    keep: usize,
    /// How often to look for new points.
    #[arg(long, default_value = "5s")]
    poll: hrl_common::HumanDuration,
    /// Catch up with the newest point and exit.
    #[arg(long)]
    once: bool,
    /// One JSON line per point made ready.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> Result<u8> {
    let to = BlobUrl::parse(&a.to)
        .ok_or_else(|| ShipError::Usage(format!("{}: the standby goes to az://CONTAINER[/PREFIX]", a.to)))??;
    let repo = a.r.open().await?;
    let mut disks = Vec::new();
    for d in &a.disk {
        disks.push(crate::repo::disks::resolve(&repo, Some(d)).await?);
    }
    let o = StandbyOptions {
        to,
        disks,
        keep: a.keep,
        poll: Duration::from(a.poll),
        once: a.once,
    };
    let stop = super::run::stop_flag()?;
    let json = a.json;
    let mut print = |ap: &Applied, label: &str| {
        if json {
            let _ = print_json(ap);
        } else {
            println!(
                "standby: disk {label} at point {} (snapshot {}): {} chunks written, {} cleared, {} sent{} in {:.2}s",
                ap.point,
                ap.snapshot,
                ap.written,
                ap.cleared,
                hrl_format::human_bytes(ap.bytes),
                if ap.full { " (every chunk)" } else { "" },
                ap.seconds
            );
        }
    };
    let done = crate::standby::run(&repo, &o, &stop, &mut print).await?;
    if a.once && !json {
        println!("standby: {} point(s) made ready", done.len());
    }
    Ok(0)
}
