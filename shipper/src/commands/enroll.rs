//! `hrl-shipper enroll`: on a protected machine, pin the gateway's
//! certificate and trade a one-time token for this machine's identity.

use std::path::PathBuf;

use crate::error::{Result, ShipError};

#[derive(clap::Args)]
pub struct Args {
    /// The process server, https://HOST:9443.
    #[arg(long)]
    gateway: String,
    /// The gateway certificate's fingerprint, SHA256:... (on the gateway:
    /// hrl-shipper serve --fingerprint).
    #[arg(long)]
    fingerprint: String,
    /// File holding the token from `hrl-shipper machines add NAME`.
    #[arg(long)]
    token_file: PathBuf,
    /// Where to write this machine's identity (created 0600; must not exist).
    #[arg(long, default_value = "/etc/hrl/machine.id")]
    identity: PathBuf,
}

pub async fn run(a: Args) -> Result<u8> {
    let token = std::fs::read_to_string(&a.token_file).map_err(|e| ShipError::io(&a.token_file, "read token", e))?;
    let id = crate::forward::enroll(&a.gateway, &a.fingerprint, &token, &a.identity).await?;
    println!(
        "enrolled as machine {} with {}; identity in {} (keep it 0600; the token is used up)",
        id.machine,
        a.gateway,
        a.identity.display()
    );
    Ok(0)
}
