//! `hrl-shipper points`: list published points (or a group's points).

use std::io::Write;

use super::{print_json, SourceArgs};
use crate::error::Result;
use crate::repo::disks::{self, DiskInfo};
use crate::repo::manifest::PointHeader;
use crate::repo::{groups, manifest, Repo};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    src: SourceArgs,
    /// Only this disk's points: HOST/NAME, NAME when unique, its id or a
    /// unique id prefix (default: every disk).
    #[arg(long, conflicts_with = "group")]
    disk: Option<String>,
    /// The points of this consistency group instead.
    #[arg(long, conflicts_with = "identity")]
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
    if let Some(identity) = &a.src.identity {
        let id = crate::forward::Identity::load(identity)?;
        let all = crate::forward::restore::disks(&id).await?;
        let chosen: Vec<DiskInfo> = match a.disk.as_deref() {
            Some(sel) => vec![disks::select(&all, Some(sel), &id.gateway)?.clone()],
            None => all,
        };
        let mut rows = Vec::new();
        for d in chosen {
            let hs = crate::forward::restore::points(&id, &d.id).await?;
            rows.push((d, hs));
        }
        return print_points(&rows, a.before, a.json);
    }
    let repo = a.src.open_repo("points").await?;
    match &a.group {
        Some(g) => group_points(&repo, g, a.json).await,
        None => disk_points(&repo, a.disk.as_deref(), a.before, a.json).await,
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

async fn disk_points(repo: &Repo, disk: Option<&str>, before: Option<u64>, json: bool) -> Result<u8> {
    let all = disks::list(repo).await?;
    let chosen: Vec<&DiskInfo> = match disk {
        Some(sel) => vec![disks::select(&all, Some(sel), &repo.url)?],
        None => all.iter().collect(),
    };
    let mut rows = Vec::new();
    for d in chosen {
        let mut hs = Vec::new();
        for seq in manifest::list_points(repo, &d.id).await? {
            hs.push(manifest::load(repo, &d.id, seq).await?.0);
        }
        rows.push((d.clone(), hs));
    }
    print_points(&rows, before, json)
}

/// The table (or JSON lines) of every disk's points.
fn print_points(rows: &[(DiskInfo, Vec<PointHeader>)], before: Option<u64>, json: bool) -> Result<u8> {
    let width = rows.iter().map(|(d, _)| d.label().len()).max().unwrap_or(0).max(4);
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the listing quietly.
    if !json
        && writeln!(
            out,
            "{:<width$} {:>6} {:<5} {:>10} {:<34} {:>8} {:>10}  LABEL",
            "DISK", "POINT", "KIND", "SIZE", "TIME (UTC)", "CHUNKS", "NEW"
        )
        .is_err()
    {
        return Ok(0);
    }
    let now = hrl_format::now_ns();
    for (d, hs) in rows {
        for h in hs.iter().filter(|h| before.is_none_or(|t| h.time_ns <= t)) {
            let r = if json {
                let line =
                    serde_json::to_string(h).map_err(|e| crate::ShipError::Internal(format!("encode point: {e}")))?;
                writeln!(out, "{line}")
            } else {
                writeln!(
                    out,
                    "{:<width$} {:>6} {:<5} {:>10} {:<34} {:>8} {:>10}  {}",
                    d.label(),
                    h.seq,
                    format!("{:?}", h.kind).to_lowercase(),
                    hrl_format::human_bytes(h.device_size),
                    hrl_common::time::when(h.time_ns, now),
                    h.entries,
                    hrl_format::human_bytes(h.new_bytes),
                    h.label.as_deref().unwrap_or("")
                )
            };
            if r.is_err() {
                return Ok(0);
            }
        }
    }
    Ok(0)
}
