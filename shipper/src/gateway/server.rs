//! The process server's HTTPS endpoint (docs/process-server.md has the
//! protocol): enrollment, and for an authenticated machine the progress of
//! its disks and the ranges of their segments.
//!
//! Every request but enrollment carries `Authorization: Bearer
//! MACHINE:SECRET`; the registry is re-read when it changes, so a revoked
//! machine is refused on its next request. A machine may send only disks
//! no other machine has sent. Nothing can be deleted or overwritten: the
//! only write is an append at the exact end of a segment. Every refusal is
//! logged with the machine's name and address.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::ingest::{Ingest, Rejected};
use super::machines::Registry;
use crate::error::{Result, ShipError};
use crate::repo::Repo;
use crate::restore::reader::PointReader;

/// Largest range one request may carry: the largest record and some.
pub const MAX_BODY: usize = 20 << 20;
/// A request body must arrive within this (a stalled peer is dropped).
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// The state every connection shares.
pub struct Gateway {
    pub state_dir: PathBuf,
    pub ingest: Ingest,
    pub repo: Repo,
    registry: Mutex<(Option<SystemTime>, Registry)>,
    contact: Mutex<HashMap<String, Instant>>,
    /// The point each machine is reading (restore through the gateway).
    readers: tokio::sync::Mutex<HashMap<String, Arc<PointReader>>>,
}

/// A 200 answer: JSON, or the bytes of a point's chunks.
pub enum Body {
    Json(Value),
    Bytes(Vec<u8>),
}

/// An answer other than 200.
struct Reply(StatusCode, Value);

fn refuse(status: StatusCode, why: impl Into<String>) -> Reply {
    Reply(status, json!({ "error": why.into() }))
}

