//! A repository on a blob store: open/init, keys, config, typed object
//! access with durable writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::crypto::{open, random, seal, wrap_cipher, Keys};
use crate::error::{to_json, to_json_pretty, Result, ShipError};

/// Repository parameters (the `config` object).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    pub version: u32,
    pub repo_id: Uuid,
    pub chunk_size: u32,
    pub pack_size: u64,
    pub checkpoint_every: u64,
    pub created_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WrappedKey {
    version: u32,
    id: Uuid,
    nonce_and_ciphertext: String,
}

/// Where a repository lives: any `ObjectStore`, the URL it is named by in
/// messages, and for `file://` the local directory (objects written there
/// are fsynced). Tests build one on `object_store::memory::InMemory` or a
/// wrapper that throttles or fails requests.
#[derive(Clone)]
pub struct Store {
    pub store: Arc<dyn ObjectStore>,
    pub url: String,
    pub local_root: Option<PathBuf>,
}

impl Store {
    /// Any store, named `url` in messages.
    pub fn new(store: Arc<dyn ObjectStore>, url: &str) -> Self {
        Store {
            store,
            url: url.into(),
            local_root: None,
        }
    }

    /// The store a repository URL names (see [`store_for`]).
    pub fn for_url(url: &str) -> Result<Self> {
        let (store, local_root) = store_for(url)?;
        Ok(Store {
            store,
            url: url.into(),
            local_root,
        })
    }

    /// [`Store::for_url`] for `init`: a `file://` directory is created.
    pub fn create_for_url(url: &str) -> Result<Self> {
        if let Some(path) = local_path(url)? {
            std::fs::create_dir_all(&path).map_err(|e| ShipError::io(&path, "create repository directory", e))?;
        }
        let (store, local_root) = store_for(url)?;
        Ok(Store {
            store,
            url: url.into(),
            local_root,
        })
    }
}

/// An open repository.
/// Cheap to clone (the store is shared): uploads run as their own tasks.
#[derive(Clone)]
pub struct Repo {
    pub store: Arc<dyn ObjectStore>,
    pub url: String,
    /// Local root for `file://` repositories (objects are fsynced there).
    local_root: Option<PathBuf>,
    pub config: RepoConfig,
    pub keys: Keys,
}

/// Splits `az://container/prefix`.
pub fn parse_az(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("az://")?;
    let (c, p) = rest.split_once('/').unwrap_or((rest, ""));
    (!c.is_empty()).then(|| (c.to_string(), p.trim_matches('/').to_string()))
}

/// The directory of a `file://` URL (or plain absolute path); None for
/// `az://`; an error for anything else. Checks only, creates nothing.
pub fn local_path(url: &str) -> Result<Option<PathBuf>> {
    if parse_az(url).is_some() {
        return Ok(None);
    }
    let path = if let Some(p) = url.strip_prefix("file://") {
        PathBuf::from(p)
    } else if url.contains("://") {
        return Err(ShipError::Usage(format!(
            "{url}: unsupported repository URL; use file:///path or az://container/prefix"
        )));
    } else {
        PathBuf::from(url)
    };
    if !path.is_absolute() {
        return Err(ShipError::Usage(format!("{url}: the repository path must be absolute")));
    }
    Ok(Some(path))
}

/// Parses a repository URL: `file:///path` (or a plain absolute path) or
/// `az://container/prefix` (Azure Storage, or Azurite with the emulator
/// variables).
pub fn store_for(url: &str) -> Result<(Arc<dyn ObjectStore>, Option<PathBuf>)> {
    if let Some((container, prefix)) = parse_az(url) {
        // Per-request timeout: 16 MiB packs on a slow link need more than
        // object_store's 30 s default; HRL_STORE_TIMEOUT (e.g. "5s")
        // overrides it (the fault tests use a short one).
        let timeout = std::env::var("HRL_STORE_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<hrl_common::HumanDuration>().ok())
            .map(Duration::from)
            .unwrap_or(Duration::from_secs(120));
        let az = object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_client_options(object_store::ClientOptions::new().with_timeout(timeout))
            .with_container_name(&container)
            .with_retry(object_store::RetryConfig {
                max_retries: 10,
                retry_timeout: std::time::Duration::from_secs(180),
                ..Default::default()
            })
            .build()
            .map_err(|e| ShipError::Store {
                url: url.into(),
                op: "open",
                key: String::new(),
                source: Box::new(e),
            })?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(az)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(az, prefix.as_str()))
        };
        return Ok((store, None));
    }
    let Some(path) = local_path(url)? else {
        return Err(ShipError::Usage(format!("{url}: not a repository URL")));
    };
    // Opening never creates anything: a mistyped path is "no repository
    // here", not a new empty directory.
    if !path.is_dir() {
        return Err(ShipError::NoRepository { url: url.into() });
    }
    let fs = object_store::local::LocalFileSystem::new_with_prefix(&path).map_err(|e| ShipError::Store {
        url: url.into(),
        op: "open",
        key: String::new(),
        source: Box::new(e),
    })?;
    Ok((Arc::new(fs), Some(path)))
}

