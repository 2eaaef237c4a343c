//! One signed REST request to the Blob service, retried while the failure
//! is transient (the connection failed, a timeout, 500, 503 ServerBusy),
//! so a restore of many pages survives a busy service.

use std::time::Duration;

use bytes::Bytes;
use url::Url;

use super::auth::{Account, API_VERSION};
use crate::error::{Result, ShipError};

/// Attempts per request (the first and up to five retries, 0.2 s doubling).
const ATTEMPTS: u32 = 6;

/// A request: its method, URL (query included), the headers that take
/// part in the signature (lower-case names) and its body.
pub struct Req {
    pub method: reqwest::Method,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Req {
    pub fn new(method: reqwest::Method, url: Url) -> Self {
        Req {
            method,
            url,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    /// Metadata headers (`x-ms-meta-NAME`).
    pub fn meta<'a>(mut self, meta: impl IntoIterator<Item = &'a (&'a str, String)>) -> Self {
        for (k, v) in meta {
            self.headers.push((format!("x-ms-meta-{k}"), v.clone()));
        }
        self
    }

    pub fn query(mut self, q: &str) -> Self {
        self.url.set_query(Some(q));
        self
    }

    pub fn body(mut self, b: Bytes) -> Self {
        self.body = b;
        self
    }
}

/// An answer: status, headers and body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).and_then(|v| v.to_str().ok())
    }

    /// The service's error code (`<Code>` of the body, or the
    /// `x-ms-error-code` header of a HEAD).
    pub fn code(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        body.split("<Code>")
            .nth(1)
            .and_then(|r| r.split("</Code>").next())
            .map(str::to_string)
            .or_else(|| self.header("x-ms-error-code").map(str::to_string))
            .unwrap_or_default()
    }
}

/// The HTTP client of the Blob service requests. Per-request timeout 120 s
/// (a 4 MiB page on a slow link), or `HRL_STORE_TIMEOUT` (e.g. "5s"), as
/// for the repository's store.
pub fn client() -> reqwest::Client {
    let timeout = std::env::var("HRL_STORE_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<hrl_common::HumanDuration>().ok())
        .map(Duration::from)
        .unwrap_or(Duration::from_secs(120));
    reqwest::Client::builder().timeout(timeout).build().unwrap_or_default()
}

/// Sends `r` signed for `acct`; retries transient failures. `what` names
/// the request in errors (`put pages az://vhds/a.vhd`). Any status comes
/// back as an [`Answer`]; only a request that never got one is an error.
pub async fn send(http: &reqwest::Client, acct: &Account, r: &Req, what: &str) -> Result<Answer> {
    let mut delay = Duration::from_millis(200);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match once(http, acct, r).await {
            Ok(a) if !matches!(a.status, 500 | 503) => return Ok(a),
            Ok(a) => last = format!("the service answered {} {}", a.status, a.code()),
            Err(e) => last = e,
        }
        if attempt < ATTEMPTS {
            tracing::debug!(what, attempt, why = %last, "retrying a blob request");
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    Err(ShipError::Blob {
        what: what.to_string(),
        why: format!("{last} (after {ATTEMPTS} attempts)"),
    })
}

async fn once(http: &reqwest::Client, acct: &Account, r: &Req) -> std::result::Result<Answer, String> {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut headers = r.headers.clone();
    headers.push(("x-ms-date".into(), date));
    headers.push(("x-ms-version".into(), API_VERSION.into()));
    let sends_length = r.method == reqwest::Method::PUT;
    if sends_length {
        headers.push(("content-length".into(), r.body.len().to_string()));
    }
    let auth = acct
        .authorization(r.method.as_str(), &r.url, &headers)
        .map_err(|e| e.to_string())?;
    let mut b = http.request(r.method.clone(), r.url.clone());
    for (k, v) in &headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let resp = b
        .header("authorization", auth)
        .body(r.body.clone())
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|e| e.without_url().to_string())?;
    Ok(Answer { status, headers, body })
}

/// An error for an answer the caller did not expect.
pub fn unexpected(what: &str, a: &Answer) -> ShipError {
    ShipError::Blob {
        what: what.to_string(),
        why: format!("the service answered {} {}", a.status, a.code()),
    }
}
