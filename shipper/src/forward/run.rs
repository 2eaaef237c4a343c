//! The forwarder's loop: follow every disk of the spool and send each
//! segment's new whole records to the gateway as the agent writes them.
//!
//! The gateway says where each disk stands (`GET /v1/disks/D`); the
//! forwarder sends the bytes after that point (`PUT .../segments/S?offset=N`)
//! and moves on when the gateway has the whole sealed segment, which it then
//! deletes from the spool. Segments go in order; a refused or lost request
//! is followed by asking again where the disk stands, so a resend can never
//! duplicate or skip a byte.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hrl_format::SegmentStream;
use reqwest::Method;
use uuid::Uuid;

use super::client::GatewayClient;
use super::identity::Identity;
pub use super::status::ForwardReport;
use crate::error::{Result, ShipError};
use crate::gateway::ingest::DiskProgress;

/// Bytes read from a segment per request (more when one record is larger).
const RANGE: usize = 4 << 20;

/// What `run --gateway` is told.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    pub spool: PathBuf,
    /// Send what is there, then return.
    pub once: bool,
    pub poll: Duration,
    /// Where the daemon publishes its status (status file, metrics).
    pub status: Option<super::status::SharedForward>,
}

impl ForwardOptions {
    pub fn new(spool: impl Into<PathBuf>) -> Self {
        ForwardOptions {
            spool: spool.into(),
            once: false,
            // Each check costs the protected machine a wake-up, a look at
            // the spool directory and a stat: every 100 ms that was 0.25%
            // of a core for an idle forwarder; 250 ms adds at most 0.15 s
            // to the RPO.
            poll: Duration::from_millis(250),
            status: None,
        }
    }
}

/// One disk: where the gateway stands and the checked local stream of the
/// segment being sent.
#[derive(Default)]
struct DiskForward {
    progress: Option<DiskProgress>,
    stream: Option<(u64, SegmentStream)>,
}

/// Forwards the spool to the identity's gateway until `stop` (or, with
/// `once`, until every complete record is acknowledged).
pub async fn forward(id: &Identity, opts: &ForwardOptions, stop: &AtomicBool) -> Result<ForwardReport> {
    let _lock = crate::ship::spool_lock::SpoolLock::acquire(&opts.spool)?;
    let client = id.client(&id.gateway)?;
    let mut disks: HashMap<Uuid, DiskForward> = HashMap::new();
    let mut report = ForwardReport::default();
    let mut backoff = Duration::from_millis(500);
    let mut policy = super::policy::PolicySync::default();
    let mut saved = std::time::Instant::now() - Duration::from_secs(10);
    while !stop.load(Ordering::Relaxed) {
        if !opts.once {
            policy.tick(&client, &opts.spool).await;
        }
        let mut any = false;
        let mut failed = None;
        let sent = report.bytes_sent;
        for d in hrl_format::list_disks(&opts.spool)? {
            let st = disks.entry(d).or_default();
            match step(&client, &opts.spool, d, st, &mut report).await {
                Ok(a) => any |= a,
                Err(e @ ShipError::Gateway { .. }) => {
                    *st = DiskForward::default();
                    failed = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(shared) = &opts.status {
            let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
            if report.bytes_sent > sent {
                g.last_ack_ns = Some(hrl_format::now_ns());
            }
            g.reachable = failed.is_none();
            if let Some(e) = &failed {
                g.last_error = Some(e.to_string());
            }
            if saved.elapsed() >= Duration::from_secs(1) {
                saved = std::time::Instant::now();
                publish(&mut g, &opts.spool, &disks, &report, policy.applied_name());
            }
        }
        if let Some(e) = failed {
            report.endpoint_errors += 1;
            if opts.once && report.endpoint_errors > 5 {
                return Err(e);
            }
            tracing::warn!(gateway = %client.url, error = %e, backoff_ms = backoff.as_millis() as u64, "gateway unreachable; the spool is kept");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            continue;
        }
        backoff = Duration::from_millis(500);
        if !any {
            if opts.once {
                break;
            }
            tokio::time::sleep(opts.poll).await;
        }
    }
    Ok(report)
}

/// Brings the shared status up to date and writes the status file.
fn publish(
    g: &mut super::status::ForwardStatus,
    spool: &Path,
    disks: &HashMap<Uuid, DiskForward>,
    report: &ForwardReport,
    policy: Option<String>,
) {
    g.updated_ns = hrl_format::now_ns();
    g.report = report.clone();
    g.policy = policy;
    g.disks.clear();
    for (d, df) in disks {
        let p = df.progress.unwrap_or_default();
        let mut ds = super::status::ForwardDiskStatus {
            complete_through: p.complete_through,
            open: p.open,
            pending_bytes: 0,
        };
        ds.pending_bytes = super::status::pending(spool, d, &ds);
        g.disks.insert(*d, ds);
    }
    if let Err(e) = super::status::save(spool, g) {
        tracing::warn!(error = %e, "could not write the forwarder's status file");
    }
}

/// Sends what is new of one disk; true when anything moved.
async fn step(
    c: &GatewayClient,
    spool: &Path,
    disk: Uuid,
    st: &mut DiskForward,
    report: &mut ForwardReport,
) -> Result<bool> {
    let progress = match st.progress {
        Some(p) => p,
        None => {
            let p = ask(c, disk, report).await?;
            st.progress = Some(p);
            p
        }
    };
    let mut any = false;
    for seg in hrl_format::list_segments(spool, Some(disk))? {
        if progress.complete_through.is_some_and(|c| seg.seq <= c) {
            // The gateway holds it whole and durable: it can go.
            std::fs::remove_file(&seg.path).map_err(|e| ShipError::io(&seg.path, "delete forwarded segment", e))?;
            report.segments_completed += 1;
            any = true;
            continue;
        }
        let offset = match progress.open {
            Some((s, o)) if s == seg.seq => o,
            Some((s, _)) if s < seg.seq => {
                return Err(ShipError::Point {
                    disk: disk.to_string(),
                    why: format!(
                        "the gateway holds segment {s} incomplete, but the spool has no such segment any more"
                    ),
                })
            }
            _ => 0,
        };
        return send(c, &seg.path, (disk, seg.seq, offset), st, report)
            .await
            .map(|a| a || any);
    }
    Ok(any)
}

async fn ask(c: &GatewayClient, disk: Uuid, report: &mut ForwardReport) -> Result<DiskProgress> {
    report.requests += 1;
    match c.call(Method::GET, &format!("/v1/disks/{disk}"), None).await? {
        Ok(v) => serde_json::from_value(v).map_err(|e| ShipError::Gateway {
            url: c.url.clone(),
            why: format!("progress of disk {disk}: {e}"),
        }),
        Err(a) => Err(refused(c, disk, a)),
    }
}

fn refused(c: &GatewayClient, disk: Uuid, a: super::client::Answer) -> ShipError {
    match a.status {
        401 | 403 | 404 | 405 => ShipError::Usage(format!("gateway {} refused disk {disk}: {}", c.url, a.error())),
        422 => ShipError::corrupt(
            format!("disk {disk}"),
            format!("the gateway refused the spool's bytes: {}", a.error()),
        ),
        _ => ShipError::Gateway {
            url: c.url.clone(),
            why: format!("HTTP {}: {}", a.status, a.error()),
        },
    }
}

/// The checked stream of `path` up to `offset` (what the gateway holds).
fn stream_at(path: &Path, offset: u64) -> Result<SegmentStream> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| ShipError::io(path, "open", e))?;
    let mut buf = vec![0u8; offset as usize];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| ShipError::io(path, "read", e))?;
    let mut s = SegmentStream::new(path);
    if s.take_whole(&buf)? as u64 != offset {
        return Err(ShipError::corrupt(
            path.display().to_string(),
            format!("the gateway holds {offset} bytes of it, which do not end at a record boundary here"),
        ));
    }
    Ok(s)
}

