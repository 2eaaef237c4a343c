//! HTTPS to one process server, its certificate pinned by fingerprint.
//!
//! The forwarder trusts exactly the certificate whose SHA-256 it was given
//! at enrollment, not the system's CAs: a gateway usually has no publicly
//! signed name, and a pinned fleet cannot be redirected by any CA. The
//! handshake signature is still verified against that certificate's key,
//! so only the holder of the gateway's private key can answer.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Result, ShipError};

#[derive(Debug)]
struct Pinned {
    want: [u8; 32],
    provider: Arc<CryptoProvider>,
}

/// TLS 1.3 to the certificate whose SHA-256 is `want`. AES-128-GCM comes
/// first (the server follows the client's order): it takes ten rounds
/// where AES-256 takes fourteen, and every byte a protected machine sends
/// goes through it.
fn tls_config(want: [u8; 32]) -> Result<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    Ok(rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ShipError::Internal(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { want, provider }))
        .with_no_client_auth())
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let got = Sha256::digest(end_entity.as_ref());
        if got.as_slice() == self.want {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the gateway's certificate is SHA256:{}, not the pinned SHA256:{}",
                hex::encode(got),
                hex::encode(self.want)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client of one gateway.
#[derive(Clone)]
pub struct GatewayClient {
    pub url: String,
    http: reqwest::Client,
    auth: Option<String>,
}

/// An answer other than 200: the status and the gateway's JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn error(&self) -> String {
        self.body["error"].as_str().unwrap_or("no reason given").to_string()
    }
}

impl GatewayClient {
    /// A client that trusts only the certificate `fingerprint` names.
    pub fn new(url: &str, fingerprint: &str, auth: Option<(&str, &str)>) -> Result<Self> {
        Self::with_authorization(url, fingerprint, auth.map(|(m, s)| format!("Bearer {m}:{s}")))
    }

    /// A client of the fleet view, with the admin credential.
    pub fn admin(url: &str, fingerprint: &str, secret: &str) -> Result<Self> {
        Self::with_authorization(url, fingerprint, Some(crate::gateway::admin::header(secret)))
    }

    fn with_authorization(url: &str, fingerprint: &str, auth: Option<String>) -> Result<Self> {
        let want = crate::gateway::tls::parse_fingerprint(fingerprint)?;
        let tls = tls_config(want)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ShipError::Internal(format!("HTTPS client: {e}")))?;
        let url = url.trim_end_matches('/').to_string();
        if !url.starts_with("https://") {
            return Err(ShipError::Usage(format!("gateway {url:?}: expected https://HOST:PORT")));
        }
        Ok(GatewayClient { url, http, auth })
    }

    fn unreachable(&self, e: reqwest::Error) -> ShipError {
        // The pinning failure is in the error's sources: show them all.
        let mut why = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            why.push_str(": ");
            why.push_str(&s.to_string());
            src = s.source();
        }
        ShipError::Gateway {
            url: self.url.clone(),
            why,
        }
    }

    /// Sends a request; `Ok(Ok(json))` on 200, `Ok(Err(answer))` on any
    /// other status, `Err` when the gateway could not be reached.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<bytes::Bytes>,
    ) -> Result<std::result::Result<Value, Answer>> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(a) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(if status == 200 {
            Ok(body)
        } else {
            Err(Answer { status, body })
        })
    }

    /// `GET path` whose answer is bytes (a point's chunks).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        self.bytes(reqwest::Method::GET, path, None).await
    }

    /// A request whose answer is bytes; any status but 200 is an error
    /// (401, 403 and 404 as a usage error: this machine may not do that).
    pub async fn bytes(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Result<Vec<u8>> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(a) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if status != 200 {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let a = Answer { status, body: v };
            return Err(match status {
                401 | 403 | 404 => ShipError::Usage(format!("gateway {}: {}", self.url, a.error())),
                _ => ShipError::Gateway {
                    url: self.url.clone(),
                    why: format!("HTTP {status}: {}", a.error()),
                },
            });
        }
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::tls;

    /// A handshake in memory between this client's configuration pinned
    /// to `want` and the gateway's with a certificate made in `dir`: the
    /// negotiated suite, or the error.
    fn handshake(
        dir: &std::path::Path,
        want: Option<[u8; 32]>,
    ) -> std::result::Result<rustls::CipherSuite, rustls::Error> {
        let (certs, key, _) = tls::load_or_create(&tls::TlsFiles::in_dir(dir)).unwrap();
        let want = want.unwrap_or_else(|| tls::parse_fingerprint(&tls::fingerprint(&certs[0])).unwrap());
        let name = ServerName::try_from("gateway").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(tls_config(want).unwrap()), name).unwrap();
        let mut s = rustls::ServerConnection::new(tls::server_config(certs, key).unwrap()).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(c.negotiated_cipher_suite().unwrap().suite());
            }
        }
        panic!("the handshake did not end");
    }

    #[test]
    fn the_gateway_agrees_to_aes_128_and_another_certificate_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            handshake(d.path(), None).unwrap(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let err = handshake(d.path(), Some([7u8; 32])).unwrap_err();
        assert!(matches!(err, rustls::Error::General(_)), "{err}");
    }
}
