//! `hrl-shipper failback`: bring an existing device or image to a point,
//! writing only the chunks that differ.

use std::path::PathBuf;

use super::{print_json, PointArgs, RepoArgs};
use crate::error::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    r: RepoArgs,
    #[command(flatten)]
    p: PointArgs,
    /// The existing device or image to bring back.
    #[arg(long)]
    to: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> Result<u8> {
    let repo = a.r.open().await?;
    let disk = a.p.disk_id(&repo).await?;
    let point = a.p.point;
    let rep = crate::restore::failback(&repo, &disk, point, &a.to, true).await?;
    if a.json {
        return print_json(&rep).map(|()| 0);
    }
    println!(
        "failed back {} to point {} of disk {}: {} chunks compared, {} written ({} zero), {} already right; {:.1}s",
        a.to.display(),
        rep.point,
        rep.disk_label,
        rep.compared,
        rep.stored_chunks + rep.zero_chunks,
        rep.zero_chunks,
        rep.skipped,
        rep.seconds
    );
    Ok(0)
}
