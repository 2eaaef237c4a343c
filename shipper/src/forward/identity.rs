//! A protected machine's identity: which gateway (URL and pinned
//! certificate fingerprint), its machine name and its per-machine secret,
//! in one file (0600, JSON) written by `hrl-shipper enroll`. It holds no
//! storage credential and no repository key: a stolen identity can add
//! data for this machine's disks, nothing else, and is revoked on the
//! gateway with `hrl-shipper machines revoke NAME`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::client::GatewayClient;
use crate::error::{Result, ShipError};
use crate::private_file::{read_private, write_private};

#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub gateway: String,
    pub fingerprint: String,
    pub machine: String,
    pub secret: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, even in a debug log.
        f.debug_struct("Identity")
            .field("gateway", &self.gateway)
            .field("fingerprint", &self.fingerprint)
            .field("machine", &self.machine)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads an identity file (refused when others can read it).
    pub fn load(path: &Path) -> Result<Self> {
        let b = read_private(path)?;
        serde_json::from_slice(&b)
            .map_err(|e| ShipError::Usage(format!("{}: not an identity file: {e}", path.display())))
    }

    /// A client of `gateway` (one of the identity's gateways) as this machine.
    pub fn client(&self, gateway: &str) -> Result<GatewayClient> {
        GatewayClient::new(gateway, &self.fingerprint, Some((&self.machine, &self.secret)))
    }
}

/// Enrolls with a gateway: pins its certificate, redeems the one-time
/// token, and writes the identity to `out` (which must not exist).
pub async fn enroll(gateway: &str, fingerprint: &str, token: &str, out: &Path) -> Result<Identity> {
    if out.exists() {
        return Err(ShipError::Usage(format!(
            "{}: exists; remove it first to enroll again (the old identity stops working once the new one is issued)",
            out.display()
        )));
    }
    let c = GatewayClient::new(gateway, fingerprint, None)?;
    let body = serde_json::to_vec(&serde_json::json!({ "token": token.trim() }))
        .map_err(|e| ShipError::Internal(format!("encode enrollment: {e}")))?;
    let v = match c.call(reqwest::Method::POST, "/v1/enroll", Some(body.into())).await? {
        Ok(v) => v,
        Err(a) => {
            return Err(ShipError::Usage(format!(
                "gateway {gateway} refused the enrollment: {}",
                a.error()
            )))
        }
    };
    let (Some(machine), Some(secret)) = (v["machine"].as_str(), v["secret"].as_str()) else {
        return Err(ShipError::Gateway {
            url: gateway.to_string(),
            why: "enrollment answer without machine and secret".into(),
        });
    };
    let id = Identity {
        gateway: gateway.to_string(),
        fingerprint: fingerprint.to_string(),
        machine: machine.to_string(),
        secret: secret.to_string(),
    };
    let text = crate::error::to_json_pretty(&id, "identity")?;
    write_private(out, &text)?;
    Ok(id)
}
