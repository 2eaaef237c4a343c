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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::ingest::Rejected;
use super::machines::Registry;
use super::state::{refuse, Reply};
pub use super::state::{Body, Gateway};
use crate::error::ShipError;

/// Largest range one request may carry: the largest record and some.
pub const MAX_BODY: usize = 20 << 20;
/// A request body must arrive within this (a stalled peer is dropped).
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

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
        Ok(Body::Html(h)) => (StatusCode::OK, h.into_bytes(), "text/html; charset=utf-8"),
        Ok(Body::Text(t)) => (StatusCode::OK, t.into_bytes(), "text/plain; version=0.0.4"),
        Err(Reply(s, v)) => (s, serde_json::to_vec(&v).unwrap_or_default(), "application/json"),
    };
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        // A browser asks for the admin credential; machines send theirs.
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"hrl fleet\""),
        );
    }
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
    if method == Method::GET && super::view::is_admin_path(&p) {
        let auth = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        return super::view::admin(gw, peer, auth.as_deref(), &p).await;
    }
    let machine = gw.authenticate_shared(&req, peer).await;
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
        (&Method::GET, ["v1", "policy"]) => Ok(Body::Json(gw.policy_for(&machine))),
        (&Method::GET, ["v1", "disks", d, "points"]) => {
            let d = disk(d)?;
            gw.owned(&machine, &d, peer)?;
            super::read::own_points(gw, &d).await.map_err(internal).map(Body::Json)
        }
        (m, ["v1", "disks", d, "points", s, verb]) => {
            let d = disk(d)?;
            gw.owned(&machine, &d, peer)?;
            let seq: u64 = s
                .parse()
                .map_err(|_| refuse(StatusCode::BAD_REQUEST, format!("{s:?} is not a point")))?;
            let req = super::read::PointRequest {
                machine: &machine,
                peer,
                disk: d,
                seq,
                query: query.as_deref(),
            };
            super::read::point(gw, &req, (m, verb), &bytes).await.map(Body::Bytes)
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
        (&Method::POST, ["v1", "disks", d, "restart"]) => {
            let d = disk(d)?;
            gw.own_disk(&machine, &d, peer)?;
            restart(gw, &machine, d, query.as_deref()).await.map(Body::Json)
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

async fn append(
    gw: &Gateway,
    machine: &str,
    peer: SocketAddr,
    (disk, seq, offset): (Uuid, u64, u64),
    bytes: &[u8],
) -> std::result::Result<Value, Reply> {
    match gw.ingest.append(machine, &disk, seq, offset, bytes) {
        Ok((p, seen)) => {
            gw.fleet.seen.observe(machine, &disk, &seen, bytes.len() as u64);
            Ok(json!(p))
        }
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

/// The forwarder's spool starts at segment `seg`, past what this
/// gateway's copy of the disk expects: another process server published
/// the segments between (a forwarder deletes a segment only once a gateway
/// says it is published). The stale copy is dropped, with the machine's
/// ship loop paused meanwhile, and the disk starts again at `seg`. Never
/// touches the repository: nothing published can be lost this way.
async fn restart(gw: &Gateway, machine: &str, disk: Uuid, query: Option<&str>) -> std::result::Result<Value, Reply> {
    let seg: u64 = query
        .and_then(|q| q.strip_prefix("segment="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "segment=N is missing"))?;
    let internal = |e: ShipError| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let p = gw.ingest.progress(machine, &disk).map_err(internal)?;
    let Some(expects) = p.expects().filter(|&e| seg > e) else {
        return Ok(json!(p));
    };
    tracing::warn!(machine = %machine, disk = %disk, expected = expects, forwarder_starts_at = seg, "this gateway's copy of the disk is stale (another process server shipped it since): dropping it and starting again at the forwarder's oldest segment");
    gw.ship_tasks.pause(machine).await;
    let r = gw.ingest.reset_disk(machine, &disk);
    gw.ship_tasks.resume(machine).await;
    r.map_err(internal)?;
    gw.ingest.progress(machine, &disk).map(|p| json!(p)).map_err(internal)
}

async fn enroll(gw: &Gateway, peer: SocketAddr, req: Request<Incoming>) -> std::result::Result<Value, Reply> {
    let b = body(req).await?;
    let token = serde_json::from_slice::<Value>(&b)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_string))
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "expected {\"token\": ...}"))?;
    let mut redeemed = Registry::update(&gw.state_dir, |r| r.redeem(&token, hrl_format::now_ns()));
    // A token issued on another process server of the repository.
    if redeemed.is_err() && gw.registry_sync.on_demand(&gw.repo, &gw.state_dir).await {
        redeemed = Registry::update(&gw.state_dir, |r| r.redeem(&token, hrl_format::now_ns()));
    }
    if redeemed.is_ok() {
        gw.registry_sync.run(&gw.repo, &gw.state_dir, Duration::ZERO).await;
    }
    match redeemed {
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
