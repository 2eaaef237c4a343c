//! `hrl-shipper prune`: remove points outside a retention policy and the
//! packs only they needed.

use hrl_common::HumanDuration;

use super::{print_json, RepoArgs};
use crate::error::Result;
use crate::prune::{prune, Policy, PruneOptions};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    r: RepoArgs,
    /// Keep every point younger than this (e.g. 24h, 7d).
    #[arg(long)]
    keep_within: Option<HumanDuration>,
    /// Keep the newest point of each of the last N hours.
    #[arg(long)]
    keep_hourly: Option<u64>,
    /// Keep the newest point of each of the last N days (UTC).
    #[arg(long)]
    keep_daily: Option<u64>,
    /// Keep the newest point of each of the last N weeks.
    #[arg(long)]
    keep_weekly: Option<u64>,
    /// Say what would go; change nothing (takes no lock).
    #[arg(long)]
    dry_run: bool,
    /// Wait after taking the lock so shippers mid-publish finish.
    #[arg(long, default_value = "30s")]
    grace: HumanDuration,
    /// Never delete packs younger than this (unpublished windows of
    /// running shippers may use them).
    #[arg(long, default_value = "24h")]
    pack_grace: HumanDuration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> Result<u8> {
    let repo = a.r.open().await?;
    let opts = PruneOptions {
        policy: Policy {
            keep_within: a.keep_within.map(Into::into),
            keep_hourly: a.keep_hourly,
            keep_daily: a.keep_daily,
            keep_weekly: a.keep_weekly,
        },
        per_disk: Default::default(),
        dry_run: a.dry_run,
        grace: a.grace.into(),
        pack_grace: a.pack_grace.into(),
    };
    let rep = prune(&repo, &opts).await?;
    if a.json {
        return print_json(&rep).map(|()| 0);
    }
    println!(
        "{}{} disks: {} points kept, {} removed, {} rewritten as checkpoints; {} packs kept, {} deleted ({}); {} index objects consolidated",
        if a.dry_run { "dry run (nothing changed): " } else { "" },
        rep.disks,
        rep.points_kept,
        rep.points_removed,
        rep.checkpoints_rewritten,
        rep.packs_kept,
        rep.packs_deleted,
        hrl_format::human_bytes(rep.bytes_deleted),
        rep.index_objects_replaced
    );
    Ok(0)
}