/// Reads a key file: 64 hex characters (32 bytes). Refuses a key file
/// others can read.
pub fn read_key_file(path: &Path) -> Result<[u8; 32]> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path).map_err(|e| ShipError::KeyFile {
        path: path.into(),
        why: format!("cannot be read: {e}"),
    })?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(ShipError::KeyFile {
            path: path.into(),
            why: format!(
                "is readable by others (mode {:o}); chmod 600 it",
                md.permissions().mode() & 0o777
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| ShipError::io(path, "read key file", e))?;
    let b = hex::decode(text.trim()).map_err(|_| ShipError::KeyFile {
        path: path.into(),
        why: "is not 64 hex characters".into(),
    })?;
    b.try_into().map_err(|_| ShipError::KeyFile {
        path: path.into(),
        why: "must hold exactly 32 bytes (64 hex characters)".into(),
    })
}

/// Creates a new key file (0600) unless it exists.
pub fn create_key_file(path: &Path) -> Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(false);
    }
    let key: [u8; 32] = random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ShipError::io(path, "create key file", e))?;
    f.write_all(format!("{}\n", hex::encode(key)).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| ShipError::io(path, "write key file", e))?;
    Ok(true)
}

fn config_mac_input(c: &RepoConfig) -> Result<Vec<u8>> {
    let mut c = c.clone();
    c.mac = None;
    to_json(&c, "repository config")
}

impl Repo {
    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> ShipError {
        ShipError::Store {
            url: self.url.clone(),
            op,
            key: key.into(),
            source: Box::new(e),
        }
    }

    /// Creates a repository with a new master key wrapped by `key_file`.
    pub async fn init(
        url: &str,
        key_file: &Path,
        chunk_size: u32,
        pack_size: u64,
        checkpoint_every: u64,
    ) -> Result<Repo> {
        let st = Store::create_for_url(url)?;
        if let Some((container, _)) = parse_az(url) {
            if crate::azure::create_container(&container).await? {
                tracing::info!(container = %container, "created the container");
            }
        }
        Self::init_in(st, key_file, chunk_size, pack_size, checkpoint_every).await
    }

    /// [`Repo::init`] in any store.
    pub async fn init_in(
        st: Store,
        key_file: &Path,
        chunk_size: u32,
        pack_size: u64,
        checkpoint_every: u64,
    ) -> Result<Repo> {
        let Store { store, url, local_root } = st;
        let url = url.as_str();
        if store.head(&ObjPath::from("config")).await.is_ok() {
            return Err(ShipError::RepositoryExists { url: url.into() });
        }
        let kf = read_key_file(key_file)?;
        let master: [u8; 32] = random();
        let keys = Keys::derive(&master);
        let repo_id = Uuid::new_v4();
        let key_id = Uuid::new_v4();
        let mut aad = repo_id.as_bytes().to_vec();
        aad.extend_from_slice(key_id.as_bytes());
        let wrapped = WrappedKey {
            version: 1,
            id: key_id,
            nonce_and_ciphertext: hex::encode(seal(&wrap_cipher(&kf), &aad, &master)),
        };
        let mut config = RepoConfig {
            version: 1,
            repo_id,
            chunk_size,
            pack_size,
            checkpoint_every,
            created_ns: hrl_format::now_ns(),
            mac: None,
        };
        config.mac = Some(hex::encode(keys.mac(&config_mac_input(&config)?)));
        let repo = Repo {
            store,
            url: url.into(),
            local_root,
            config: config.clone(),
            keys,
        };
        let exists = || ShipError::RepositoryExists { url: url.into() };
        if !repo
            .put_new(&format!("keys/{key_id}"), to_json(&wrapped, "wrapped key")?)
            .await?
        {
            return Err(exists());
        }
        // config last: a repository is only a repository once its key exists.
        if !repo
            .put_new("config", to_json_pretty(&config, "repository config")?)
            .await?
        {
            return Err(exists());
        }
        Ok(repo)
    }

