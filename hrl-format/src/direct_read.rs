//! Reading a spool's segments with `O_DIRECT` where the filesystem allows
//! it. The agent's writer writes a segment's whole blocks directly, so
//! they are not in the page cache: read through it, every byte would be
//! read from disk into the cache and copied out again (on this project's
//! test machine 1.0-1.7 s of system CPU per GiB, against 0.04 s for a
//! direct read and 0.05 s for a read of cached pages). A direct read lands
//! in memory the caller then owns. The kernel writes back any cached dirty
//! page of the range first (the few bytes the writer wrote through the
//! cache), so what is read is what was written.
//!
//! A reader of files written through the page cache (the process
//! server's cache) opens them without `O_DIRECT`: their bytes are still
//! cached, and a direct read would write them back and read them from disk.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

/// Offset, length and memory alignment of a direct read.
const BLOCK: usize = 4096;

/// A transparent huge page.
const HUGE: usize = 2 << 20;

/// Zeroed, page-aligned memory for direct I/O, allocated once and used
/// again (the agent's capture buffers, a segment writer's buffer, pooled
/// direct reads). From 1 MiB it is rounded up to whole 2 MiB, aligned to
/// them and advised as huge pages (`MADV_HUGEPAGE`, before it is touched):
/// the kernel pins the pages of every direct read or write, and pinning
/// small pages one by one is most of what such a transfer costs the CPU.
/// On this project's test machine a 4 MiB direct
/// read into huge pages cost 0.008 s of system CPU per GB, into small
/// pages 0.036. Where the kernel offers no huge pages the advice does
/// nothing.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is plain owned memory, written only through `&mut`.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above: a shared reference only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let (size, align) = if len >= HUGE / 2 {
            (len.next_multiple_of(HUGE), HUGE)
        } else {
            (len.max(BLOCK).next_multiple_of(BLOCK), BLOCK)
        };
        let layout = std::alloc::Layout::from_size_align(size, align).expect("valid layout");
        // SAFETY: the layout has non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        let ptr = std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        if align == HUGE {
            // SAFETY: advice on memory this buffer owns; an error (no
            // huge pages here) leaves it as it was.
            unsafe { libc::madvise(p.cast(), size, libc::MADV_HUGEPAGE) };
        }
        // SAFETY: `size` bytes from `p` are this buffer's.
        unsafe { std::ptr::write_bytes(p, 0, size) };
        AlignedBuf { ptr, layout }
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn is_empty(&self) -> bool {
        self.layout.size() == 0
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: valid and initialized for layout.size() bytes, uniquely
        // borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: valid and initialized for layout.size() bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Bytes read: dereferences to what was read. `AsRef` too, so a body can
/// own them without a copy (`Bytes::from_owner`).
#[derive(Debug)]
pub struct ReadBytes {
    mem: ReadMem,
    range: std::ops::Range<usize>,
}

#[derive(Debug)]
enum ReadMem {
    /// A read through the page cache: heap memory of its size.
    Heap(Vec<u8>),
    /// A direct read: memory from the pool, given back when dropped.
    Pooled(Option<AlignedBuf>),
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len())
    }
}

impl std::ops::Deref for ReadBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.mem {
            ReadMem::Heap(v) => &v[self.range.clone()],
            ReadMem::Pooled(Some(b)) => &b.as_slice()[self.range.clone()],
            ReadMem::Pooled(None) => &[],
        }
    }
}

impl AsRef<[u8]> for ReadBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for ReadBytes {
    fn drop(&mut self) {
        if let ReadMem::Pooled(b) = &mut self.mem {
            if let Some(b) = b.take() {
                give_back(b);
            }
        }
    }
}

/// Memory of direct reads kept for the next ones: a forwarder reads up to
/// 4 MiB a request, into huge pages that are zeroed when first allocated,
/// not on every read. At most [`POOL_MAX`] are kept, none larger than
/// [`POOL_LARGEST`] (a resuming forwarder reads a segment's whole head
/// once: that memory is freed, not kept).
static POOL: std::sync::Mutex<Vec<AlignedBuf>> = std::sync::Mutex::new(Vec::new());
const POOL_MAX: usize = 4;
const POOL_LARGEST: usize = 8 << 20;

