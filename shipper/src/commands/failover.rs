//! `hrl-shipper failover`: restore a point for real and fence the disk, so
//! shippers of the old source refuse to publish for it from then on.

use std::path::PathBuf;

use super::{PointArgs, RepoArgs};
use crate::error::{Result, ShipError};
use crate::repo::fence::{check_fence, record, FailoverRecord};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    r: RepoArgs,
    #[command(flatten)]
    p: PointArgs,
    /// The target: a new image file or a block device at least as large as the disk.
    #[arg(long)]
    to: PathBuf,
    /// Fail over again although the disk already failed over (the new
    /// record replaces the old one; the earlier target stops being the
    /// recorded one).
    #[arg(long)]
    force: bool,
}

pub async fn run(a: Args) -> Result<u8> {
    let repo = a.r.open().await?;
    let PointArgs { disk, point } = a.p;
    if !a.force {
        // Only a fence says "already failed over"; any other error (the
        // store is down) is reported as what it is.
        match check_fence(&repo, &disk).await {
            Ok(()) => {}
            Err(e @ ShipError::Fenced { .. }) => {
                return Err(ShipError::Usage(format!(
                    "{e}\nIt already failed over; --force fails over again (only if the earlier target is abandoned: both sides would otherwise claim the disk)."
                )))
            }
            Err(e) => return Err(e),
        }
    }
    let rep = crate::restore::restore(&repo, &disk, point, &a.to, true).await?;
    let rec = FailoverRecord {
        disk,
        point: rep.point,
        time_ns: hrl_format::now_ns(),
        target: a.to.display().to_string(),
        forced: a.force,
    };
    record(&repo, &rec).await?;
    println!(
        "failed over disk {disk} to point {} on {} ({:.1}s); shippers of the old source now refuse to publish for this disk",
        rep.point,
        a.to.display(),
        rep.seconds
    );
    Ok(0)
}
