//! Test support: an HTTP proxy on loopback that sits in front of a blob
//! endpoint (Azurite) and injects faults per request, by a seeded schedule:
//! 500, 503 ServerBusy with Retry-After, connection resets, stalls past the
//! client's timeout, and truncated response bodies. The reliability tests
//! and `scripts/reliability.sh` ship through it.
//!
//! One request per connection (the forwarded request says
//! `Connection: close`), which is all a test needs and keeps the proxy
//! small.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Probability of each fault per request (they are tried in this order).
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub error_500: f64,
    pub busy_503: f64,
    pub reset: f64,
    pub stall: f64,
    pub truncate: f64,
    /// How long a stalled request hangs (longer than the client timeout).
    pub stall_for: Duration,
    pub seed: u64,
}

impl FaultPlan {
    /// Every fault at `p` each.
    pub fn uniform(p: f64, seed: u64) -> Self {
        FaultPlan {
            error_500: p,
            busy_503: p,
            reset: p,
            stall: p / 4.0,
            truncate: p,
            stall_for: Duration::from_secs(5),
            seed,
        }
    }
}

/// Faults injected so far.
#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct FaultCounts {
    pub requests: u64,
    pub error_500: u64,
    pub busy_503: u64,
    pub reset: u64,
    pub stall: u64,
    pub truncate: u64,
}

impl FaultCounts {
    pub fn faults(&self) -> u64 {
        self.error_500 + self.busy_503 + self.reset + self.stall + self.truncate
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    e500: AtomicU64,
    e503: AtomicU64,
    reset: AtomicU64,
    stall: AtomicU64,
    truncate: AtomicU64,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy)]
enum Fault {
    None,
    E500,
    E503,
    Reset,
    Stall,
    Truncate,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, plan: FaultPlan) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let enabled = Arc::new(AtomicBool::new(true));
        let counters = Arc::new(Counters::default());
        let rng = Arc::new(Mutex::new(plan.seed.max(1)));
        let (en, ct) = (enabled.clone(), counters.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let fault = {
                    ct.requests.fetch_add(1, Ordering::Relaxed);
                    if en.load(Ordering::Relaxed) {
                        let mut r = rng.lock().unwrap_or_else(|p| p.into_inner());
                        pick(&plan, &mut r)
                    } else {
                        Fault::None
                    }
                };
                match fault {
                    Fault::E500 => ct.e500.fetch_add(1, Ordering::Relaxed),
                    Fault::E503 => ct.e503.fetch_add(1, Ordering::Relaxed),
                    Fault::Reset => ct.reset.fetch_add(1, Ordering::Relaxed),
                    Fault::Stall => ct.stall.fetch_add(1, Ordering::Relaxed),
                    Fault::Truncate => ct.truncate.fetch_add(1, Ordering::Relaxed),
                    Fault::None => 0,
                };
                let stall_for = plan.stall_for;
                tokio::spawn(async move {
                    let _ = handle(sock, upstream, fault, stall_for).await;
                });
            }
        });
        Ok(FaultProxy {
            addr,
            enabled,
            counters,
            task,
        })
    }

    /// Faults on or off (off: a plain proxy).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn counts(&self) -> FaultCounts {
        let c = &self.counters;
        FaultCounts {
            requests: c.requests.load(Ordering::Relaxed),
            error_500: c.e500.load(Ordering::Relaxed),
            busy_503: c.e503.load(Ordering::Relaxed),
            reset: c.reset.load(Ordering::Relaxed),
            stall: c.stall.load(Ordering::Relaxed),
            truncate: c.truncate.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pick(p: &FaultPlan, state: &mut u64) -> Fault {
    // xorshift64*: reproducible for a seed.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let x = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
    let mut acc = 0.0;
    for (pr, f) in [
        (p.error_500, Fault::E500),
        (p.busy_503, Fault::E503),
        (p.reset, Fault::Reset),
        (p.stall, Fault::Stall),
        (p.truncate, Fault::Truncate),
    ] {
        acc += pr;
        if x < acc {
            return f;
        }
    }
    Fault::None
}

/// Reads one HTTP request (head and body); returns it with the
/// `Connection` header replaced by `Connection: close`.
async fn read_request(sock: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(8192);
    let mut tmp = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut len = 0usize;
    let mut chunked = false;
    let mut out_head = String::new();
    for (i, line) in head.split("\r\n").enumerate() {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if lower.starts_with("connection:") || line.is_empty() {
            continue;
        }
        out_head.push_str(line);
        out_head.push_str("\r\n");
        if i == 0 {
            out_head.push_str("Connection: close\r\n");
        }
    }
    out_head.push_str("\r\n");
    let mut body = buf[head_end..].to_vec();
    if chunked {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&tmp[..n]);
        }
    } else {
        while body.len() < len {
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&tmp[..n]);
        }
    }
    let mut req = out_head.into_bytes();
    req.extend_from_slice(&body);
    Ok(req)
}

async fn handle(mut sock: TcpStream, upstream: SocketAddr, fault: Fault, stall_for: Duration) -> std::io::Result<()> {
    let req = read_request(&mut sock).await?;
    match fault {
        Fault::E500 => {
            sock.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await?;
            return Ok(());
        }
        Fault::E503 => {
            sock.write_all(
                b"HTTP/1.1 503 Server Busy\r\nRetry-After: 1\r\nx-ms-error-code: ServerBusy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
            return Ok(());
        }
        Fault::Reset => {
            // SO_LINGER 0: close sends a RST, not a FIN.
            let _ = sock.set_zero_linger();
            drop(sock);
            return Ok(());
        }
        Fault::Stall => {
            tokio::time::sleep(stall_for).await;
            return Ok(());
        }
        Fault::None | Fault::Truncate => {}
    }
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&req).await?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await?;
    if let Fault::Truncate = fault {
        // Keep the head and half the body, then drop the connection.
        let head = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |i| i + 4);
        let keep = head + (resp.len() - head) / 2;
        sock.write_all(&resp[..keep]).await?;
        let _ = sock.set_zero_linger();
        return Ok(());
    }
    sock.write_all(&resp).await?;
    sock.shutdown().await
}
