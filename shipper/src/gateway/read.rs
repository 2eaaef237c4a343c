//! A machine reading its own points through the gateway: the point
//! headers, a range of a point's chunks (restore), and the chunks of a
//! point that differ from the machine's (failback). The caller has checked
//! that the disk is the machine's.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::state::{refuse, Gateway, Reply};
use crate::error::ShipError;
use crate::restore::reader::{PointReader, MAX_CHUNKS};

/// A request about one point of one of the machine's disks.
pub(super) struct PointRequest<'a> {
    pub machine: &'a str,
    pub peer: SocketAddr,
    pub disk: Uuid,
    pub seq: u64,
    pub query: Option<&'a str>,
}

/// `GET .../points/SEQ/chunks?from=I&count=N` and
/// `POST .../points/SEQ/differ?from=I`.
pub(super) async fn point(
    gw: &Gateway,
    r: &PointRequest<'_>,
    (method, verb): (&Method, &str),
    body: &[u8],
) -> std::result::Result<Vec<u8>, Reply> {
    let failed = |what: &str, e: ShipError| {
        tracing::error!(machine = %r.machine, disk = %r.disk, point = r.seq, error = %e, "{what} a point for a machine failed");
        refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    match (method, verb) {
        (&Method::GET, "chunks") => {
            let (from, count) = range(r.query)?;
            let count = count.ok_or_else(|| bad("count=N is missing"))?;
            let p = reader(gw, r.machine, r.disk, r.seq).await?;
            p.read(&gw.repo, from, count).await.map_err(|e| failed("reading", e))
        }
        (&Method::POST, "differ") => {
            let (from, _) = range(r.query)?;
            if body.len() % 32 != 0 || body.len() as u64 / 32 > MAX_CHUNKS {
                tracing::warn!(machine = %r.machine, peer = %r.peer, disk = %r.disk, bytes = body.len(), "refused: a malformed failback comparison");
                return Err(bad(format!(
                    "a failback comparison carries up to {MAX_CHUNKS} hashes of 32 bytes, not {} bytes",
                    body.len()
                )));
            }
            let p = reader(gw, r.machine, r.disk, r.seq).await?;
            differ(gw, &p, from, body).await.map_err(|e| failed("comparing", e))
        }
        _ => {
            tracing::warn!(machine = %r.machine, peer = %r.peer, method = %method, verb, "refused: no such request");
            Err(refuse(
                StatusCode::NOT_FOUND,
                format!("no {method} of a point's {verb}"),
            ))
        }
    }
}

/// The headers of every published point of a disk (its owner asked).
pub(super) async fn own_points(gw: &Gateway, d: &Uuid) -> crate::error::Result<Value> {
    let mut out = Vec::new();
    for seq in crate::repo::manifest::list_points(&gw.repo, d).await? {
        out.push(crate::repo::manifest::load(&gw.repo, d, seq).await?.0);
    }
    Ok(json!(out))
}

/// `from=I` and `count=N` (if given) of a point request.
fn range(q: Option<&str>) -> std::result::Result<(u64, Option<u64>), Reply> {
    let mut from = None;
    let mut count = None;
    for kv in q.unwrap_or("").split('&') {
        match kv.split_once('=') {
            Some(("from", v)) => from = v.parse().ok(),
            Some(("count", v)) => count = Some(v.parse().map_err(|_| bad("count=N is not a number"))?),
            _ => {}
        }
    }
    Ok((from.ok_or_else(|| bad("from=I is missing"))?, count))
}

fn bad(why: impl Into<String>) -> Reply {
    refuse(StatusCode::BAD_REQUEST, why.into())
}

/// The machine's open point, kept so a restore's or failback's sequential
/// requests open it once.
async fn reader(gw: &Gateway, machine: &str, disk: Uuid, seq: u64) -> std::result::Result<Arc<PointReader>, Reply> {
    let mut rs = gw.readers.lock().await;
    match rs.get(machine) {
        Some(r) if r.disk == disk && r.header.seq == seq => Ok(r.clone()),
        _ => {
            let shared = gw.ship_tasks.index.get().map(Arc::as_ref);
            let r = PointReader::open(&gw.repo, &disk, seq, shared)
                .await
                .map_err(|e| match e {
                    ShipError::Point { .. } => refuse(StatusCode::NOT_FOUND, e.to_string()),
                    e => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                })?;
            let r = Arc::new(r);
            rs.insert(machine.to_string(), r.clone());
            Ok(r)
        }
    }
}

/// Failback: the body is the BLAKE3 hash of each of the machine's chunks
/// from `from` on; the answer is each chunk of the point that differs, as
/// its index (u64 little-endian) followed by its bytes.
async fn differ(gw: &Gateway, r: &PointReader, from: u64, hashes: &[u8]) -> crate::error::Result<Vec<u8>> {
    let theirs: Vec<[u8; 32]> = hashes
        .chunks_exact(32)
        .map(|h| h.try_into().unwrap_or([0; 32]))
        .collect();
    let mut out = Vec::new();
    for (idx, bytes) in r.differing(&gw.repo, from, &theirs).await? {
        out.extend_from_slice(&idx.to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}
