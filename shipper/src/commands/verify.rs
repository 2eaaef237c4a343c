//! `hrl-shipper verify`: compare a device or image with a point by hash;
//! exit 1 on any difference.

use std::path::PathBuf;

use super::{print_json, PointArgs, RepoArgs};
use crate::error::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    r: RepoArgs,
    #[command(flatten)]
    p: PointArgs,
    /// The device or image to compare.
    #[arg(long)]
    against: PathBuf,
    /// Print the differences as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> Result<u8> {
    let repo = a.r.open().await?;
    let disk = a.p.disk_id(&repo).await?;
    let point = a.p.point;
    let (seq, diffs) = crate::restore::verify(&repo, &disk, point, &a.against).await?;
    let label = crate::repo::manifest::load(&repo, &disk, seq).await?.0.disk_label();
    if a.json {
        print_json(&serde_json::json!({"disk": disk, "disk_label": label, "point": seq, "differences": diffs}))?;
    } else if diffs.is_empty() {
        println!("{} matches point {seq} of disk {label}", a.against.display());
    } else {
        for d in &diffs {
            println!("differs: offset {} length {}", d.offset, d.len);
        }
        println!(
            "{} differs from point {seq} of disk {label} in {} ranges, {} in all",
            a.against.display(),
            diffs.len(),
            hrl_format::human_bytes(diffs.iter().map(|d| d.len).sum())
        );
    }
    Ok(if diffs.is_empty() { 0 } else { 1 })
}
