//! The fleet view's one credential: `STATE/admin.secret` (0600), created
//! at the first start, and checked as HTTP Basic `admin:SECRET` (what a
//! browser sends after its login prompt, and `hrl-shipper fleet`). It
//! reads the fleet view and nothing else: it cannot send or read a disk.
//! The secret is never logged; only its file is named.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::machines::{same, sha_hex};
use crate::error::Result;

/// The user name of the admin credential.
pub const USER: &str = "admin";

pub fn secret_path(state: &Path) -> PathBuf {
    state.join("admin.secret")
}

/// Reads the admin secret, creating it (32 random bytes, hex) when absent.
pub fn load_or_create(state: &Path) -> Result<String> {
    let p = secret_path(state);
    if !p.exists() {
        let s = hex::encode(crate::repo::crypto::random::<32>());
        crate::private_file::write_private(&p, format!("{s}\n").as_bytes())?;
        tracing::info!(file = %p.display(), "created the fleet view's admin secret (user admin)");
    }
    read(&p)
}

/// Reads an admin secret file (refused when others can read it).
pub fn read(p: &Path) -> Result<String> {
    crate::private_file::check_private(p)?;
    let s = std::fs::read_to_string(p).map_err(|e| crate::error::ShipError::io(p, "read", e))?;
    Ok(s.trim().to_string())
}

/// The `Authorization` value for `secret`.
pub fn header(secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{secret}"))
    )
}

/// Whether an `Authorization` header value is the admin credential.
pub fn check(value: Option<&str>, secret: &str) -> bool {
    let Some(b64) = value.and_then(|v| v.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(raw) else { return false };
    match text.split_once(':') {
        Some((USER, given)) => same(&sha_hex(given), &sha_hex(secret)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_admin_secret_passes() {
        let dir = tempfile::tempdir().unwrap();
        let s = load_or_create(dir.path()).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap(), s, "created once");
        assert!(check(Some(&header(&s)), &s));
        assert!(!check(Some(&header("wrong")), &s));
        assert!(!check(None, &s));
        assert!(!check(Some(&format!("Bearer admin:{s}")), &s));
        let other = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("root:{s}"))
        );
        assert!(!check(Some(&other), &s));
        assert!(!check(Some("Basic !!!"), &s));
    }
}
