//! The group's authenticated channel: key files, the mutual HMAC-SHA256
//! handshake, and messages authenticated under a per-session key with a
//! per-direction counter (a peer without the key cannot freeze anyone; a
//! recorded message cannot be replayed into another session or twice into
//! the same one). Not TLS: the messages carry no secret, only commands.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::error::{AgentError, Result};

type HmacSha = Hmac<Sha256>;

/// Reads a group key file (64 hex characters); refuses one others can read.
pub fn read_key(path: &Path) -> Result<[u8; 32]> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path).map_err(|e| AgentError::io(path, "read group key", e))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(AgentError::Config(format!(
            "{}: the group key is readable by others (mode {:o}); chmod 600 it",
            path.display(),
            md.permissions().mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, "read group key", e))?;
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| AgentError::Config(format!("{}: a group key is 64 hex characters", path.display())))
}

/// Writes a new random group key (0600); refuses to overwrite one.
pub fn create_key(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut k = [0u8; 32];
    getrandom::getrandom(&mut k).map_err(|e| AgentError::Internal(format!("random source: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AgentError::io(path, "create group key", e))?;
    f.write_all(format!("{}\n", hex::encode(k)).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| AgentError::io(path, "write group key", e))
}

/// HMAC-SHA256 over length-prefixed parts (so parts cannot run together).
fn keyed(key: &[u8], parts: &[&[u8]]) -> HmacSha {
    // HMAC takes keys of any length.
    let mut m = <HmacSha as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(&(p.len() as u64).to_le_bytes());
        m.update(p);
    }
    m
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    keyed(key, parts).finalize().into_bytes().to_vec()
}

/// Constant-time check of a hex tag.
fn verify(key: &[u8], parts: &[&[u8]], tag_hex: &str) -> bool {
    let Ok(tag) = hex::decode(tag_hex) else { return false };
    keyed(key, parts).verify_slice(&tag).is_ok()
}

fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    // getrandom only fails when the OS has no entropy source at all.
    getrandom::getrandom(&mut n).unwrap_or_else(|e| panic!("random source: {e}"));
    n
}

/// One authenticated connection (either side).
pub struct Channel {
    reader: BufReader<TcpStream>,
    /// A line read in part before a read timeout.
    partial: String,
    writer: TcpStream,
    session: Vec<u8>,
    sent: u64,
    received: u64,
    pub peer: String,
}

pub fn io_err(peer: &str, what: impl std::fmt::Display) -> AgentError {
    AgentError::Peer(format!("group peer {peer}: {what}"))
}

impl Channel {
    fn raw_send(&mut self, v: &Value) -> Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| io_err(&self.peer, format!("send: {e}")))
    }

    /// The next line, or `None` when nothing complete arrived in `timeout`.
    fn raw_recv_opt(&mut self, timeout: Duration) -> Result<Option<Value>> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| io_err(&self.peer, e))?;
        match self.reader.read_line(&mut self.partial) {
            Ok(0) => Err(io_err(&self.peer, "connection closed")),
            Ok(_) if self.partial.ends_with('\n') => {
                let line = std::mem::take(&mut self.partial);
                serde_json::from_str(&line)
                    .map(Some)
                    .map_err(|e| io_err(&self.peer, format!("bad message: {e}")))
            }
            Ok(_) => Ok(None),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(io_err(&self.peer, format!("receive: {e}"))),
        }
    }

    fn raw_recv(&mut self, timeout: Duration) -> Result<Value> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(v) = self.raw_recv_opt(until.saturating_duration_since(Instant::now()))? {
                return Ok(v);
            }
            if Instant::now() >= until {
                return Err(io_err(
                    &self.peer,
                    format!("no answer within {} ms", timeout.as_millis()),
                ));
            }
        }
    }

    /// Sends one authenticated message.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        let b = serde_json::to_string(msg).map_err(|e| io_err(&self.peer, format!("encode: {e}")))?;
        let t = mac(&self.session, &[b"msg", &self.sent.to_le_bytes(), b.as_bytes()]);
        self.sent += 1;
        self.raw_send(&json!({"b": b, "m": hex::encode(t)}))
    }

    /// The next authenticated message, waiting at most `timeout`.
    pub fn recv<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T> {
        let v = self.raw_recv(timeout)?;
        self.open(v)
    }

    /// The next authenticated message, or None when none arrived in `timeout`.
    pub fn recv_opt<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<Option<T>> {
        match self.raw_recv_opt(timeout)? {
            Some(v) => self.open(v).map(Some),
            None => Ok(None),
        }
    }

    fn open<T: DeserializeOwned>(&mut self, v: Value) -> Result<T> {
        let (Some(b), Some(m)) = (v["b"].as_str(), v["m"].as_str()) else {
            return Err(io_err(&self.peer, "unauthenticated message"));
        };
        if !verify(&self.session, &[b"msg", &self.received.to_le_bytes(), b.as_bytes()], m) {
            return Err(io_err(&self.peer, "message authentication failed"));
        }
        self.received += 1;
        serde_json::from_str(b).map_err(|e| io_err(&self.peer, format!("bad message body: {e}")))
    }
}

