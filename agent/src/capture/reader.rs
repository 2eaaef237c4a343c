//! Reading chunks of the tracked device for `Data` records.
//!
//! O_DIRECT reads into an aligned buffer, so captured bytes come from the
//! device and never from a page cache that a buffered writer could still be
//! changing; where the device refuses O_DIRECT (EINVAL), buffered pread.
//! Batches of chunks are read through io_uring when the kernel allows it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{AgentError, Result};

use hrl_format::direct_read::AlignedBuf;

/// Chunks read per batch: the io_uring queue depth, and the number of
/// chunk buffers the reader keeps (64 KiB chunks: 2 MiB of buffers).
pub const QUEUE_DEPTH: usize = 32;

/// Bytes between two chunk buffers: a chunk rounded up to whole 4 KiB
/// blocks (what a direct read of it asks for).
fn stride(chunk_size: u64) -> usize {
    (chunk_size as usize).next_multiple_of(4096)
}

/// The capture ring: one submitter whose completions wait until it asks for
/// them (`DEFER_TASKRUN`, Linux 6.1), created disabled so that the thread
/// that first reads becomes that submitter. Without it every completed read
/// woke the disk worker on its own: under 20 MB/s of writes most of the
/// agent's 120 context switches a second and a tenth of its CPU. An older
/// kernel gets a plain ring (true: the ring must be enabled before use).
fn new_ring(path: &Path) -> (Option<io_uring::IoUring>, bool) {
    let deferred = io_uring::IoUring::builder()
        .setup_r_disabled()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(QUEUE_DEPTH as u32);
    if let Ok(r) = deferred {
        return (Some(r), true);
    }
    match io_uring::IoUring::new(QUEUE_DEPTH as u32) {
        Ok(r) => (Some(r), false),
        Err(e) => {
            tracing::info!(device = %path.display(), error = %e, "io_uring unavailable: capture reads with pread");
            (None, false)
        }
    }
}

/// Reads whole chunks of a device, a batch at a time.
///
/// With io_uring every chunk of a batch is in flight at once (queue depth
/// [`QUEUE_DEPTH`]), which is what keeps a device with parallelism busy
/// during the initial sync and pre-copy; a plain pread loop reads one chunk
/// after the other. io_uring is used when the kernel allows it (it can be
/// disabled by `kernel.io_uring_disabled` or a seccomp policy); otherwise,
/// or when `HRL_NO_IO_URING` is set, pread.
pub struct ChunkReader {
    file: File,
    path: PathBuf,
    pub chunk_size: u64,
    pub device_size: u64,
    /// Every chunk buffer of a batch, one after the other: one allocation
    /// (2 MiB at 64 KiB chunks, huge pages where the kernel has them).
    bufs: AlignedBuf,
    /// Length of each buffer's chunk in the last batch.
    lens: Vec<usize>,
    ring: Option<io_uring::IoUring>,
    /// The ring was created disabled, to be enabled by the thread that
    /// reads (the disk worker's, not the one that opened the reader).
    ring_disabled: bool,
    pub direct: bool,
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    window_start: Instant,
    window_bytes: u64,
    pub bytes_read: u64,
}

