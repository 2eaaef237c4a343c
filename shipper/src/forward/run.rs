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

use hrl_format::direct_read::SpoolFile;
use hrl_format::SegmentStream;
use reqwest::Method;
use uuid::Uuid;

use super::client::GatewayClient;
use super::identity::Identity;
pub use super::status::ForwardReport;
use crate::error::{Result, ShipError};
use crate::gateway::ingest::DiskProgress;

/// Bytes read from a segment per request (more when one record is larger):
/// 4 MiB less a block, so that a read starting inside a block still fits
/// in two huge pages (`hrl_format::direct_read::AlignedBuf`).
const RANGE: usize = (4 << 20) - 4096;

/// What `run --gateway` is told.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    pub spool: PathBuf,
    /// Send what is there, then return.
    pub once: bool,
    pub poll: Duration,
    /// Where the daemon publishes its status (status file, metrics).
    pub status: Option<super::status::SharedForward>,
    /// The process servers to use, in order of preference (empty: the one
    /// the identity was enrolled with). With more than one, a segment is
    /// kept until a gateway says it is published, not only held: another
    /// gateway may have to take the disk over from it.
    pub gateways: Vec<String>,
}

impl ForwardOptions {
    pub fn new(spool: impl Into<PathBuf>) -> Self {
        ForwardOptions {
            spool: spool.into(),
            once: false,
            // Each check costs the protected machine a wake-up, a look at
            // the spool directory and a stat: every 100 ms that was 0.25%
            // of a core for an idle forwarder; 500 ms adds at most 0.5 s
            // to the RPO.
            poll: Duration::from_millis(500),
            status: None,
            gateways: Vec::new(),
        }
    }
}

/// One disk: where the gateway stands and the checked local stream of the
/// segment being sent.
#[derive(Default)]
struct DiskForward {
    progress: Option<DiskProgress>,
    /// When `progress` came from the gateway (asked again while segments
    /// wait to be published).
    asked: Option<std::time::Instant>,
    stream: Option<(u64, SegmentStream)>,
}

/// How often a forwarder holding segments the gateway has not published
/// yet asks where the disk stands.
const PUBLISHED_POLL: Duration = Duration::from_secs(1);

