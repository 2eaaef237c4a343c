//! Azure Blob Storage specifics object_store does not cover: creating the
//! container (`hrl-shipper init` creates it when missing).
//!
//! Credentials come from the environment, as object_store reads them:
//! `AZURE_STORAGE_ACCOUNT_NAME` and `AZURE_STORAGE_ACCOUNT_KEY` (or
//! `AZURE_STORAGE_ACCESS_KEY`), or the emulator (Azurite) with
//! `AZURE_STORAGE_USE_EMULATOR=true` and `AZURITE_BLOB_STORAGE_URL`. The
//! key is only used to sign; it never appears in a message or log.

use base64::Engine;
use hmac::{Hmac, Mac};

use crate::error::{Result, ShipError};

/// Azurite's documented development account.
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const API_VERSION: &str = "2021-12-02";

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Whether the emulator variables are set.
pub fn use_emulator() -> bool {
    env("AZURE_STORAGE_USE_EMULATOR").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// (account, key, container URL, canonicalized resource) for `container`.
fn target(container: &str) -> Result<(String, String, String, String)> {
    if use_emulator() {
        let base = env("AZURITE_BLOB_STORAGE_URL").unwrap_or_else(|| "http://127.0.0.1:10000".into());
        let base = base.trim_end_matches('/');
        return Ok((
            EMULATOR_ACCOUNT.into(),
            EMULATOR_KEY.into(),
            format!("{base}/{EMULATOR_ACCOUNT}/{container}?restype=container"),
            // Path-style (emulator) URLs carry the account in the path too.
            format!("/{EMULATOR_ACCOUNT}/{EMULATOR_ACCOUNT}/{container}\nrestype:container"),
        ));
    }
    let account = env("AZURE_STORAGE_ACCOUNT_NAME").ok_or_else(|| {
        ShipError::Usage("az:// repositories need AZURE_STORAGE_ACCOUNT_NAME (or the Azurite variables)".into())
    })?;
    let key = env("AZURE_STORAGE_ACCOUNT_KEY").or_else(|| env("AZURE_STORAGE_ACCESS_KEY")).ok_or_else(|| {
        ShipError::Usage(
            "creating a container needs AZURE_STORAGE_ACCOUNT_KEY; create it yourself otherwise (init uses it when it exists)"
                .into(),
        )
    })?;
    Ok((
        account.clone(),
        key,
        format!("https://{account}.blob.core.windows.net/{container}?restype=container"),
        format!("/{account}/{container}\nrestype:container"),
    ))
}

/// SharedKey signature of a bodiless PUT with x-ms-date and x-ms-version.
fn sign(key_b64: &str, date: &str, resource: &str) -> Result<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_b64)
        .map_err(|_| ShipError::Usage("the storage account key is not base64".into()))?;
    let to_sign = format!("PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n{resource}");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key)
        .map_err(|_| ShipError::Usage("the storage account key is unusable".into()))?;
    mac.update(to_sign.as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Creates `container` if it does not exist. Returns true when created.
pub async fn create_container(container: &str) -> Result<bool> {
    let (account, key, url, resource) = target(container)?;
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let sig = sign(&key, &date, &resource)?;
    let resp = reqwest::Client::new()
        .put(&url)
        .header("x-ms-date", &date)
        .header("x-ms-version", API_VERSION)
        .header("Content-Length", "0")
        .header("Authorization", format!("SharedKey {account}:{sig}"))
        .send()
        .await
        .map_err(|e| ShipError::Usage(format!("create container {container}: {}", e.without_url())))?;
    match resp.status().as_u16() {
        201 => Ok(true),
        409 => Ok(false),
        s => {
            let body = resp.text().await.unwrap_or_default();
            let code = body
                .split("<Code>")
                .nth(1)
                .and_then(|r| r.split("</Code>").next())
                .unwrap_or("");
            Err(ShipError::Usage(format!(
                "create container {container}: the service answered {s} {code}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // Computed independently (Python hmac/sha256/base64) for this input.
        let s = sign(
            EMULATOR_KEY,
            "Thu, 26 Nov 2026 04:30:00 GMT",
            "/devstoreaccount1/devstoreaccount1/c\nrestype:container",
        )
        .unwrap();
        assert_eq!(s.len(), 44);
        assert_eq!(s, include_str!("../../tests/data/sharedkey-vector.txt").trim());
    }
}
