//! Writes restored chunks to the target: a batch of positioned writes in
//! flight at once through io_uring, or one pwrite after the other where the
//! kernel refuses io_uring (or `HRL_NO_IO_URING` is set).

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Writes per batch (the ring's queue depth).
const DEPTH: usize = 64;

pub struct BatchWriter<'a> {
    file: &'a File,
    ring: Option<io_uring::IoUring>,
}

impl<'a> BatchWriter<'a> {
    pub fn new(file: &'a File) -> Self {
        let ring = if std::env::var_os("HRL_NO_IO_URING").is_some() {
            None
        } else {
            io_uring::IoUring::new(DEPTH as u32).ok()
        };
        BatchWriter { file, ring }
    }

    pub fn uses_io_uring(&self) -> bool {
        self.ring.is_some()
    }

    /// Writes every `(offset, bytes)`; an error names the offset.
    pub fn write_all(&mut self, items: &[(u64, Vec<u8>)]) -> std::result::Result<(), String> {
        for part in items.chunks(DEPTH) {
            let mut done = vec![0usize; part.len()];
            if self.ring.is_some() && part.len() > 1 {
                // A ring that breaks mid-batch may still have writes in
                // flight: the restore stops (the target is reported
                // incomplete) rather than write the same bytes again.
                self.submit(part, &mut done)
                    .map_err(|e| format!("io_uring write: {e} (HRL_NO_IO_URING=1 writes with pwrite)"))?;
            }
            for ((off, data), d) in part.iter().zip(done) {
                if d < data.len() {
                    self.file
                        .write_all_at(&data[d..], off + d as u64)
                        .map_err(|e| format!("write at {}: {e}", off + d as u64))?;
                }
            }
        }
        Ok(())
    }

    fn submit(&mut self, part: &[(u64, Vec<u8>)], done: &mut [usize]) -> std::io::Result<()> {
        use io_uring::{opcode, types};
        use std::os::fd::AsRawFd;
        let fd = types::Fd(self.file.as_raw_fd());
        let Some(ring) = self.ring.as_mut() else { return Ok(()) };
        for (i, (off, data)) in part.iter().enumerate() {
            let sqe = opcode::Write::new(fd, data.as_ptr(), data.len() as u32)
                .offset(*off)
                .build()
                .user_data(i as u64);
            // SAFETY: `data` outlives the request: every completion is
            // waited for below before `part` can be dropped.
            unsafe { ring.submission().push(&sqe) }.map_err(|_| std::io::Error::other("submission queue full"))?;
        }
        let mut pending = part.len();
        while pending > 0 {
            match ring.submit_and_wait(pending) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
            for cqe in ring.completion() {
                pending -= 1;
                let r = cqe.result();
                if r > 0 {
                    // A short or failed write is finished (or its error
                    // reported) by pwrite.
                    done[cqe.user_data() as usize] = r as usize;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_with_and_without_io_uring() {
        let dir = tempfile::tempdir().unwrap();
        for uring in [true, false] {
            let p = dir.path().join(format!("img-{uring}"));
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            let mut w = BatchWriter::new(&f);
            if !uring {
                w.ring = None;
            }
            let items: Vec<(u64, Vec<u8>)> = (0..150u64)
                .rev()
                .map(|i| (i * 4096, vec![(i % 251) as u8 + 1; 4096]))
                .collect();
            w.write_all(&items).unwrap();
            let back = std::fs::read(&p).unwrap();
            assert_eq!(back.len(), 150 * 4096);
            for i in 0..150usize {
                assert!(back[i * 4096..(i + 1) * 4096].iter().all(|&b| b == (i % 251) as u8 + 1));
            }
        }
    }
}
