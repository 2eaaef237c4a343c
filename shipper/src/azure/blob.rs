//! One blob: page blob writes, page ranges, metadata, snapshots, copies.
//!
//! Every method names the blob in its errors. A conflict the operator must
//! resolve (the blob exists) is a usage error; anything else the service
//! answers is a `Blob` error (exit 3, trying again may work).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde::Deserialize;
use url::Url;

use super::auth::Account;
use super::request::{send, unexpected, Answer, Req};
use super::BlobUrl;
use crate::error::{Result, ShipError};

/// Metadata naming the request that made a blob (see [`PageBlob::create`]).
const OP: &str = "hrl_op";

/// The largest Put Page the service takes.
pub const MAX_PAGE_WRITE: usize = 4 << 20;

/// What Get Blob Properties says.
#[derive(Debug, Clone)]
pub struct BlobProps {
    /// `PageBlob`, `BlockBlob` or `AppendBlob`.
    pub blob_type: String,
    pub len: u64,
    /// Metadata, names in lower case.
    pub meta: BTreeMap<String, String>,
    /// `pending`, `success`, `aborted`, `failed` after a copy.
    pub copy_status: Option<String>,
}

/// A snapshot of a blob: its id (a timestamp) and metadata.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub snapshot: String,
    pub meta: BTreeMap<String, String>,
}

/// A blob of one account, reached with one HTTP client.
#[derive(Clone)]
pub struct PageBlob {
    http: reqwest::Client,
    acct: Account,
    pub url: BlobUrl,
}

impl PageBlob {
    pub fn new(http: reqwest::Client, acct: Account, url: BlobUrl) -> Self {
        PageBlob { http, acct, url }
    }

    /// The blob's REST URL (of `snapshot` when given).
    pub fn rest_url(&self, snapshot: Option<&str>) -> Url {
        let mut u = self.acct.url(&self.url.container, Some(&self.url.path));
        if let Some(s) = snapshot {
            u.query_pairs_mut().append_pair("snapshot", s);
        }
        u
    }

    async fn call(&self, r: Req, op: &str) -> Result<Answer> {
        send(&self.http, &self.acct, &r, &format!("{op} {}", self.url)).await
    }

    fn req(&self, m: Method, snapshot: Option<&str>, comp: Option<&str>) -> Req {
        let mut u = self.rest_url(snapshot);
        if let Some(c) = comp {
            u.query_pairs_mut().append_pair("comp", c);
        }
        Req::new(m, u)
    }

