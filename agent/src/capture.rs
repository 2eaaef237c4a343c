//! Reading chunks of the tracked device for `Data` records.
//!
//! O_DIRECT reads into an aligned buffer, so captured bytes come from the
//! device and never from a page cache that a buffered writer could still be
//! changing; where the device refuses O_DIRECT (EINVAL), buffered pread.
//! io_uring batching is not used yet: a plain pread per chunk.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{AgentError, Result};

/// A page-aligned heap buffer (O_DIRECT needs aligned memory).
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is plain owned memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(4096), 4096).expect("valid layout");
        // SAFETY: the layout has non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: valid for layout.size() bytes, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: valid for layout.size() bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Reads whole chunks of a device.
pub struct ChunkReader {
    file: File,
    path: PathBuf,
    pub chunk_size: u64,
    pub device_size: u64,
    buf: AlignedBuf,
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
        Ok(ChunkReader {
            file,
            path: path.into(),
            chunk_size: chunk_size as u64,
            device_size,
            buf: AlignedBuf::new(chunk_size as usize),
            direct,
            rate,
            window_start: Instant::now(),
            window_bytes: 0,
            bytes_read: 0,
        })
    }

    /// Byte range of chunk `c` (the last one may be short).
    pub fn range(&self, c: u64) -> (u64, usize) {
        let off = c * self.chunk_size;
        (off, (self.device_size - off).min(self.chunk_size) as usize)
    }

    /// Reads chunk `c`; the slice is valid until the next read.
    pub fn read(&mut self, c: u64) -> Result<&[u8]> {
        let (off, len) = self.range(c);
        self.throttle(len as u64);
        // O_DIRECT wants a whole number of logical blocks: read the full
        // chunk buffer length rounded up, then take `len`.
        let want = if self.direct { len.div_ceil(4096) * 4096 } else { len };
        let buf = &mut self.buf.as_mut_slice()[..want];
        let mut done = 0;
        while done < len {
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
                Err(e) => return Err(AgentError::io(&self.path, "read chunk", e)),
            }
        }
        self.bytes_read += len as u64;
        Ok(&self.buf.as_slice()[..len])
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
