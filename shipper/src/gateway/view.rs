//! The admin's requests: `GET /` (the fleet page), `GET /disk/<id>`,
//! `GET /fleet.json` and `GET /metrics`, all behind the admin credential
//! (HTTP Basic, `admin:SECRET`). A request without it, or with a
//! machine's, gets 401 and is logged; the pages show no secret.

use std::net::SocketAddr;

use hyper::StatusCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as Metrics;
use serde_json::json;
use uuid::Uuid;

use super::fleet::FleetView;
use super::state::{refuse, Body, Gateway, Reply};

/// Whether `p` (the path's segments) is one of the admin's requests.
pub fn is_admin_path(p: &[&str]) -> bool {
    matches!(p, [""] | ["fleet.json"] | ["metrics"] | ["disk", _])
}

/// Answers an admin request.
pub(super) async fn admin(
    gw: &Gateway,
    peer: SocketAddr,
    auth: Option<&str>,
    p: &[&str],
) -> std::result::Result<Body, Reply> {
    if !super::admin::check(auth, &gw.admin_secret) {
        tracing::warn!(peer = %peer, path = %p.join("/"), "refused: fleet view without the admin credential");
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "the fleet view needs the admin credential",
        ));
    }
    let v = gw
        .fleet_view()
        .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match p {
        [""] => Ok(Body::Html(super::page::fleet(&v))),
        ["fleet.json"] => Ok(Body::Json(json!(v))),
        ["metrics"] => Ok(Body::Text(metrics(&v))),
        ["disk", id] => {
            let id: Uuid = id
                .parse()
                .map_err(|_| refuse(StatusCode::BAD_REQUEST, format!("{id:?} is not a disk id")))?;
            let points = published(gw, &id).await;
            super::page::disk(&v, &id, &points, &gw.fleet.history(&id))
                .map(Body::Html)
                .ok_or_else(|| refuse(StatusCode::NOT_FOUND, format!("no disk {id} in the fleet")))
        }
        _ => Err(refuse(StatusCode::NOT_FOUND, "no such page")),
    }
}

/// The newest 20 published points of a disk: (seq, kind, time).
async fn published(gw: &Gateway, id: &Uuid) -> Vec<(u64, String, u64)> {
    let Ok(seqs) = crate::repo::manifest::list_points(&gw.repo, id).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for seq in seqs.iter().rev().take(20).rev() {
        if let Ok((h, _)) = crate::repo::manifest::load(&gw.repo, id, *seq).await {
            out.push((h.seq, super::fleet::kind_name(h.kind), h.time_ns));
        }
    }
    out
}

type Labels = Vec<(String, String)>;

/// The fleet as Prometheus metrics, labelled by machine and disk.
pub fn metrics(v: &FleetView) -> String {
    let mut reg = Metrics::default();
    let fam = |reg: &mut Metrics, name: &str, help: &str| {
        let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        reg.register(name, help, f.clone());
        f
    };
    let connected = fam(
        &mut reg,
        "hrl_fleet_machine_connected",
        "1 when the machine made a request in the last minute",
    );
    let rpo = fam(
        &mut reg,
        "hrl_fleet_rpo_seconds",
        "Age of the disk's newest published point",
    );
    let backlog = fam(
        &mut reg,
        "hrl_fleet_backlog_bytes",
        "Bytes received but not yet in a published point",
    );
    let rate = fam(
        &mut reg,
        "hrl_fleet_throughput_bytes_per_second",
        "Bytes received per second, last minute",
    );
    let alert = fam(&mut reg, "hrl_fleet_alert", "1 for each alert that is raised, by kind");
    let thr = fam(
        &mut reg,
        "hrl_fleet_rpo_warn_seconds",
        "The disk's RPO threshold (its policy's or the gateway's)",
    );
    for m in &v.machines {
        let ml = vec![("machine".to_string(), m.name.clone())];
        connected.get_or_create(&ml).set(if m.connected { 1.0 } else { 0.0 });
        for d in &m.disks {
            let dl = vec![
                ("machine".to_string(), m.name.clone()),
                ("disk".to_string(), d.label.clone()),
            ];
            if let Some(r) = d.rpo_seconds {
                rpo.get_or_create(&dl).set(r);
            }
            thr.get_or_create(&dl).set(d.rpo_warn_seconds as f64);
            backlog.get_or_create(&dl).set(d.backlog_bytes as f64);
            rate.get_or_create(&dl).set(d.throughput_bps);
        }
    }
    for a in &v.alerts {
        let kind = serde_json::to_value(&a.kind)
            .ok()
            .and_then(|k| k.as_str().map(str::to_string))
            .unwrap_or_default();
        let l = vec![
            ("machine".to_string(), a.machine.clone()),
            (
                "disk".to_string(),
                if a.disk.is_some() {
                    a.label.clone()
                } else {
                    String::new()
                },
            ),
            ("kind".to_string(), kind),
        ];
        alert.get_or_create(&l).set(1.0);
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}