/// Sends the next whole records of one segment from `offset`.
async fn send(
    c: &GatewayClient,
    path: &Path,
    (disk, seq, offset): (Uuid, u64, u64),
    st: &mut DiskForward,
    report: &mut ForwardReport,
) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let stream = match st.stream.take() {
        Some((s, stream)) if s == seq && stream.position() == offset => stream,
        _ => stream_at(path, offset)?,
    };
    let f = std::fs::File::open(path).map_err(|e| ShipError::io(path, "open", e))?;
    let len = f.metadata().map_err(|e| ShipError::io(path, "stat", e))?.len();
    let want = (len.saturating_sub(offset) as usize).min(crate::gateway::server::MAX_BODY - 1024);
    let mut buf = vec![0u8; want.min(RANGE.max(first_record_len(&f, offset, want)))];
    f.read_exact_at(&mut buf, offset)
        .map_err(|e| ShipError::io(path, "read", e))?;
    let mut next = stream.clone();
    let n = next.take_whole(&buf)?;
    if n == 0 {
        st.stream = Some((seq, stream));
        return Ok(false);
    }
    buf.truncate(n);
    report.requests += 1;
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/disks/{disk}/segments/{seq}?offset={offset}"),
            Some(buf),
        )
        .await?;
    match r {
        Ok(v) => {
            report.bytes_sent += n as u64;
            st.progress = serde_json::from_value(v).ok();
            st.stream = Some((seq, next));
            Ok(true)
        }
        Err(a) if a.status == 409 => {
            report.conflicts += 1;
            tracing::info!(disk = %disk, segment = seq, offset, reason = %a.error(), "the gateway stands elsewhere; resending from there");
            st.progress = serde_json::from_value(a.body["progress"].clone()).ok();
            Ok(true)
        }
        Err(a) if a.status == 507 => {
            tracing::warn!(disk = %disk, "{}; the spool is kept", a.error());
            st.stream = Some((seq, stream));
            Ok(false)
        }
        Err(a) => Err(refused(c, disk, a)),
    }
}

/// Bytes from `offset` to the end of the record that starts there (so one
/// record larger than [`RANGE`] still goes in one request).
fn first_record_len(f: &std::fs::File, offset: u64, available: usize) -> usize {
    use std::os::unix::fs::FileExt;
    let mut frame = [0u8; 16];
    if offset == 0 || f.read_exact_at(&mut frame, offset).is_err() {
        return 0;
    }
    SegmentStream::record_len(&frame).unwrap_or(0).min(available)
}