    /// The blob's properties, or None when it does not exist.
    pub async fn properties(&self, snapshot: Option<&str>) -> Result<Option<BlobProps>> {
        let a = self
            .call(self.req(Method::HEAD, snapshot, None), "get properties of")
            .await?;
        match a.status {
            200 => {}
            404 => return Ok(None),
            _ => return Err(unexpected(&format!("get properties of {}", self.url), &a)),
        }
        let meta = a
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let name = k.as_str().strip_prefix("x-ms-meta-")?;
                Some((name.to_lowercase(), v.to_str().ok()?.to_string()))
            })
            .collect();
        Ok(Some(BlobProps {
            blob_type: a.header("x-ms-blob-type").unwrap_or("").to_string(),
            len: a.header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0),
            meta,
            copy_status: a.header("x-ms-copy-status").map(str::to_string),
        }))
    }

    /// Creates an empty (all-zero) page blob of `size` bytes (a multiple
    /// of 512). Refuses an existing blob unless `overwrite`. The blob
    /// carries `hrl_op=<random id>`: when a retried request finds the blob
    /// there because the first attempt did create it (its answer was
    /// lost), the id says it is ours.
    pub async fn create(&self, size: u64, overwrite: bool, meta: &[(&str, String)]) -> Result<()> {
        let op = uuid::Uuid::new_v4().simple().to_string();
        let mut r = self
            .req(Method::PUT, None, None)
            .header("x-ms-blob-type", "PageBlob")
            .header("x-ms-blob-content-length", size.to_string());
        if !overwrite {
            r = r.header("if-none-match", "*");
        }
        let op_meta = (OP, op.clone());
        r = r.meta(meta.iter().chain([&op_meta]));
        let a = self.call(r, "create page blob").await?;
        match a.status {
            201 => Ok(()),
            409 | 412 if self.made_by(&op).await? => Ok(()),
            409 | 412 => Err(self.exists()),
            _ => Err(unexpected(&format!("create page blob {}", self.url), &a)),
        }
    }

    /// Whether the blob carries `hrl_op=op` (this process made it).
    async fn made_by(&self, op: &str) -> Result<bool> {
        Ok(self
            .properties(None)
            .await?
            .is_some_and(|p| p.meta.get(OP).map(String::as_str) == Some(op)))
    }

    fn exists(&self) -> ShipError {
        ShipError::Usage(format!(
            "{}: the blob exists; give a new name, or --force to overwrite it; nothing was written",
            self.url
        ))
    }

    /// Writes `data` (a multiple of 512 bytes, at most 4 MiB) at `offset`.
    pub async fn put_pages(&self, offset: u64, data: Bytes) -> Result<()> {
        let end = offset + data.len() as u64 - 1;
        let r = self
            .req(Method::PUT, None, Some("page"))
            .header("x-ms-page-write", "update")
            .header("x-ms-range", format!("bytes={offset}-{end}"))
            .body(data);
        self.expect(r, "put pages into", 201).await
    }

    /// Clears `len` bytes at `offset` (both multiples of 512): they read
    /// as zeros and stop counting as written pages.
    pub async fn clear_pages(&self, offset: u64, len: u64) -> Result<()> {
        let r = self
            .req(Method::PUT, None, Some("page"))
            .header("x-ms-page-write", "clear")
            .header("x-ms-range", format!("bytes={offset}-{}", offset + len - 1));
        self.expect(r, "clear pages of", 201).await
    }

    async fn expect(&self, r: Req, op: &str, status: u16) -> Result<()> {
        let a = self.call(r, op).await?;
        if a.status == status {
            Ok(())
        } else {
            Err(unexpected(&format!("{op} {}", self.url), &a))
        }
    }

    /// The written page ranges, `[start, end)`, in order.
    pub async fn page_ranges(&self, snapshot: Option<&str>) -> Result<Vec<(u64, u64)>> {
        let a = self
            .call(self.req(Method::GET, snapshot, Some("pagelist")), "list page ranges of")
            .await?;
        if a.status != 200 {
            return Err(unexpected(&format!("list page ranges of {}", self.url), &a));
        }
        #[derive(Deserialize)]
        struct PageList {
            #[serde(rename = "PageRange", default)]
            ranges: Vec<Range>,
        }
        #[derive(Deserialize)]
        struct Range {
            #[serde(rename = "Start")]
            start: u64,
            #[serde(rename = "End")]
            end: u64,
        }
        let l: PageList = xml(&a.body, &self.url)?;
        Ok(l.ranges.into_iter().map(|r| (r.start, r.end + 1)).collect())
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, snapshot: Option<&str>, offset: u64, len: u64) -> Result<Bytes> {
        let r = self
            .req(Method::GET, snapshot, None)
            .header("x-ms-range", format!("bytes={offset}-{}", offset + len - 1));
        let a = self.call(r, "read").await?;
        match a.status {
            200 | 206 => Ok(a.body),
            _ => Err(unexpected(&format!("read {}", self.url), &a)),
        }
    }

    /// Replaces the blob's metadata.
    pub async fn set_metadata(&self, meta: &[(&str, String)]) -> Result<()> {
        let r = self.req(Method::PUT, None, Some("metadata")).meta(meta);
        self.expect(r, "set metadata of", 200).await
    }

    /// Takes a snapshot carrying `meta`; returns its id.
    pub async fn snapshot(&self, meta: &[(&str, String)]) -> Result<String> {
        let r = self.req(Method::PUT, None, Some("snapshot")).meta(meta);
        let a = self.call(r, "snapshot").await?;
        match (a.status, a.header("x-ms-snapshot")) {
            (201, Some(s)) => Ok(s.to_string()),
            _ => Err(unexpected(&format!("snapshot {}", self.url), &a)),
        }
    }

    /// Deletes the blob with its snapshots, or one snapshot. False when it
    /// was not there.
    pub async fn delete(&self, snapshot: Option<&str>) -> Result<bool> {
        let mut r = self.req(Method::DELETE, snapshot, None);
        if snapshot.is_none() {
            r = r.header("x-ms-delete-snapshots", "include");
        }
        let a = self.call(r, "delete").await?;
        match a.status {
            202 => Ok(true),
            404 => Ok(false),
            _ => Err(unexpected(&format!("delete {}", self.url), &a)),
        }
    }

    /// Copies `src` (at `snapshot`) into this blob inside the service and
    /// waits until the copy is complete; the copy gets `meta` (and
    /// `hrl_op`, as [`PageBlob::create`]). Refuses an existing blob unless
    /// `overwrite`.
    pub async fn copy_from(
        &self,
        src: &PageBlob,
        snapshot: Option<&str>,
        overwrite: bool,
        meta: &[(&str, String)],
    ) -> Result<()> {
        let op = uuid::Uuid::new_v4().simple().to_string();
        let what = format!("copy {} into {}", src.url, self.url);
        let mut r = self
            .req(Method::PUT, None, None)
            .header("x-ms-copy-source", src.rest_url(snapshot).to_string());
        if !overwrite {
            r = r.header("if-none-match", "*");
        }
        let op_meta = (OP, op.clone());
        r = r.meta(meta.iter().chain([&op_meta]));
        let a = self.call(r, "copy into").await?;
        let mut status = match a.status {
            202 => a.header("x-ms-copy-status").unwrap_or("pending").to_string(),
            409 | 412 if self.made_by(&op).await? => "pending".to_string(),
            409 | 412 => return Err(self.exists()),
            _ => return Err(unexpected(&what, &a)),
        };
        while status == "pending" {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let p = self.properties(None).await?;
            status = p.and_then(|p| p.copy_status).unwrap_or_else(|| "failed".into());
        }
        if status != "success" {
            return Err(ShipError::Blob {
                what,
                why: format!("the copy ended {status}"),
            });
        }
        Ok(())
    }

    /// This blob's snapshots, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let mut out = Vec::new();
        let mut marker = String::new();
        loop {
            let mut u = self.acct.url(&self.url.container, None);
            u.query_pairs_mut()
                .append_pair("restype", "container")
                .append_pair("comp", "list")
                .append_pair("include", "snapshots,metadata")
                .append_pair("prefix", &self.url.path);
            if !marker.is_empty() {
                u.query_pairs_mut().append_pair("marker", &marker);
            }
            let a = self.call(Req::new(Method::GET, u), "list snapshots of").await?;
            if a.status != 200 {
                return Err(unexpected(&format!("list snapshots of {}", self.url), &a));
            }
            let l: ListResult = xml(&a.body, &self.url)?;
            for b in l.blobs.blob {
                if let (true, Some(s)) = (b.name == self.url.path, b.snapshot.filter(|s| !s.is_empty())) {
                    let meta = b.metadata.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
                    out.push(SnapshotInfo { snapshot: s, meta });
                }
            }
            match l.next_marker.filter(|m| !m.is_empty()) {
                Some(m) => marker = m,
                None => break,
            }
        }
        out.sort_by(|a, b| a.snapshot.cmp(&b.snapshot));
        Ok(out)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListResult {
    blobs: Blobs,
    #[serde(default)]
    next_marker: Option<String>,
}

