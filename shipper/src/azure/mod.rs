//! Azure Blob Storage beyond what object_store covers: creating a
//! container, and page blobs (a VHD an Azure managed disk is made from):
//! create, write and clear pages, list page ranges, snapshots, metadata,
//! server-side copy. Plain signed REST (SharedKey) over reqwest; `vhd`
//! is the fixed-VHD footer that makes a page blob a disk.
//!
//! A leaf: it knows the REST API, nothing of repositories or points.

pub mod auth;
pub mod blob;
pub mod container;
pub mod request;
pub mod vhd;

pub use auth::{use_emulator, Account};
pub use blob::{BlobProps, PageBlob, SnapshotInfo};
pub use container::create_container;

use crate::error::{Result, ShipError};

/// `az://container/path`: a blob (or, for a prefix, a place for blobs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUrl {
    pub container: String,
    pub path: String,
}

impl BlobUrl {
    /// Parses `az://container/path`; None when `s` is not an `az://` URL.
    /// An `az://` URL without a container is an error.
    pub fn parse(s: &str) -> Option<Result<Self>> {
        let rest = s.strip_prefix("az://")?;
        let (c, p) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = !c.is_empty()
            && c.len() >= 3
            && c.len() <= 63
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
        if !valid {
            return Some(Err(ShipError::Usage(format!(
                "{s}: expected az://CONTAINER/PATH with a container name of 3-63 lower-case letters, digits and hyphens"
            ))));
        }
        Some(Ok(BlobUrl {
            container: c.to_string(),
            path: p.trim_matches('/').to_string(),
        }))
    }

    /// A blob under this prefix.
    pub fn join(&self, name: &str) -> BlobUrl {
        let path = if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.path)
        };
        BlobUrl {
            container: self.container.clone(),
            path,
        }
    }
}

impl std::fmt::Display for BlobUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "az://{}/{}", self.container, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_urls_parse_and_refuse_bad_containers() {
        let u = BlobUrl::parse("az://vhds/web01/data.vhd").unwrap().unwrap();
        assert_eq!((u.container.as_str(), u.path.as_str()), ("vhds", "web01/data.vhd"));
        assert_eq!(u.to_string(), "az://vhds/web01/data.vhd");
        assert_eq!(BlobUrl::parse("az://sb/").map(|r| r.is_err()), Some(true));
        assert_eq!(BlobUrl::parse("az://Upper/x").map(|r| r.is_err()), Some(true));
        assert!(BlobUrl::parse("/tmp/x.img").is_none());
        assert_eq!(
            BlobUrl::parse("az://standby").unwrap().unwrap().join("a.vhd").path,
            "a.vhd"
        );
    }
}
