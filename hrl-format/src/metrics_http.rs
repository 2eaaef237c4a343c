//! The `/metrics` HTTP endpoint both daemons expose (shared plumbing, not
//! part of the `.hrl` format; it lives here because both binaries depend on
//! this crate and nothing else).
//!
//! One thread, one request per connection, `GET /metrics` only. It binds
//! where it is told; the daemons default to 127.0.0.1 so metrics are not
//! visible off the machine unless an operator asks for it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Binds `addr` and serves `render()` at `/metrics` on a background
/// thread. Returns the bound address (port 0 picks a free port).
pub fn spawn<F>(addr: &str, render: F) -> std::io::Result<SocketAddr>
where
    F: Fn() -> String + Send + 'static,
{
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            // A slow or broken client never holds the endpoint long.
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
            let _ = answer(conn, &render);
        }
    })?;
    Ok(local)
}

fn answer(mut conn: TcpStream, render: &dyn Fn() -> String) -> std::io::Result<()> {
    let mut req = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&req);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "only GET /metrics is served here\n".to_string(),
        )
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// Fetches `http://addr/metrics` (for tests and `status` commands).
pub fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(c, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    match s.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("bad response from {addr}: {:.80}", s))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn serves_metrics_and_refuses_other_paths() {
        let addr = super::spawn("127.0.0.1:0", || "x_total 1\n# EOF\n".into()).unwrap();
        assert!(addr.ip().is_loopback());
        assert_eq!(super::scrape(addr).unwrap(), "x_total 1\n# EOF\n");
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        use std::io::{Read, Write};
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        assert!(s.starts_with("HTTP/1.1 404"), "{s}");
    }
}
