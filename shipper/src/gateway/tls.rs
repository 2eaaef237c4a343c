//! The process server's TLS identity: a certificate and key in its state
//! directory (created self-signed, 0600, on first start when none is
//! configured), and the SHA-256 fingerprint machines pin at enrollment.
//!
//! Pinning instead of a CA: a process server usually has no name a public
//! CA would sign, and a fleet should trust exactly one certificate, not
//! every CA of the system store. The fingerprint is shown by
//! `hrl-shipper serve --fingerprint` and checked by every forwarder on
//! every connection (see `crate::forward::client`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::error::{Result, ShipError};

/// Where the certificate and key live.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The default pair in a state directory.
    pub fn in_dir(dir: &Path) -> Self {
        TlsFiles {
            cert: dir.join("gateway.crt"),
            key: dir.join("gateway.key"),
        }
    }
}

/// `SHA256:` and the hex SHA-256 of a certificate's DER bytes.
pub fn fingerprint(der: &[u8]) -> String {
    format!("SHA256:{}", hex::encode(Sha256::digest(der)))
}

/// Parses a fingerprint as typed (`SHA256:` prefix optional, case and
/// colons ignored) into the 32 bytes it names.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32]> {
    let t = s.trim();
    let t = t
        .strip_prefix("SHA256:")
        .or_else(|| t.strip_prefix("sha256:"))
        .unwrap_or(t);
    let hexs: String = t.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hexs, &mut out).map_err(|_| {
        ShipError::Usage(format!(
            "fingerprint {s:?}: expected SHA256: and 64 hex digits (hrl-shipper serve --fingerprint prints it)"
        ))
    })?;
    Ok(out)
}

/// Loads the certificate and key, creating a self-signed pair (mode 0600)
/// when neither exists. Returns the chain, the key and whether it was
/// created now.
pub fn load_or_create(files: &TlsFiles) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, bool)> {
    let created = match (files.cert.exists(), files.key.exists()) {
        (true, true) => false,
        (false, false) => {
            create(files)?;
            true
        }
        _ => {
            return Err(ShipError::Usage(format!(
                "{} and {} must both exist or both be missing (then a self-signed pair is created)",
                files.cert.display(),
                files.key.display()
            )))
        }
    };
    crate::private_file::check_private(&files.key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| ShipError::Usage(format!("{}: {e}", files.cert.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| ShipError::Usage(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(ShipError::Usage(format!(
            "{}: no certificate in it",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| ShipError::Usage(format!("{}: {e}", files.key.display())))?;
    Ok((certs, key, created))
}

fn create(files: &TlsFiles) -> Result<()> {
    let host = hrl_common::host_name();
    let mut names = vec!["localhost".to_string()];
    if !host.is_empty() {
        names.push(host);
    }
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| ShipError::Internal(format!("generate a self-signed certificate: {e}")))?;
    crate::private_file::write_private(&files.key, ck.signing_key.serialize_pem().as_bytes())?;
    crate::private_file::write_private(&files.cert, ck.cert.pem().as_bytes())?;
    Ok(())
}

/// The server side of TLS: TLS 1.3 only (both ends are hrl), no client
/// certificates (machines authenticate with their per-machine secret).
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ShipError::Internal(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ShipError::Usage(format!("gateway certificate and key do not match or are unusable: {e}")))?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_pair_is_private_reloads_and_keeps_its_fingerprint() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = TlsFiles::in_dir(d.path());
        let (c1, _, created) = load_or_create(&f).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&f.key).unwrap().permissions().mode() & 0o777, 0o600);
        let (c2, k, created) = load_or_create(&f).unwrap();
        assert!(!created);
        assert_eq!(fingerprint(&c1[0]), fingerprint(&c2[0]));
        server_config(c2, k).unwrap();
        let fp = fingerprint(&c1[0]);
        assert_eq!(
            parse_fingerprint(&fp).unwrap().to_vec(),
            Sha256::digest(&c1[0]).to_vec()
        );
        assert!(parse_fingerprint("SHA256:abcd").is_err());
        std::fs::remove_file(&f.cert).unwrap();
        assert!(load_or_create(&f).unwrap_err().to_string().contains("both"));
    }
}
