//! The disk worker's capture: clear a chunk's dirty bit, then read it (a
//! write completing after the clear dirties it again), and log `Data` only
//! where the content differs from what the stream last carried. Used by the
//! initial-sync/resync scan, the pre-copier and the point protocol.

use std::time::{Duration, Instant};

use hrl_format::record::DATA_HEAD;
use hrl_format::{Data, DiskMode};

use super::worker::{DiskWorker, BATCH};
use crate::capture::hashes::hash_chunk;
use crate::capture::reader::QUEUE_DEPTH;
use crate::error::Result;

impl DiskWorker {
    /// Captures those of `chunks` that are dirty: clear each bit, then
    /// read (a write completing after the clear dirties the chunk again),
    /// a queue-depth batch at a time. Emits `Data` only when the content
    /// differs from what the stream last carried. Returns bytes appended.
    pub(super) fn capture_many(&mut self, chunks: &[u64]) -> Result<u64> {
        let mut appended = 0;
        for part in chunks.chunks(QUEUE_DEPTH) {
            let cleared: Vec<u64> = part.iter().copied().filter(|&c| self.dirty.clear(c)).collect();
            if cleared.is_empty() {
                continue;
            }
            self.reader.read_batch(&cleared)?;
            for (i, &c) in cleared.iter().enumerate() {
                let data = self.reader.batch(i);
                self.counters.capture_bytes += data.len() as u64;
                let h = hash_chunk(data);
                if self.hashes.matches(c, &h)? {
                    continue;
                }
                let offset = c * self.reader.chunk_size;
                // Written from the read buffer itself: no copy of the chunk.
                let (flags, bytes): (u32, &[u8]) = if data.iter().all(|&b| b == 0) {
                    (Data::ZERO, &[])
                } else {
                    (0, data)
                };
                self.log.append_data(offset, flags, bytes)?;
                self.hashes.stage(c, h);
                self.counters.data_records += 1;
                let n = (DATA_HEAD + bytes.len()) as u64;
                self.spool_used += n;
                // Until the next statvfs, assume the bytes took free space.
                self.spool_free = self.spool_free.saturating_sub(n);
                appended += n;
            }
        }
        Ok(appended)
    }

    pub(super) fn scan_step(&mut self) -> Result<bool> {
        let Some(c) = self.scan else { return Ok(false) };
        let chunks = self.dirty.chunks();
        let want = (chunks - c).min(BATCH as u64);
        if want > 0 && self.spool_full(want * self.reader.chunk_size) {
            self.enter_bitmap()?;
            return Ok(false);
        }
        let batch: Vec<u64> = (c..c + want).collect();
        self.counters.scan_emitted += self.capture_many(&batch)?;
        let c = c + want;
        self.scan = Some(c);
        if self.scan_log.elapsed() >= Duration::from_secs(5) {
            self.scan_log = Instant::now();
            tracing::info!(disk = %self.name, mode = ?self.mode, progress = format!("{:.1}%", c as f64 * 100.0 / chunks as f64), emitted = self.counters.scan_emitted, "scan");
        }
        if c >= chunks {
            // Everything the scan emitted is made durable before the disk
            // is declared in sync.
            self.sync_log()?;
            tracing::info!(disk = %self.name, mode = ?self.mode, emitted_bytes = self.counters.scan_emitted, "scan complete");
            self.scan = None;
            self.state.initial_sync_done = true;
            self.state.save(&self.agent.spool)?;
            self.set_mode(DiskMode::Data)?;
            self.next_point = Instant::now();
        }
        Ok(true)
    }

    /// Pre-copies dirty chunks that are not hot. `all`: ignore hotness
    /// (just before a freeze). Returns chunks captured.
    pub(super) fn precopy(&mut self, all: bool, limit: usize) -> Result<usize> {
        let mut todo: Vec<u64> = Vec::new();
        for c in self.dirty.iter_dirty() {
            if todo.len() >= limit {
                break;
            }
            if !all && self.hot.is_hot(c) {
                continue;
            }
            todo.push(c);
        }
        let mut n = 0;
        for part in todo.chunks(QUEUE_DEPTH) {
            if self.spool_full(part.len() as u64 * self.reader.chunk_size) {
                self.enter_bitmap()?;
                break;
            }
            self.capture_many(part)?;
            n += part.len();
        }
        Ok(n)
    }

    /// fsync the log; captured hashes become committed.
    pub(super) fn sync_log(&mut self) -> Result<()> {
        self.log.sync()?;
        self.hashes.commit();
        self.last_sync = Instant::now();
        if self.last_save.elapsed() >= Duration::from_secs(5) {
            self.hashes.save()?;
            self.last_save = Instant::now();
        }
        Ok(())
    }
}