/// Member side of the handshake: challenge, check the coordinator's proof,
/// prove ourselves.
pub fn member_handshake(stream: TcpStream, key: &[u8; 32], group: &str, disks: usize) -> Result<Channel> {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let reader = BufReader::new(stream.try_clone().map_err(|e| io_err(&peer, e))?);
    let mut ch = Channel {
        reader,
        partial: String::new(),
        writer: stream,
        session: Vec::new(),
        sent: 0,
        received: 0,
        peer,
    };
    let mine = nonce();
    ch.raw_send(&json!({"challenge": hex::encode(mine), "group": group}))?;
    let hello = ch.raw_recv(Duration::from_secs(10))?;
    let theirs = hello["nonce"]
        .as_str()
        .and_then(|n| hex::decode(n).ok())
        .ok_or_else(|| io_err(&ch.peer, "no nonce in hello"))?;
    let proof = hello["mac"].as_str().unwrap_or("");
    if hello["group"].as_str() != Some(group)
        || !verify(key, &[b"coordinator", group.as_bytes(), &mine, &theirs], proof)
    {
        return Err(io_err(
            &ch.peer,
            "not authenticated as a coordinator of this group: refused",
        ));
    }
    let reply = mac(key, &[b"member", group.as_bytes(), &theirs, &mine]);
    ch.raw_send(&json!({"mac": hex::encode(reply), "disks": disks}))?;
    ch.session = mac(key, &[b"session", &mine, &theirs]);
    Ok(ch)
}

/// Coordinator side of the handshake. Returns the channel and how many
/// group disks the member has.
pub fn coordinator_handshake(addr: &str, key: &[u8; 32], group: &str) -> Result<(Channel, u32)> {
    let sa: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| AgentError::Config(format!("member address {addr}: {e}")))?;
    let stream =
        TcpStream::connect_timeout(&sa, Duration::from_secs(5)).map_err(|e| io_err(addr, format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let reader = BufReader::new(stream.try_clone().map_err(|e| io_err(addr, e))?);
    let mut ch = Channel {
        reader,
        partial: String::new(),
        writer: stream,
        session: Vec::new(),
        sent: 0,
        received: 0,
        peer: addr.into(),
    };
    let c = ch.raw_recv(Duration::from_secs(10))?;
    if c["group"].as_str() != Some(group) {
        return Err(io_err(
            addr,
            format!("is a member of group {:?}, not {group:?}", c["group"]),
        ));
    }
    let theirs = c["challenge"]
        .as_str()
        .and_then(|n| hex::decode(n).ok())
        .ok_or_else(|| io_err(addr, "no challenge"))?;
    let mine = nonce();
    let proof = mac(key, &[b"coordinator", group.as_bytes(), &theirs, &mine]);
    ch.raw_send(&json!({"group": group, "nonce": hex::encode(mine), "mac": hex::encode(proof)}))?;
    let r = ch.raw_recv(Duration::from_secs(10))?;
    if !verify(
        key,
        &[b"member", group.as_bytes(), &mine, &theirs],
        r["mac"].as_str().unwrap_or(""),
    ) {
        return Err(io_err(addr, "member not authenticated (wrong group key?)"));
    }
    let disks = r["disks"].as_u64().unwrap_or(0) as u32;
    ch.session = mac(key, &[b"session", &theirs, &mine]);
    Ok((ch, disks))
}

/// `hrl-agent group-key FILE`.
pub fn new_key_file(path: &Path) -> Result<()> {
    create_key(path)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn pair(member_key: [u8; 32], coord_key: [u8; 32]) -> (Result<Channel>, Result<(Channel, u32)>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            member_handshake(s, &member_key, "g", 3)
        });
        let c = coordinator_handshake(&addr, &coord_key, "g");
        (t.join().unwrap(), c)
    }

    #[test]
    fn only_a_peer_with_the_group_key_gets_a_session() {
        let (m, c) = pair([7; 32], [8; 32]);
        let e = m
            .err()
            .expect("member must refuse a coordinator without the key")
            .to_string();
        assert!(e.contains("not authenticated"), "{e}");
        assert!(c.is_err());
        let (m, c) = pair([7; 32], [7; 32]);
        let mut m = m.unwrap();
        let (mut c, disks) = c.unwrap();
        assert_eq!(disks, 3);
        c.send(&json!({"cmd": "prepare"})).unwrap();
        let v: Value = m.recv(Duration::from_secs(5)).unwrap();
        assert_eq!(v["cmd"], "prepare");
        // A forged message (right shape, no valid mac) is refused, and so
        // is a replay of a genuine one (the counter moved on).
        let body = json!({"cmd": "freeze"}).to_string();
        c.raw_send(&json!({"b": body, "m": "00".repeat(32)})).unwrap();
        let e = m.recv::<Value>(Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("authentication failed"), "{e}");
        let t = mac(&c.session, &[b"msg", &0u64.to_le_bytes(), b"{\"cmd\":\"prepare\"}"]);
        c.raw_send(&json!({"b": "{\"cmd\":\"prepare\"}", "m": hex::encode(t)}))
            .unwrap();
        let e = m.recv::<Value>(Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("authentication failed"), "{e}");
    }
}
