//! `hrl-shipper points`: list published points (or a group's points).

use std::io::Write;

use uuid::Uuid;

use super::{print_json, RepoArgs};
use crate::error::Result;
use crate::repo::{groups, manifest, Repo};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    r: RepoArgs,
    /// Only this disk's points (default: every disk).
    #[arg(long, conflicts_with = "group")]
    disk: Option<Uuid>,
    /// The points of this consistency group instead.
    #[arg(long)]
    group: Option<String>,
    /// Only points taken at or before this time: RFC 3339
    /// (2026-11-28T16:21:40Z) or an age ("10 min ago").
    #[arg(long, value_parser = super::parse_before)]
    before: Option<u64>,
    /// One JSON object per point.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> Result<u8> {
    let repo = a.r.open().await?;
    match &a.group {
        Some(g) => group_points(&repo, g, a.json).await,
        None => disk_points(&repo, a.disk, a.before, a.json).await,
    }
}

async fn group_points(repo: &Repo, group: &str, json: bool) -> Result<u8> {
    let points = groups::list(repo, group).await?;
    if json {
        for g in &points {
            print_json(g)?;
        }
        return Ok(0);
    }
    println!("{:<16} {:>16} {:>8}  STATE", "GROUP", "POINT", "MEMBERS");
    for g in &points {
        println!(
            "{:<16} {:>16} {:>3} of {:<2}  {}",
            g.group,
            g.seq,
            g.published.len(),
            g.members,
            if g.complete {
                "published"
            } else {
                "incomplete (not restorable)"
            }
        );
    }
    Ok(0)
}

async fn disk_points(repo: &Repo, disk: Option<Uuid>, before: Option<u64>, json: bool) -> Result<u8> {
    let disks = match disk {
        Some(d) => vec![d],
        None => manifest::list_disks(repo).await?,
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the listing quietly.
    if !json
        && writeln!(
            out,
            "{:<36} {:>6} {:<6} {:>10} {:<34} {:>8} {:>10}",
            "DISK", "POINT", "KIND", "SIZE", "TIME (UTC)", "CHUNKS", "NEW"
        )
        .is_err()
    {
        return Ok(0);
    }
    for d in disks {
        for seq in manifest::list_points(repo, &d).await? {
            let (h, _) = manifest::load(repo, &d, seq).await?;
            if before.is_some_and(|t| h.time_ns > t) {
                continue;
            }
            let r = if json {
                let line =
                    serde_json::to_string(&h).map_err(|e| crate::ShipError::Internal(format!("encode point: {e}")))?;
                writeln!(out, "{line}")
            } else {
                writeln!(
                    out,
                    "{:<36} {:>6} {:<6} {:>10} {:<34} {:>8} {:>10}",
                    d.to_string(),
                    seq,
                    format!("{:?}", h.kind).to_lowercase(),
                    hrl_format::human_bytes(h.device_size),
                    hrl_common::time::when(h.time_ns, hrl_format::now_ns()),
                    h.entries,
                    hrl_format::human_bytes(h.new_bytes)
                )
            };
            if r.is_err() {
                return Ok(0);
            }
        }
    }
    Ok(0)
}
