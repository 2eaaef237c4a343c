//! `hrl-shipper status`: what a running shipper (or forwarder) reports,
//! from the spool's status file (exit 1 when nobody has updated it for
//! 10 s).

use std::path::PathBuf;

use crate::error::{Result, ShipError};
use crate::ship::status::load;

#[derive(clap::Args)]
pub struct Args {
    /// The spool the shipper follows (its status file is there).
    #[arg(long)]
    spool: PathBuf,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<u8> {
    let fwd = crate::forward::status::path(&a.spool);
    let ship = crate::ship::status::status_path(&a.spool);
    let newer = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if fwd.exists() && newer(&fwd) >= newer(&ship) {
        return forwarder(&a);
    }
    let st = load(&a.spool)?;
    let age = hrl_format::now_ns().saturating_sub(st.updated_ns) as f64 / 1e9;
    if a.json {
        let s = serde_json::to_string_pretty(&st).map_err(|e| ShipError::Internal(format!("encode status: {e}")))?;
        println!("{s}");
    } else {
        println!(
            "shipper pid {} -> {}: {} points published, {} shipped, {} uploaded, {} endpoint errors",
            st.pid,
            st.repo,
            st.points_published,
            hrl_format::human_bytes(st.data_bytes),
            hrl_format::human_bytes(st.upload_bytes),
            st.endpoint_errors
        );
        let label = |d: &uuid::Uuid, ds: &crate::ship::status::DiskShipStatus| ds.label().unwrap_or(d.to_string());
        let width = st
            .disks
            .iter()
            .map(|(d, ds)| label(d, ds).len())
            .max()
            .unwrap_or(0)
            .max(4);
        println!(
            "{:<width$} {:>8} {:>10} {:>12}  RPO_WARN",
            "DISK", "POINT", "RPO", "UNPUBLISHED"
        );
        for (d, ds) in &st.disks {
            println!(
                "{:<width$} {:>8} {:>10} {:>12}  {}",
                label(d, ds),
                ds.last_point.map_or("-".into(), |p| p.to_string()),
                ds.rpo_seconds.map_or("-".into(), |r| format!("{r:.1}s")),
                hrl_format::human_bytes(ds.unpublished_bytes),
                if ds.rpo_exceeded { "EXCEEDED" } else { "ok" }
            );
            if let Some(h) = &ds.waiting_for_lease {
                println!("  waiting for the disk's lease, held by {h}");
            }
        }
        print_last(st.last_error.as_deref(), st.metrics.as_deref());
    }
    Ok(staleness(age, "shipper"))
}

/// The last error and the metrics address, under either status.
fn print_last(error: Option<&str>, metrics: Option<&str>) {
    if let Some(e) = error {
        println!("last error: {e}");
    }
    if let Some(m) = metrics {
        println!("metrics: http://{m}/metrics");
    }
}

/// Exit 1 for a status file nobody updates: its writer is not running.
fn staleness(age: f64, who: &str) -> u8 {
    if age > 10.0 {
        eprintln!("hrl-shipper: the status is {age:.0}s old: is the {who} running on this spool?");
        return 1;
    }
    0
}

/// The forwarder's status (`run --identity`).
fn forwarder(a: &Args) -> Result<u8> {
    let st = crate::forward::status::load(&a.spool)?;
    let age = hrl_format::now_ns().saturating_sub(st.updated_ns) as f64 / 1e9;
    if a.json {
        let s = serde_json::to_string_pretty(&st).map_err(|e| ShipError::Internal(format!("encode status: {e}")))?;
        println!("{s}");
    } else {
        let ack = st.last_ack_ns.map_or("never".into(), |t| {
            format!("{:.1}s ago", hrl_format::now_ns().saturating_sub(t) as f64 / 1e9)
        });
        println!(
            "forwarder pid {} ({}) -> {}: gateway {}; last acknowledged {ack}; {} sent, {} segments complete there; policy {}",
            st.pid,
            st.machine,
            st.gateway,
            if st.reachable { "reachable" } else { "UNREACHABLE" },
            hrl_format::human_bytes(st.report.bytes_sent),
            st.report.segments_completed,
            st.policy.as_deref().unwrap_or("none")
        );
        println!("{:<36} {:>10} {:>16} {:>12}", "DISK", "COMPLETE", "SENDING", "PENDING");
        for (d, ds) in &st.disks {
            println!(
                "{:<36} {:>10} {:>16} {:>12}",
                d.to_string(),
                ds.complete_through.map_or("-".into(), |c| c.to_string()),
                ds.open.map_or("-".into(), |(s, o)| format!("{s}@{o}")),
                hrl_format::human_bytes(ds.pending_bytes)
            );
        }
        print_last(st.last_error.as_deref(), st.metrics.as_deref());
    }
    Ok(staleness(age, "forwarder"))
}