impl Gateway {
    pub fn new(state_dir: PathBuf, ingest: Ingest, repo: Repo) -> Result<Self> {
        let reg = Registry::load(&state_dir)?;
        Ok(Gateway {
            state_dir,
            ingest,
            repo,
            registry: Mutex::new((None, reg)),
            contact: Mutex::new(HashMap::new()),
            readers: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Refuses a disk that is not this machine's (reading never claims).
    fn owned(&self, machine: &str, disk: &Uuid, peer: SocketAddr) -> std::result::Result<(), Reply> {
        let reg = self
            .registry()
            .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if reg.owner(disk) == Some(machine) {
            return Ok(());
        }
        tracing::warn!(machine = %machine, peer = %peer, disk = %disk, "refused: reading a disk that is not this machine's");
        Err(refuse(
            StatusCode::FORBIDDEN,
            format!("disk {disk} is not one of this machine's disks"),
        ))
    }

    /// The registry, re-read when its file changed.
    fn registry(&self) -> Result<Registry> {
        let p = Registry::path(&self.state_dir);
        let mtime = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
        let mut g = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 != mtime || mtime.is_none() {
            *g = (mtime, Registry::load(&self.state_dir)?);
        }
        Ok(g.1.clone())
    }

    /// The machine a request authenticates as.
    fn authenticate(&self, req: &Request<Incoming>, peer: SocketAddr) -> std::result::Result<String, Reply> {
        let h = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some((name, secret)) = h.and_then(|v| v.split_once(':')) else {
            tracing::warn!(peer = %peer, "refused: no machine credential");
            return Err(refuse(StatusCode::UNAUTHORIZED, "no machine credential (enroll first)"));
        };
        let reg = self
            .registry()
            .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if let Err(r) = reg.authenticate(name, secret) {
            tracing::warn!(machine = %name, peer = %peer, reason = %r, "refused");
            return Err(refuse(StatusCode::UNAUTHORIZED, format!("machine {name}: {r}")));
        }
        self.touch(name);
        Ok(name.to_string())
    }

    /// Records the machine's last contact (at most every 30 s).
    fn touch(&self, name: &str) {
        let mut c = self.contact.lock().unwrap_or_else(|e| e.into_inner());
        if c.get(name).is_some_and(|t| t.elapsed() < Duration::from_secs(30)) {
            return;
        }
        c.insert(name.to_string(), Instant::now());
        let now = hrl_format::now_ns();
        let r = Registry::update(&self.state_dir, |r| {
            if let Some(m) = r.machines.get_mut(name) {
                m.last_contact_ns = Some(now);
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!(machine = %name, error = %e, "could not record the last contact");
        }
    }

    /// Refuses a disk another machine sent; claims a new one.
    fn own_disk(&self, machine: &str, disk: &Uuid, peer: SocketAddr) -> std::result::Result<(), Reply> {
        let reg = self
            .registry()
            .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        match reg.owner(disk) {
            Some(m) if m == machine => Ok(()),
            Some(other) => {
                tracing::warn!(machine = %machine, peer = %peer, disk = %disk, owner = %other, "refused: another machine's disk");
                Err(refuse(
                    StatusCode::FORBIDDEN,
                    format!("disk {disk} belongs to another machine"),
                ))
            }
            None => Registry::update(&self.state_dir, |r| {
                if let Some(other) = r.owner(disk) {
                    if other != machine {
                        return Err(ShipError::Usage(format!("disk {disk} belongs to another machine")));
                    }
                    return Ok(());
                }
                if let Some(m) = r.machines.get_mut(machine) {
                    m.disks.push(*disk);
                }
                tracing::info!(machine = %machine, disk = %disk, "new disk");
                Ok(())
            })
            .map_err(|e| refuse(StatusCode::FORBIDDEN, e.to_string())),
        }
    }
}

/// Serves one connection's requests.
pub async fn handle(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let (status, bytes, ctype) = match route(&gw, peer, req).await {
        Ok(Body::Json(v)) => (
            StatusCode::OK,
            serde_json::to_vec(&v).unwrap_or_default(),
            "application/json",
        ),
        Ok(Body::Bytes(b)) => (StatusCode::OK, b, "application/octet-stream"),
        Err(Reply(s, v)) => (s, serde_json::to_vec(&v).unwrap_or_default(), "application/json"),
    };
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    Ok(resp)
}

async fn body(req: Request<Incoming>) -> std::result::Result<Bytes, Reply> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}"))),
        Err(_) => Err(refuse(StatusCode::REQUEST_TIMEOUT, "request body stalled")),
    }
}

async fn route(gw: &Gateway, peer: SocketAddr, req: Request<Incoming>) -> std::result::Result<Body, Reply> {
    let path: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let method = req.method().clone();
    if method == Method::POST && p == ["v1", "enroll"] {
        return enroll(gw, peer, req).await.map(Body::Json);
    }
    let machine = gw.authenticate(&req, peer);
    let query = req.uri().query().map(str::to_string);
    // The body is read (bounded in size and time) before any refusal, so
    // the peer gets the refusal rather than a broken pipe mid-upload.
    let bytes = body(req).await?;
    let machine = machine?;
    if method == Method::DELETE {
        tracing::warn!(machine = %machine, peer = %peer, path = %path.join("/"), "refused: delete");
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "nothing can be deleted through the gateway",
        ));
    }
    let disk = |s: &str| -> std::result::Result<Uuid, Reply> {
        s.parse()
            .map_err(|_| refuse(StatusCode::BAD_REQUEST, format!("{s:?} is not a disk id")))
    };
    let internal = |e: ShipError| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    match (&method, p.as_slice()) {
        (&Method::GET, ["v1", "disks"]) => own_disks(gw, &machine).await.map(Body::Json),
        (&Method::GET, ["v1", "disks", d, "points"]) => {
            let d = disk(d)?;
            gw.owned(&machine, &d, peer)?;
            let mut out = Vec::new();
            for seq in crate::repo::manifest::list_points(&gw.repo, &d)
                .await
                .map_err(internal)?
            {
                out.push(
                    crate::repo::manifest::load(&gw.repo, &d, seq)
                        .await
                        .map_err(internal)?
                        .0,
                );
            }
            Ok(Body::Json(json!(out)))
        }
        (&Method::GET, ["v1", "disks", d, "points", s, "chunks"]) => {
            let d = disk(d)?;
            gw.owned(&machine, &d, peer)?;
            let seq: u64 = s
                .parse()
                .map_err(|_| refuse(StatusCode::BAD_REQUEST, format!("{s:?} is not a point")))?;
            let (from, count) = range(query.as_deref())?;
            read_chunks(gw, &machine, d, seq, from, count).await.map(Body::Bytes)
        }
        (&Method::GET, ["v1", "disks", d]) => {
            let d = disk(d)?;
            gw.own_disk(&machine, &d, peer)?;
            let pr = gw
                .ingest
                .progress(&machine, &d)
                .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok(Body::Json(json!(pr)))
        }
        (&Method::PUT, ["v1", "disks", d, "segments", s]) => {
            let d = disk(d)?;
            let seq: u64 = s
                .parse()
                .map_err(|_| refuse(StatusCode::BAD_REQUEST, format!("{s:?} is not a segment number")))?;
            let offset: u64 = query
                .as_deref()
                .and_then(|q| q.strip_prefix("offset="))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "offset=N is missing"))?;
            gw.own_disk(&machine, &d, peer)?;
            append(gw, &machine, peer, (d, seq, offset), &bytes)
                .await
                .map(Body::Json)
        }
        _ => {
            tracing::warn!(machine = %machine, peer = %peer, method = %method, path = %path.join("/"), "refused: no such request");
            Err(refuse(
                StatusCode::NOT_FOUND,
                format!("no {method} /{}", path.join("/")),
            ))
        }
    }
}

