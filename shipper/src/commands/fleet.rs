//! `hrl-shipper fleet`: the process server's fleet view in a terminal
//! (the same as its page at https://HOST:9443/), with the admin
//! credential. Exit 1 when any alert is raised, so a script can watch it.

use std::path::PathBuf;

use super::print_json;
use crate::error::{Result, ShipError};
use crate::forward::client::GatewayClient;
use crate::gateway::fleet::{age, FleetView};
use crate::gateway::{admin, tls};

#[derive(clap::Args)]
pub struct Args {
    /// The gateway's TOML config: on the gateway itself, everything else
    /// is found from it (address, certificate, admin secret).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The gateway's state directory [default: /var/lib/hrl-gateway].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// https://HOST:PORT [default: the config's listen address, on loopback].
    #[arg(long)]
    gateway: Option<String>,
    /// SHA256:... of the gateway's certificate [default: read from its
    /// certificate file].
    #[arg(long)]
    fingerprint: Option<String>,
    /// File holding the admin secret [default: STATE_DIR/admin.secret].
    #[arg(long)]
    admin_file: Option<PathBuf>,
    /// The whole view as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> Result<u8> {
    let f = super::serve::settings(a.config.as_ref(), a.state_dir.as_ref())?;
    let url = match a.gateway {
        Some(u) => u,
        None => {
            let listen = f.listen.clone().unwrap_or_else(|| "0.0.0.0:9443".into());
            let port = listen.rsplit(':').next().unwrap_or("9443").to_string();
            format!("https://127.0.0.1:{port}")
        }
    };
    let fingerprint = match a.fingerprint {
        Some(fp) => fp,
        None => {
            let files = f.tls();
            if !files.cert.exists() {
                return Err(ShipError::Usage(format!(
                    "{}: no gateway certificate here; give --fingerprint",
                    files.cert.display()
                )));
            }
            let (certs, _, _) = tls::load_or_create(&files)?;
            tls::fingerprint(&certs[0])
        }
    };
    let secret = admin::read(&a.admin_file.unwrap_or_else(|| admin::secret_path(&f.state_dir())))?;
    let c = GatewayClient::admin(&url, &fingerprint, &secret)?;
    let v = match c.call(reqwest::Method::GET, "/fleet.json", None).await? {
        Ok(v) => v,
        Err(a) => {
            return Err(ShipError::Usage(format!(
                "gateway {url}: HTTP {}: {}",
                a.status,
                a.error()
            )))
        }
    };
    let alerts = v["alerts"].as_array().map_or(0, Vec::len);
    if a.json {
        print_json(&v)?;
    } else {
        let view: FleetView =
            serde_json::from_value(v).map_err(|e| ShipError::Internal(format!("the gateway's fleet view: {e}")))?;
        print_table(&view);
    }
    Ok(u8::from(alerts > 0))
}

fn print_table(v: &FleetView) {
    println!(
        "{:<16} {:<5} {:<14} {:<28} {:<13} {:<10} {:<16} {:>10}",
        "MACHINE", "CONN", "LAST CONTACT", "DISK", "MODE", "PUBLISHED", "RPO", "BACKLOG"
    );
    let ago = |t: Option<u64>| t.map_or("never".into(), |t| age(v.time_ns.saturating_sub(t) as f64 / 1e9));
    for m in &v.machines {
        let conn = if m.revoked {
            "revok"
        } else if m.connected {
            "yes"
        } else {
            "no"
        };
        if m.disks.is_empty() {
            println!("{:<16} {conn:<5} {:<14} (no disk yet)", m.name, ago(m.last_contact_ns));
        }
        for d in &m.disks {
            let rpo = d.rpo_seconds.map_or("no point yet".into(), |r| {
                let over = if r > d.rpo_warn_seconds as f64 { " OVER" } else { "" };
                format!("{}{over}", age(r))
            });
            println!(
                "{:<16} {conn:<5} {:<14} {:<28} {:<13} {:<10} {:<16} {:>10}",
                m.name,
                ago(m.last_contact_ns),
                d.label,
                d.mode,
                d.published.map_or("none".into(), |p| p.to_string()),
                rpo,
                d.backlog_bytes
            );
        }
    }
    for a in &v.alerts {
        println!("ALERT {:?} {}: {}", a.kind, a.label, a.message);
    }
}