impl ChunkReader {
    pub fn open(path: &Path, chunk_size: u32, device_size: u64, rate: u64) -> Result<Self> {
        let (file, direct) = match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
                File::open(path).map_err(|e| AgentError::io(path, "open for capture", e))?,
                false,
            ),
            Err(e) => return Err(AgentError::io(path, "open for capture", e)),
        };
        let (ring, ring_disabled) = if std::env::var_os("HRL_NO_IO_URING").is_some() {
            (None, false)
        } else {
            new_ring(path)
        };
        Ok(ChunkReader {
            file,
            path: path.into(),
            chunk_size: chunk_size as u64,
            device_size,
            bufs: AlignedBuf::new(QUEUE_DEPTH * stride(chunk_size as u64)),
            lens: vec![0; QUEUE_DEPTH],
            ring,
            ring_disabled,
            direct,
            rate,
            window_start: Instant::now(),
            window_bytes: 0,
            bytes_read: 0,
        })
    }

    /// Whether reads go through io_uring.
    pub fn uses_io_uring(&self) -> bool {
        self.ring.is_some()
    }

    /// Byte range of chunk `c` (the last one may be short).
    pub fn range(&self, c: u64) -> (u64, usize) {
        let off = c * self.chunk_size;
        (off, (self.device_size - off).min(self.chunk_size) as usize)
    }

    /// Bytes to ask the kernel for: O_DIRECT wants whole logical blocks,
    /// so a short last chunk is read rounded up (the device ends there, so
    /// the read returns `len`).
    fn want(&self, len: usize) -> usize {
        if self.direct {
            len.div_ceil(4096) * 4096
        } else {
            len
        }
    }

    /// Reads chunk `c`; the slice is valid until the next read.
    pub fn read(&mut self, c: u64) -> Result<&[u8]> {
        self.read_batch(&[c])?;
        Ok(self.batch(0))
    }

    /// Reads up to [`QUEUE_DEPTH`] chunks; `batch(i)` is chunk `chunks[i]`
    /// until the next read.
    pub fn read_batch(&mut self, chunks: &[u64]) -> Result<()> {
        assert!(chunks.len() <= QUEUE_DEPTH, "batch larger than the queue depth");
        let total: u64 = chunks.iter().map(|&c| self.range(c).1 as u64).sum();
        self.throttle(total);
        let mut done = vec![0usize; chunks.len()];
        if self.ring.is_some() && chunks.len() > 1 {
            if let Err(e) = self.submit_ring(chunks, &mut done) {
                // A ring that fails once (ENOMEM, a policy) is dropped and
                // the rest of this agent's life reads with pread.
                tracing::warn!(device = %self.path.display(), error = %e, "io_uring read failed: falling back to pread");
                // Requests may still be in flight into the old buffers:
                // leak them with the ring (once per agent) rather than let
                // the kernel write into freed memory.
                let fresh = AlignedBuf::new(QUEUE_DEPTH * stride(self.chunk_size));
                std::mem::forget(std::mem::replace(&mut self.bufs, fresh));
                std::mem::forget(self.ring.take());
                done.iter_mut().for_each(|d| *d = 0);
            }
        }
        for (i, &c) in chunks.iter().enumerate() {
            // pread finishes what io_uring left (a short read) or did not do.
            self.pread_rest(i, c, done[i])?;
        }
        self.bytes_read += total;
        Ok(())
    }

    /// Where chunk buffer `i` starts.
    fn at(&self, i: usize) -> usize {
        i * stride(self.chunk_size)
    }

    /// Chunk `i` of the last batch.
    pub fn batch(&self, i: usize) -> &[u8] {
        &self.bufs.as_slice()[self.at(i)..][..self.lens[i]]
    }

    fn submit_ring(&mut self, chunks: &[u64], done: &mut [usize]) -> std::io::Result<()> {
        use io_uring::{opcode, types};
        use std::os::fd::AsRawFd;
        let fd = types::Fd(self.file.as_raw_fd());
        let ranges: Vec<(u64, usize)> = chunks.iter().map(|&c| self.range(c)).collect();
        let wants: Vec<usize> = ranges.iter().map(|r| self.want(r.1)).collect();
        let stride = stride(self.chunk_size);
        let Some(ring) = self.ring.as_mut() else { return Ok(()) };
        if self.ring_disabled {
            // This thread becomes the ring's only submitter.
            ring.submitter().register_enable_rings()?;
            self.ring_disabled = false;
        }
        for (i, &(off, _)) in ranges.iter().enumerate() {
            let buf = &mut self.bufs.as_mut_slice()[i * stride..];
            let sqe = opcode::Read::new(fd, buf.as_mut_ptr(), wants[i] as u32)
                .offset(off)
                .build()
                .user_data(i as u64);
            // SAFETY: the buffer outlives the request: this function waits
            // for every completion before it returns, and on an error the
            // caller leaks the buffers and the ring together.
            unsafe { ring.submission().push(&sqe) }.map_err(|_| std::io::Error::other("submission queue full"))?;
        }
        let mut pending = chunks.len();
        while pending > 0 {
            match ring.submit_and_wait(pending) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for cqe in ring.completion() {
                pending -= 1;
                let i = cqe.user_data() as usize;
                let r = cqe.result();
                if r < 0 {
                    let e = std::io::Error::from_raw_os_error(-r);
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        // A device error: pread repeats it and reports it
                        // with the chunk.
                        continue;
                    }
                } else {
                    done[i] = (r as usize).min(ranges[i].1);
                }
            }
        }
        Ok(())
    }

    fn pread_rest(&mut self, i: usize, c: u64, mut done: usize) -> Result<()> {
        let (off, len) = self.range(c);
        let want = self.want(len);
        self.lens[i] = len;
        let at = self.at(i);
        let buf = &mut self.bufs.as_mut_slice()[at..at + want];
        while done < len {
            // O_DIRECT needs an aligned file offset: restart a short read at
            // the block it stopped in.
            if self.direct {
                done = done / 4096 * 4096;
            }
            match self.file.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => {
                    return Err(AgentError::io(
                        &self.path,
                        "read chunk",
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("device ended at {} inside chunk {c}", off + done as u64),
                        ),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let e = std::io::Error::new(e.kind(), format!("chunk {c} at byte {}: {e}", off + done as u64));
                    return Err(AgentError::io(&self.path, "read chunk", e));
                }
            }
        }
        Ok(())
    }

    fn throttle(&mut self, n: u64) {
        if self.rate == 0 {
            return;
        }
        let el = self.window_start.elapsed();
        if el >= Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
        self.window_bytes += n;
        let allowed = self.rate as f64 * self.window_start.elapsed().as_secs_f64().max(0.001);
        if self.window_bytes as f64 > allowed {
            let wait = (self.window_bytes as f64 - allowed) / self.rate as f64;
            std::thread::sleep(Duration::from_secs_f64(wait.min(1.0)));
        }
    }

    /// Sets the capture rate limit (bytes/s, 0 = unlimited). Rate-limiting
    /// never applies inside a freeze: the point path reads with `rate` 0.
    pub fn set_rate(&mut self, rate: u64) {
        self.rate = rate;
    }
    pub fn rate(&self) -> u64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches through io_uring and through pread return the file's bytes,
    /// including a short last chunk, in the order asked; the ring is read
    /// from another thread than the one that opened it (as the disk worker
    /// does) and is still in use after.
    #[test]
    fn batches_match_the_file_with_and_without_io_uring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.img");
        let chunk = 4096u32;
        let size = 37 * chunk as u64 + 1000;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let order: Vec<u64> = vec![36, 0, 37, 5, 17, 1, 2, 3, 30, 31, 32, 33, 34, 35, 4, 6];
        for uring in [true, false] {
            let mut r = ChunkReader::open(&path, chunk, size, 0).unwrap();
            if !uring {
                r.ring = None;
            }
            let had_ring = r.uses_io_uring();
            let want = order.clone();
            let mut r = std::thread::spawn(move || {
                r.read_batch(&want).unwrap();
                r
            })
            .join()
            .unwrap();
            assert_eq!(
                r.uses_io_uring(),
                had_ring,
                "uring={uring}: the ring failed and was dropped"
            );
            for (i, &c) in order.iter().enumerate() {
                let (off, len) = r.range(c);
                assert_eq!(
                    r.batch(i),
                    &data[off as usize..off as usize + len],
                    "chunk {c} uring={uring}"
                );
            }
            assert_eq!(r.read(37).unwrap().len(), 1000);
        }
    }
}
