//! Test support: a TCP proxy on loopback that pumps bytes both ways and,
//! by a seeded schedule, resets a connection after some bytes or stalls
//! it. It keeps a copy of everything the client sent, so a test can show
//! that nothing readable crossed the wire (TLS end to end).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do to connections, each with its probability per connection.
#[derive(Debug, Clone)]
pub struct TcpFaults {
    /// Reset (RST) after a random number of bytes from the client.
    pub reset: f64,
    /// Stop forwarding after a random number of bytes, then hang for
    /// `stall_for` and close.
    pub stall: f64,
    pub stall_for: Duration,
    /// The first this many connections get a fault whatever the odds
    /// (resets and stalls alternating), so a short test sees some.
    pub first: u64,
    pub seed: u64,
}

impl TcpFaults {
    pub fn none() -> Self {
        TcpFaults {
            reset: 0.0,
            stall: 0.0,
            stall_for: Duration::from_secs(5),
            first: 0,
            seed: 1,
        }
    }
}

/// A running proxy; stops when dropped.
pub struct TcpProxy {
    pub addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<u8>>>,
    pub connections: Arc<AtomicU64>,
    pub faults: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// At most this many client bytes are kept for inspection.
const KEEP: usize = 64 << 20;

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, plan: TcpFaults) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let enabled = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(AtomicU64::new(0));
        let (en, sn, cn, fl) = (enabled.clone(), seen.clone(), connections.clone(), faults.clone());
        let task = tokio::spawn(async move {
            let mut rng = crate::Rng::new(plan.seed);
            while let Ok((sock, _)) = listener.accept().await {
                let i = cn.fetch_add(1, Ordering::Relaxed);
                let x = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                let cut_after = 200 + rng.below(256 * 1024) as usize;
                let fault = if !en.load(Ordering::Relaxed) {
                    None
                } else if i < plan.first {
                    Some(i % 2 == 1)
                } else if x < plan.reset {
                    Some(false)
                } else if x < plan.reset + plan.stall {
                    Some(true)
                } else {
                    None
                };
                if fault.is_some() {
                    fl.fetch_add(1, Ordering::Relaxed);
                }
                let (sn, stall_for) = (sn.clone(), plan.stall_for);
                tokio::spawn(async move {
                    let _ = pump(sock, upstream, fault.map(|s| (s, cut_after)), stall_for, sn).await;
                });
            }
        });
        Ok(TcpProxy {
            addr,
            enabled,
            seen,
            connections,
            faults,
            task,
        })
    }

    /// Faults on or off.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Everything clients sent so far (up to 64 MiB).
    pub fn client_bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways; with a fault `(stall, after)`, after `after` client
/// bytes either resets both sides or stalls.
async fn pump(
    mut client: TcpStream,
    upstream: SocketAddr,
    fault: Option<(bool, usize)>,
    stall_for: Duration,
    seen: Arc<Mutex<Vec<u8>>>,
) -> std::io::Result<()> {
    let mut server = TcpStream::connect(upstream).await?;
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut sent = 0usize;
    let mut a = [0u8; 16384];
    let mut b = [0u8; 16384];
    loop {
        tokio::select! {
            n = cr.read(&mut a) => {
                let n = n?;
                if n == 0 { break; }
                {
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    if s.len() < KEEP { s.extend_from_slice(&a[..n]); }
                }
                sent += n;
                if let Some((stall, after)) = fault {
                    if sent >= after {
                        if stall {
                            tokio::time::sleep(stall_for).await;
                        }
                        break;
                    }
                }
                sw.write_all(&a[..n]).await?;
            }
            n = sr.read(&mut b) => {
                let n = n?;
                if n == 0 { break; }
                cw.write_all(&b[..n]).await?;
            }
        }
    }
    if matches!(fault, Some((false, _))) {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
    Ok(())
}