    /// Opens a repository with `key_file`.
    pub async fn open(url: &str, key_file: &Path) -> Result<Repo> {
        Self::open_in(Store::for_url(url)?, key_file).await
    }

    /// [`Repo::open`] in any store.
    pub async fn open_in(st: Store, key_file: &Path) -> Result<Repo> {
        let Store { store, url, local_root } = st;
        let url = url.as_str();
        let raw = match store.get(&ObjPath::from("config")).await {
            Ok(r) => r.bytes().await.map_err(|e| ShipError::Store {
                url: url.into(),
                op: "read",
                key: "config".into(),
                source: Box::new(e),
            })?,
            Err(object_store::Error::NotFound { .. }) => return Err(ShipError::NoRepository { url: url.into() }),
            Err(e) => {
                return Err(ShipError::Store {
                    url: url.into(),
                    op: "read",
                    key: "config".into(),
                    source: Box::new(e),
                })
            }
        };
        let v: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| ShipError::corrupt(format!("{url}/config"), e.to_string()))?;
        let version = v["version"].as_u64().unwrap_or(0) as u32;
        if version > 1 {
            return Err(ShipError::NewerRepository {
                url: url.into(),
                version,
            });
        }
        let config: RepoConfig =
            serde_json::from_value(v).map_err(|e| ShipError::corrupt(format!("{url}/config"), e.to_string()))?;
        let kf = read_key_file(key_file)?;
        let cipher = wrap_cipher(&kf);
        let key_objs: Vec<_> = store
            .list(Some(&ObjPath::from("keys")))
            .try_collect()
            .await
            .map_err(|e| ShipError::Store {
                url: url.into(),
                op: "list",
                key: "keys/".into(),
                source: Box::new(e),
            })?;
        let mut master = None;
        for o in &key_objs {
            let b = store
                .get(&o.location)
                .await
                .map_err(|e| ShipError::Store {
                    url: url.into(),
                    op: "read",
                    key: o.location.to_string(),
                    source: Box::new(e),
                })?
                .bytes()
                .await
                .map_err(|e| ShipError::Store {
                    url: url.into(),
                    op: "read",
                    key: o.location.to_string(),
                    source: Box::new(e),
                })?;
            let Ok(w) = serde_json::from_slice::<WrappedKey>(&b) else {
                continue;
            };
            let Ok(sealed) = hex::decode(&w.nonce_and_ciphertext) else {
                continue;
            };
            let mut aad = config.repo_id.as_bytes().to_vec();
            aad.extend_from_slice(w.id.as_bytes());
            let m = open(&cipher, &aad, &sealed).ok();
            if let Some(m) = m.and_then(|m| <[u8; 32]>::try_from(m.as_slice()).ok()) {
                master = Some(m);
                break;
            }
        }
        let Some(master) = master else {
            return Err(ShipError::WrongKey {
                key_file: key_file.into(),
                url: url.into(),
                keys: key_objs.len(),
            });
        };
        let keys = Keys::derive(&master);
        let want = hex::encode(keys.mac(&config_mac_input(&config)?));
        if config.mac.as_deref() != Some(want.as_str()) {
            return Err(ShipError::corrupt(
                format!("{url}/config"),
                "its authentication code does not match: the parameters were changed",
            ));
        }
        Ok(Repo {
            store,
            url: url.into(),
            local_root,
            config,
            keys,
        })
    }

    /// Writes an object durably. `create`: fail if it exists.
    /// Writes an object. `create`: the name is new (packs and indexes have
    /// random names, manifests are looked up first), so an object already
    /// there can only be this shipper's own earlier attempt whose answer
    /// was lost (a reset or a truncated response after the store took it):
    /// that counts as written. Use [`Repo::put_new`] where an existing
    /// object must be an error.
    pub async fn put(&self, key: &str, data: Vec<u8>, create: bool) -> Result<()> {
        match self.put_inner(key, data, create).await {
            Err(ShipError::Store { source, .. })
                if create && matches!(*source, object_store::Error::AlreadyExists { .. }) =>
            {
                tracing::debug!(key, "object already written by an earlier attempt");
                Ok(())
            }
            r => r,
        }
    }

    /// Creates an object only if the name is free; `false` if it exists
    /// (locks, a repository's config).
    pub async fn put_new(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        match self.put_inner(key, data, true).await {
            Ok(()) => Ok(true),
            Err(ShipError::Store { source, .. }) if matches!(*source, object_store::Error::AlreadyExists { .. }) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn put_inner(&self, key: &str, data: Vec<u8>, create: bool) -> Result<()> {
        let p = ObjPath::from(key);
        let opts = PutOptions {
            mode: if create { PutMode::Create } else { PutMode::Overwrite },
            ..Default::default()
        };
        self.store
            .put_opts(&p, PutPayload::from(Bytes::from(data)), opts)
            .await
            .map_err(|e| self.err("write", key, e))?;
        if let Some(root) = &self.local_root {
            // LocalFileSystem renames into place without fsync: make the
            // object and its directory durable before anything refers to it.
            let file = root.join(key);
            let f = std::fs::File::open(&file).map_err(|e| ShipError::io(&file, "open", e))?;
            f.sync_all().map_err(|e| ShipError::io(&file, "fsync", e))?;
            if let Some(dir) = file.parent() {
                hrl_format::sync_dir(dir)?;
            }
        }
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let p = ObjPath::from(key);
        self.store
            .get(&p)
            .await
            .map_err(|e| self.err("read", key, e))?
            .bytes()
            .await
            .map_err(|e| self.err("read", key, e))
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&ObjPath::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("stat", key, e)),
        }
    }

    /// An object's version: its ETag (on a local directory, from inode,
    /// size and modification time), or size and time when the store gives
    /// none; `None` when it does not exist.
    pub async fn version(&self, key: &str) -> Result<Option<String>> {
        match self.store.head(&ObjPath::from(key)).await {
            Ok(m) => Ok(Some(m.e_tag.unwrap_or_else(|| {
                format!("{}-{}", m.size, m.last_modified.timestamp_nanos_opt().unwrap_or(0))
            }))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("stat", key, e)),
        }
    }

    pub async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        self.store
            .get_range(&ObjPath::from(key), start..end)
            .await
            .map_err(|e| self.err("read range", key, e))
    }

    /// Object names under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let p = ObjPath::from(prefix);
        let mut v: Vec<(String, u64)> = self
            .store
            .list(Some(&p))
            .map_ok(|m| (m.location.to_string(), m.size))
            .try_collect()
            .await
            .map_err(|e| self.err("list", prefix, e))?;
        v.sort();
        Ok(v)
    }

    /// The numbers that name the objects under `prefix` (point sequences,
    /// lease generations), ascending; other names are skipped.
    pub async fn list_numbered(&self, prefix: &str) -> Result<Vec<u64>> {
        let mut v: Vec<u64> = self
            .list(prefix)
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.rsplit('/').next()?.parse().ok())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Objects under `prefix` with size and age (from the store's
    /// last-modified time).
    pub async fn list_with_age(&self, prefix: &str) -> Result<Vec<(String, u64, std::time::Duration)>> {
        let p = ObjPath::from(prefix);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let mut v: Vec<(String, u64, std::time::Duration)> = self
            .store
            .list(Some(&p))
            .map_ok(|m| {
                let age = (now - m.last_modified.timestamp()).max(0) as u64;
                (m.location.to_string(), m.size, std::time::Duration::from_secs(age))
            })
            .try_collect()
            .await
            .map_err(|e| self.err("list", prefix, e))?;
        v.sort();
        Ok(v)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        self.store
            .delete(&ObjPath::from(key))
            .await
            .map_err(|e| self.err("delete", key, e))
    }
}