#[derive(Deserialize)]
struct Blobs {
    #[serde(rename = "Blob", default)]
    blob: Vec<BlobItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BlobItem {
    name: String,
    #[serde(default)]
    snapshot: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn xml<T: serde::de::DeserializeOwned>(body: &[u8], url: &BlobUrl) -> Result<T> {
    let text = std::str::from_utf8(body).map_err(|_| ShipError::Blob {
        what: url.to_string(),
        why: "the service answered with a body that is not UTF-8".into(),
    })?;
    quick_xml::de::from_str(text).map_err(|e| ShipError::Blob {
        what: url.to_string(),
        why: format!("the service answered XML this client cannot read: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_page_list_xml_parse() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="x" ContainerName="c"><Prefix>a.vhd</Prefix><Blobs><Blob><Name>a.vhd</Name><Snapshot>2026-11-28T10:00:00.0000000Z</Snapshot><Properties><BlobType>PageBlob</BlobType></Properties><Metadata><hrl_point>7</hrl_point></Metadata></Blob><Blob><Name>a.vhd</Name><Properties/></Blob><Blob><Name>a.vhdx</Name><Snapshot>2026</Snapshot></Blob></Blobs><NextMarker/></EnumerationResults>"#;
        let u = BlobUrl::parse("az://ccc/a.vhd").unwrap().unwrap();
        let l: ListResult = xml(body, &u).unwrap();
        assert_eq!(l.blobs.blob.len(), 3);
        assert_eq!(l.blobs.blob[0].metadata.get("hrl_point").map(String::as_str), Some("7"));
        assert!(l.next_marker.filter(|m| !m.is_empty()).is_none());
    }
}