/// `from=I&count=N` of a chunks request.
fn range(q: Option<&str>) -> std::result::Result<(u64, u64), Reply> {
    let mut from = None;
    let mut count = None;
    for kv in q.unwrap_or("").split('&') {
        match kv.split_once('=') {
            Some(("from", v)) => from = v.parse().ok(),
            Some(("count", v)) => count = v.parse().ok(),
            _ => {}
        }
    }
    match (from, count) {
        (Some(f), Some(c)) => Ok((f, c)),
        _ => Err(refuse(StatusCode::BAD_REQUEST, "from=I&count=N is missing")),
    }
}

/// This machine's disks, named from their newest point.
async fn own_disks(gw: &Gateway, machine: &str) -> std::result::Result<Value, Reply> {
    let internal = |e: ShipError| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let reg = gw.registry().map_err(internal)?;
    let mut out = Vec::new();
    for d in reg.machines.get(machine).map(|m| m.disks.clone()).unwrap_or_default() {
        let pts = crate::repo::manifest::list_points(&gw.repo, &d)
            .await
            .map_err(internal)?;
        let Some(&newest) = pts.last() else { continue };
        let h = crate::repo::manifest::load(&gw.repo, &d, newest)
            .await
            .map_err(internal)?
            .0;
        out.push(crate::repo::disks::DiskInfo {
            id: d,
            host: h.host,
            name: h.name,
            points: pts.len(),
            newest,
        });
    }
    Ok(json!(out))
}

/// Chunks of a point, decrypted and verified; the machine's open point is
/// kept so a restore's sequential reads open it once.
async fn read_chunks(
    gw: &Gateway,
    machine: &str,
    disk: Uuid,
    seq: u64,
    from: u64,
    count: u64,
) -> std::result::Result<Vec<u8>, Reply> {
    let internal = |e: ShipError| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let reader = {
        let mut rs = gw.readers.lock().await;
        match rs.get(machine) {
            Some(r) if r.disk == disk && r.header.seq == seq => r.clone(),
            _ => {
                let r = PointReader::open(&gw.repo, &disk, seq).await.map_err(|e| match e {
                    ShipError::Point { .. } => refuse(StatusCode::NOT_FOUND, e.to_string()),
                    e => internal(e),
                })?;
                let r = Arc::new(r);
                rs.insert(machine.to_string(), r.clone());
                r
            }
        }
    };
    reader.read(&gw.repo, from, count).await.map_err(|e| {
        tracing::error!(machine = %machine, disk = %disk, point = seq, error = %e, "reading a point for a machine failed");
        internal(e)
    })
}

async fn append(
    gw: &Gateway,
    machine: &str,
    peer: SocketAddr,
    (disk, seq, offset): (Uuid, u64, u64),
    bytes: &[u8],
) -> std::result::Result<Value, Reply> {
    match gw.ingest.append(machine, &disk, seq, offset, bytes) {
        Ok(p) => Ok(json!(p)),
        Err(Rejected::Conflict(p, why)) => Err(Reply(StatusCode::CONFLICT, json!({"error": why, "progress": p}))),
        Err(Rejected::Damaged(why)) => {
            tracing::warn!(machine = %machine, peer = %peer, disk = %disk, segment = seq, offset, error = %why, "refused damaged bytes");
            Err(refuse(StatusCode::UNPROCESSABLE_ENTITY, why))
        }
        Err(Rejected::Full(why)) => {
            tracing::warn!(machine = %machine, disk = %disk, "{why}");
            Err(refuse(StatusCode::INSUFFICIENT_STORAGE, why))
        }
        Err(Rejected::Failed(e)) => {
            tracing::error!(machine = %machine, disk = %disk, segment = seq, error = %e, "cache write failed");
            Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
    }
}

async fn enroll(gw: &Gateway, peer: SocketAddr, req: Request<Incoming>) -> std::result::Result<Value, Reply> {
    let b = body(req).await?;
    let token = serde_json::from_slice::<Value>(&b)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_string))
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "expected {\"token\": ...}"))?;
    match Registry::update(&gw.state_dir, |r| r.redeem(&token, hrl_format::now_ns())) {
        Ok((machine, secret)) => {
            tracing::info!(machine = %machine, peer = %peer, "machine enrolled");
            Ok(json!({"machine": machine, "secret": secret}))
        }
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "refused enrollment");
            Err(refuse(StatusCode::UNAUTHORIZED, e.to_string()))
        }
    }
}