/// Forwards the spool to the identity's gateway (or the first of
/// `opts.gateways` that answers) until `stop` (or, with `once`, until
/// every complete record is acknowledged). An unreachable or refusing
/// gateway makes the forwarder move on to the next one, which takes the
/// disks over from where they are published.
pub async fn forward(id: &Identity, opts: &ForwardOptions, stop: &AtomicBool) -> Result<ForwardReport> {
    let _lock = crate::ship::spool_lock::SpoolLock::acquire(&opts.spool)?;
    let urls = if opts.gateways.is_empty() {
        vec![id.gateway.clone()]
    } else {
        opts.gateways.clone()
    };
    let clients = urls.iter().map(|u| id.client(u)).collect::<Result<Vec<_>>>()?;
    let mut at = 0usize;
    let mut failures = 0usize;
    let keep = clients.len() > 1;
    let mut disks: HashMap<Uuid, DiskForward> = HashMap::new();
    let mut report = ForwardReport::default();
    let mut backoff = Duration::from_millis(500);
    let mut policy = super::policy::PolicySync::default();
    let mut status_clock = crate::ship::status::StatusClock::default();
    while !stop.load(Ordering::Relaxed) {
        let client = &clients[at];
        if !opts.once {
            policy.tick(client, &opts.spool).await;
        }
        let mut any = false;
        let mut failed = None;
        let sent = report.bytes_sent;
        for d in hrl_format::list_disks(&opts.spool)? {
            let st = disks.entry(d).or_default();
            match step(client, (&opts.spool, keep), d, st, &mut report).await {
                Ok(a) => any |= a,
                Err(e @ ShipError::Gateway { .. }) => {
                    *st = DiskForward::default();
                    failed = Some(e);
                }
                Err(e @ ShipError::Usage(_)) if keep && failures + 1 < clients.len() => failed = Some(e),
                Err(e) => return Err(e),
            }
            if failed.is_some() {
                break;
            }
        }
        if let Some(shared) = &opts.status {
            let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
            if report.bytes_sent > sent {
                g.last_ack_ns = Some(hrl_format::now_ns());
            }
            g.gateway = client.url.clone();
            g.reachable = failed.is_none();
            if let Some(e) = &failed {
                g.last_error = Some(e.to_string());
            }
            if let Some(file) = status_clock.due() {
                publish(&mut g, &opts.spool, &disks, &report, policy.applied_name());
                if file {
                    save(&opts.spool, &g);
                }
            }
        }
        if let Some(e) = failed {
            report.endpoint_errors += 1;
            failures += 1;
            if opts.once && report.endpoint_errors > 5 {
                return Err(e);
            }
            if keep {
                // The next gateway takes the disks over: ask it where each
                // stands.
                at = (at + 1) % clients.len();
                disks.clear();
                tracing::warn!(failed = %client.url, next = %clients[at].url, error = %e, "gateway unreachable or refusing; moving to the next");
                if failures % clients.len() != 0 {
                    continue;
                }
            }
            tracing::warn!(gateway = %client.url, error = %e, backoff_ms = backoff.as_millis() as u64, "gateway unreachable; the spool is kept");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            continue;
        }
        failures = 0;
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

/// Brings the shared status (what the metrics show) up to date.
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
}

/// Writes the status file (`hrl-shipper status`).
fn save(spool: &Path, g: &super::status::ForwardStatus) {
    if let Err(e) = super::status::save(spool, g) {
        tracing::warn!(error = %e, "could not write the forwarder's status file");
    }
}

/// Sends what is new of one disk; true when anything moved. `keep`: a
/// segment goes only once published (several gateways), else once the
/// gateway holds it whole.
async fn step(
    c: &GatewayClient,
    (spool, keep): (&Path, bool),
    disk: Uuid,
    st: &mut DiskForward,
    report: &mut ForwardReport,
) -> Result<bool> {
    let stale = st.asked.is_none_or(|t| t.elapsed() >= PUBLISHED_POLL);
    let progress = match st.progress {
        Some(p) if !(keep && stale && waiting_for_publish(spool, disk, &p)?) => p,
        _ => {
            let p = ask(c, disk, report).await?;
            st.progress = Some(p);
            st.asked = Some(std::time::Instant::now());
            p
        }
    };
    let gone = if keep {
        progress.published_through.min(progress.complete_through)
    } else {
        progress.complete_through
    };
    let mut any = false;
    for seg in hrl_format::list_segments(spool, Some(disk))? {
        if gone.is_some_and(|c| seg.seq <= c) {
            // The gateway holds it whole and durable (published, with
            // several gateways): it can go.
            std::fs::remove_file(&seg.path).map_err(|e| ShipError::io(&seg.path, "delete forwarded segment", e))?;
            report.segments_completed += 1;
            any = true;
            continue;
        }
        if progress.complete_through.is_some_and(|c| seg.seq <= c) {
            continue;
        }
        if let Some(e) = progress.expects().filter(|&e| e < seg.seq) {
            if !keep {
                return Err(ShipError::Point {
                    disk: disk.to_string(),
                    why: format!(
                        "the gateway expects segment {e}, but the spool's oldest is {}: the gateway lost segments it had acknowledged (its cache was lost or replaced); nothing more is sent, rather than publish points with part of their data missing",
                        seg.seq
                    ),
                });
            }
            st.progress = Some(restart(c, disk, seg.seq, report).await?);
            st.asked = Some(std::time::Instant::now());
            return Ok(true);
        }
        let offset = match progress.open {
            Some((s, o)) if s == seg.seq => o,
            _ => 0,
        };
        return send(c, &seg.path, (disk, seg.seq, offset), st, report)
            .await
            .map(|a| a || any);
    }
    Ok(any)
}

/// Whether the spool holds segments the gateway has whole but not yet
/// published (so it is worth asking again).
fn waiting_for_publish(spool: &Path, disk: Uuid, p: &DiskProgress) -> Result<bool> {
    let Some(c) = p.complete_through else { return Ok(false) };
    Ok(hrl_format::list_segments(spool, Some(disk))?
        .iter()
        .any(|s| s.seq <= c && p.published_through.is_none_or(|x| s.seq > x)))
}

/// Tells a gateway whose copy of the disk is stale where the spool starts.
async fn restart(c: &GatewayClient, disk: Uuid, seg: u64, report: &mut ForwardReport) -> Result<DiskProgress> {
    report.requests += 1;
    tracing::info!(gateway = %c.url, disk = %disk, segment = seg, "the gateway's copy of this disk is older than the spool: starting it again at the spool's oldest segment");
    match c
        .call(Method::POST, &format!("/v1/disks/{disk}/restart?segment={seg}"), None)
        .await?
    {
        Ok(v) => serde_json::from_value(v).map_err(|e| ShipError::Gateway {
            url: c.url.clone(),
            why: format!("progress of disk {disk}: {e}"),
        }),
        Err(a) => Err(refused(c, disk, a)),
    }
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
    let f = SpoolFile::open(path, true).map_err(|e| ShipError::io(path, "open", e))?;
    let buf = f
        .read_range(0, offset as usize)
        .map_err(|e| ShipError::io(path, "read", e))?;
    let mut s = SegmentStream::sender(path);
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
    let stream = match st.stream.take() {
        Some((s, stream)) if s == seq && stream.position() == offset => stream,
        _ => stream_at(path, offset)?,
    };
    // Direct: the agent wrote the segment's blocks past the page cache.
    let f = SpoolFile::open(path, true).map_err(|e| ShipError::io(path, "open", e))?;
    let len = f.file_len().map_err(|e| ShipError::io(path, "stat", e))?;
    let want = (len.saturating_sub(offset) as usize).min(crate::gateway::server::MAX_BODY - 1024);
    let mut buf = f
        .read_range(offset, want.min(RANGE))
        .map_err(|e| ShipError::io(path, "read", e))?;
    // One record larger than RANGE still goes in one request: read again
    // to its end (its frame is in what was read).
    let first = first_record_len(&buf, offset, want);
    if first > buf.len() {
        buf = f
            .read_range(offset, first)
            .map_err(|e| ShipError::io(path, "read", e))?;
    }
    let mut next = stream.clone();
    let n = next.take_whole(&buf)?;
    if n == 0 {
        st.stream = Some((seq, stream));
        return Ok(false);
    }
    // The request body owns the read's memory: no copy (it goes back to
    // the read pool when the request is done with it).
    let body = bytes::Bytes::from_owner(buf).slice(..n);
    report.requests += 1;
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/disks/{disk}/segments/{seq}?offset={offset}"),
            Some(body),
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

/// Bytes from `offset` to the end of the record that starts there, from
/// the bytes read there (`head`); 0 at the segment's start (its header).
fn first_record_len(head: &[u8], offset: u64, available: usize) -> usize {
    if offset == 0 {
        return 0;
    }
    SegmentStream::record_len(head).unwrap_or(0).min(available)
}
