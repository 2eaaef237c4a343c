//! A store wrapper for tests of the repository on any `ObjectStore`: it
//! counts requests and fails, on demand, every write whose key starts with
//! a prefix (as an endpoint that keeps failing would, after the client's
//! retries). Wraps `object_store::memory::InMemory` or any other store.

use std::fmt;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};

/// Fails writes under a prefix while told to.
#[derive(Debug, Clone)]
pub struct FailingStore {
    inner: Arc<dyn ObjectStore>,
    fail_prefix: Arc<Mutex<Option<String>>>,
    counts: Arc<Mutex<(u64, u64)>>,
}

impl FailingStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FailingStore {
            inner,
            fail_prefix: Arc::default(),
            counts: Arc::default(),
        }
    }

    /// From now on every write whose key starts with `prefix` fails (None:
    /// none fails).
    pub fn fail_writes_under(&self, prefix: Option<&str>) {
        *self.fail_prefix.lock().unwrap_or_else(|p| p.into_inner()) = prefix.map(str::to_string);
    }

    /// (writes that went through, writes refused).
    pub fn writes(&self) -> (u64, u64) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refuse(&self, location: &Path) -> Option<object_store::Error> {
        let failing = self.fail_prefix.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match failing.as_deref() {
            Some(p) if location.as_ref().starts_with(p) => {
                c.1 += 1;
                Some(object_store::Error::Generic {
                    store: "FailingStore",
                    source: format!("injected failure writing {location}").into(),
                })
            }
            _ => {
                c.0 += 1;
                None
            }
        }
    }
}

impl fmt::Display for FailingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FailingStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        if let Some(e) = self.refuse(location) {
            return Err(e);
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        if let Some(e) = self.refuse(location) {
            return Err(e);
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
