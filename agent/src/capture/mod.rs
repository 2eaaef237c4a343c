//! Data capture: reading dirty chunks (io_uring at queue depth, O_DIRECT,
//! with a pread fallback) and the captured-hash map that says what the
//! stream last carried for each chunk, so unchanged chunks are not sent.
//!
//! Owns: the reads of the tracked device. It never clears dirty bits
//! itself (the disk worker clears, then reads) and never writes the log.

pub mod hashes;
pub mod reader;
