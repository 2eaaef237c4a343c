//! O_DIRECT reads of pieces of the tracked device: what a fingerprint
//! reads must come from the device, never from a page cache that can be
//! stale under a mounted filesystem.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{AgentError, Result};
use hrl_format::direct_read::AlignedBuf;

pub struct Direct {
    file: File,
    buf: AlignedBuf,
    cap: usize,
}

impl Direct {
    /// Opens `dev` for reads of up to `cap` bytes (less 4 KiB of alignment).
    pub fn open(dev: &Path, cap: usize) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(dev)
            .map_err(|e| AgentError::io(dev, "open O_DIRECT", e))?;
        Ok(Direct {
            file,
            buf: AlignedBuf::new(cap + 4096),
            cap: cap + 4096,
        })
    }

    /// `len` bytes at `offset`, read in whole aligned 4 KiB blocks.
    pub fn read(&mut self, offset: u64, len: usize) -> std::io::Result<&[u8]> {
        let start = offset & !4095;
        let skip = (offset - start) as usize;
        let span = (skip + len).div_ceil(4096) * 4096;
        if span > self.cap {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("read of {len} bytes exceeds the {} byte buffer", self.cap),
            ));
        }
        let buf = &mut self.buf.as_mut_slice()[..span];
        self.file.read_exact_at(buf, start)?;
        Ok(&self.buf.as_slice()[skip..skip + len])
    }
}