/// The smallest pooled buffer of at least `len` bytes, or a new one.
fn pooled(len: usize) -> AlignedBuf {
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    let best = (0..pool.len())
        .filter(|&i| pool[i].len() >= len)
        .min_by_key(|&i| pool[i].len());
    match best {
        Some(i) => pool.swap_remove(i),
        None => {
            drop(pool);
            AlignedBuf::new(len)
        }
    }
}

/// Keeps `b` for a later read: in a free place, else in place of a
/// smaller one (small reads, a segment's header, must not crowd out the
/// 4 MiB a forwarder reads per request).
fn give_back(b: AlignedBuf) {
    if b.len() > POOL_LARGEST {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < POOL_MAX {
        pool.push(b);
    } else if let Some(small) = pool.iter_mut().min_by_key(|m| m.len()).filter(|m| m.len() < b.len()) {
        *small = b;
    }
}

/// An open segment, for range reads.
pub struct SpoolFile {
    file: File,
    /// Open `O_DIRECT`: cleared when a direct read is refused.
    direct: std::sync::atomic::AtomicBool,
}

impl SpoolFile {
    /// Opens `path` for reading; `direct`: with `O_DIRECT`, unless the
    /// filesystem refuses it.
    pub fn open(path: &Path, direct: bool) -> io::Result<Self> {
        if !direct {
            return Ok(SpoolFile {
                file: File::open(path)?,
                direct: false.into(),
            });
        }
        match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) => Ok(SpoolFile {
                file,
                direct: true.into(),
            }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(SpoolFile {
                file: File::open(path)?,
                direct: false.into(),
            }),
            Err(e) => Err(e),
        }
    }

    /// The file's length now (a live segment grows).
    pub fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// `len` bytes from `offset`; an error when the file ends before.
    pub fn read_range(&self, offset: u64, len: usize) -> io::Result<ReadBytes> {
        let r = self.read_upto(offset, len)?;
        if r.len() < len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(r)
    }

    /// Up to `len` bytes from `offset`: fewer where the file ends.
    pub fn read_upto(&self, offset: u64, len: usize) -> io::Result<ReadBytes> {
        let from = offset - offset % BLOCK as u64;
        let skip = (offset - from) as usize;
        // Whole blocks cover the range; the last may end past the file's
        // end (a direct read stops there).
        let span = (skip + len).div_ceil(BLOCK) * BLOCK;
        if self.direct.load(Relaxed) {
            let mut buf = pooled(span);
            let dst = buf.as_mut_slice();
            // SAFETY: `dst` is `buf`'s memory, at least `span` bytes.
            let got = unsafe { self.fill(dst.as_mut_ptr(), dst.len(), from, skip + len) }?;
            let end = (skip + len).min(got);
            return Ok(ReadBytes {
                range: skip.min(end)..end,
                mem: ReadMem::Pooled(Some(buf)),
            });
        }
        // Through the cache: heap memory, not zeroed first (pread fills it).
        let mut mem: Vec<u8> = Vec::with_capacity(skip + len);
        // SAFETY: the spare capacity of `mem`, `skip + len` bytes.
        let got = unsafe { self.fill(mem.as_mut_ptr(), skip + len, from, skip + len) }?;
        // SAFETY: `fill` wrote the first `got` bytes.
        unsafe { mem.set_len(got) };
        let end = (skip + len).min(got);
        Ok(ReadBytes {
            range: skip.min(end)..end,
            mem: ReadMem::Heap(mem),
        })
    }

    /// Reads from `from` into `dst` until `need` bytes are there or the
    /// file ends; returns how many. Direct reads ask for whole blocks.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `cap` bytes, block-aligned when
    /// the file is open `O_DIRECT`, and `cap` at least `need` rounded up to
    /// whole blocks then (`need` otherwise).
    unsafe fn fill(&self, dst: *mut u8, cap: usize, from: u64, need: usize) -> io::Result<usize> {
        let mut got = 0;
        while got < need {
            let want = if self.direct.load(Relaxed) {
                need.div_ceil(BLOCK) * BLOCK - got
            } else {
                need - got
            };
            debug_assert!(got + want <= cap);
            // SAFETY: `want` bytes from `dst + got` are within `cap` (the
            // caller's promise); pread writes at most that many.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    dst.add(got).cast(),
                    want.min(cap - got),
                    (from + got as u64) as libc::off_t,
                )
            };
            match n {
                0 => break,
                n if n > 0 => got += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EINVAL) && self.direct.load(Relaxed) {
                        // Refused (the filesystem's alignment): through
                        // the page cache from now on.
                        self.through_cache()?;
                    } else if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(got)
    }

    fn through_cache(&self) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this struct owns.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) & !libc::O_DIRECT) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.direct.store(false, Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges at every alignment, up to and at the file's end, read back
    /// what the file holds; past the end is an error.
    #[test]
    fn ranges_read_what_the_file_holds() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("seg");
        let data: Vec<u8> = (0..3 * BLOCK + 1234).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = SpoolFile::open(&path, true).unwrap();
        ranges_read(&f, &data);
        f.through_cache().unwrap();
        ranges_read(&f, &data);
    }

    /// Small buffers are whole blocks on a block boundary; from 1 MiB they
    /// are whole huge pages on a huge-page boundary; all start zeroed.
    #[test]
    fn aligned_buffers_are_zeroed_whole_blocks_or_huge_pages() {
        for (len, size, align) in [
            (0, BLOCK, BLOCK),
            (100, BLOCK, BLOCK),
            (BLOCK + 1, 2 * BLOCK, BLOCK),
            (HUGE / 2, HUGE, HUGE),
            (HUGE + 1, 2 * HUGE, HUGE),
        ] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.len(), size, "{len}");
            assert_eq!(b.as_slice().as_ptr() as usize % align, 0, "{len}");
            assert!(b.as_slice().iter().all(|&x| x == 0), "{len}");
            b.as_mut_slice()[size - 1] = 7;
            assert_eq!(b.as_slice()[size - 1], 7);
        }
    }

    /// A direct read's memory goes back to the pool when its bytes are
    /// dropped, and the next read of that size lands in it.
    #[test]
    fn direct_reads_reuse_their_memory() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("seg");
        let data: Vec<u8> = (0..3 * BLOCK).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = SpoolFile::open(&path, true).unwrap();
        if !f.direct.load(Relaxed) {
            let why = format!("skipped: {} refuses O_DIRECT", d.path().display());
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("{why}");
            return;
        }
        let a = f.read_range(5, 2 * BLOCK).unwrap();
        let at = a.as_ptr() as usize - 5;
        assert!(a[..] == data[5..5 + 2 * BLOCK]);
        drop(a);
        let b = f.read_range(BLOCK as u64 + 7, BLOCK).unwrap();
        assert_eq!(b.as_ptr() as usize - 7, at, "the pooled memory is read into again");
        // The first read's 3 blocks, not the 2 this read needs.
        assert!(
            matches!(&b.mem, ReadMem::Pooled(Some(m)) if m.len() == 3 * BLOCK),
            "{b:?}"
        );
        assert!(b[..] == data[BLOCK + 7..2 * BLOCK + 7]);
        drop(b);
        // Small reads fill the pool; a large one's memory still stays.
        let small: Vec<_> = (0..POOL_MAX).map(|_| f.read_range(0, 10).unwrap()).collect();
        let large = f.read_upto(0, 5 * BLOCK).unwrap();
        assert_eq!(large.len(), 3 * BLOCK);
        drop(small);
        drop(large);
        let kept: Vec<usize> = POOL.lock().unwrap().iter().map(|m| m.len()).collect();
        assert!(kept.contains(&(5 * BLOCK)), "the large memory was kept: {kept:?}");
    }

    fn ranges_read(f: &SpoolFile, data: &[u8]) {
        for (off, len) in [
            (0, 10),
            (1, BLOCK),
            (4095, 2),
            (BLOCK, BLOCK),
            (100, data.len() - 100),
            (0, data.len()),
        ] {
            let got = f.read_range(off as u64, len).unwrap();
            assert!(got[..] == data[off..off + len], "range {off}+{len}");
        }
        let past = f.read_range(data.len() as u64 - 5, 10).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
        assert!(f.read_upto(data.len() as u64 - 5, 10).unwrap()[..] == data[data.len() - 5..]);
        assert!(f.read_upto(data.len() as u64 + 5, 10).unwrap().is_empty());
    }
}
