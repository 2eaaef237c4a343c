//! `hrl-shipper failback`: bring an existing device or image to a point,
//! writing only the chunks that differ; with `--identity`, through the
//! process server (the machine holds no key).

use std::path::PathBuf;

use super::{print_json, PointArgs, SourceArgs};
use crate::error::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    src: SourceArgs,
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
    let rep = match &a.src.identity {
        Some(identity) => {
            let id = crate::forward::Identity::load(identity)?;
            let disk = crate::forward::restore::resolve(&id, a.p.disk.as_deref()).await?;
            crate::forward::failback::failback(&id, &disk, a.p.point, &a.to).await?
        }
        None => {
            let repo = a.src.open_repo("failback").await?;
            let disk = a.p.disk_id(&repo).await?;
            crate::restore::failback(&repo, &disk, a.p.point, &a.to, true).await?
        }
    };
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
