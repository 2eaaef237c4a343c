//! `hrl-shipper failover`: restore a point for real and fence the disk, so
//! shippers of the old source refuse to publish for it from then on.

use std::path::PathBuf;

use uuid::Uuid;

use super::{PointArgs, RepoArgs};
use crate::error::{Result, ShipError};
use crate::repo::fence::{check_fence, record, FailoverRecord};
use crate::restore::PointSel;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    r: RepoArgs,
    #[command(flatten)]
    p: PointArgs,
    /// The target: a new image file, a block device at least as large as
    /// the disk, neither mounted nor tracked by an agent, or
    /// az://CONTAINER/NAME.vhd (a fixed VHD page blob for an Azure disk).
    #[arg(long)]
    to: PathBuf,
    /// With --to az://...: copy the point's snapshot from this standby
    /// (az://CONTAINER[/PREFIX] of `hrl-shipper standby`) instead of
    /// restoring it from the repository: a server-side copy.
    #[arg(long)]
    standby: Option<String>,
    /// Fail over again although the disk already failed over (the new
    /// record replaces the old one; the earlier target stops being the
    /// recorded one).
    #[arg(long)]
    force: bool,
    /// Do not ask for confirmation (needed off a terminal, e.g. in scripts).
    #[arg(long)]
    yes: bool,
}

/// Says what failover will do and asks on a terminal; off a terminal only
/// `--yes` lets it go ahead.
fn confirm(a: &Args, disk: &str, id: &Uuid, seq: u64) -> Result<()> {
    if a.yes {
        return Ok(());
    }
    let what = format!(
        "failover restores point {seq} of disk {disk} onto {}, then records failover/{id} in the repository: from then on the shippers of the old source refuse to publish points of this disk (its replication stops).",
        a.to.display(),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(ShipError::Usage(format!(
            "{what}
Not on a terminal to confirm: pass --yes to fail over. Nothing was done."
        )));
    }
    eprint!("{what}\nType yes to fail over: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| ShipError::io("stdin", "read confirmation", e))?;
    if line.trim() != "yes" {
        return Err(ShipError::Usage("failover not confirmed; nothing was done".into()));
    }
    Ok(())
}

pub async fn run(a: Args) -> Result<u8> {
    let repo = a.r.open().await?;
    let disk = a.p.disk_id(&repo).await?;
    let point = a.p.point;
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
    let seq = crate::restore::resolve(&repo, &disk, point).await?;
    let label = crate::repo::manifest::load(&repo, &disk, seq).await?.0.disk_label();
    confirm(&a, &label, &disk, seq)?;
    let o = crate::restore::RestoreOptions {
        progress: true,
        force: false,
    };
    let rep = super::write_point(&repo, &disk, PointSel::Seq(seq), &a.to, a.standby.as_deref(), o).await?;
    let rec = FailoverRecord {
        disk,
        point: rep.point,
        time_ns: hrl_format::now_ns(),
        target: a.to.display().to_string(),
        forced: a.force,
    };
    record(&repo, &rec).await?;
    println!(
        "failed over disk {label} to point {} on {} ({:.1}s); shippers of the old source now refuse to publish for this disk",
        rep.point,
        a.to.display(),
        rep.seconds
    );
    Ok(0)
}
