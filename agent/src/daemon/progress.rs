//! A terminal progress bar per disk while it scans (initial sync or
//! resync), for an operator who starts `hrl-agent run` by hand and wants to
//! know when the first point can be taken. Under systemd (no terminal) the
//! scan logs a progress line every 5 s instead, and `status` shows it.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::disk::DiskStatus;
use hrl_format::DiskMode;

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Whether progress bars are drawn (stderr is a terminal).
pub fn enabled() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// A log writer that lifts the bars out of the way while a line is written,
/// so log lines and bars do not overwrite each other.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(mp) => mp.suspend(|| std::io::stderr().write_all(buf)).map(|_| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Draws a bar per scanning disk until `stop`; returns at once when stderr
/// is not a terminal.
pub fn spawn(disks: Vec<Arc<Mutex<DiskStatus>>>, stop: Arc<AtomicBool>) {
    if !enabled() {
        return;
    }
    let mp = BARS.get_or_init(MultiProgress::new).clone();
    let style = ProgressStyle::with_template(
        "{prefix:>10} {msg:<11} [{bar:36}] {percent:>3}% {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let r = std::thread::Builder::new().name("progress".into()).spawn(move || {
        let mut bars: HashMap<usize, ProgressBar> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            for (i, d) in disks.iter().enumerate() {
                let (name, mode, frac, size) = {
                    let s = d.lock().unwrap_or_else(|p| p.into_inner());
                    (s.name.clone(), s.mode, s.scan_progress, s.device_bytes)
                };
                let scanning = matches!(mode, DiskMode::InitialSync | DiskMode::Resync);
                match (scanning, frac, bars.get(&i)) {
                    (true, Some(f), Some(b)) => b.set_position((f * size as f64) as u64),
                    (true, Some(f), None) => {
                        let b = mp.add(ProgressBar::new(size));
                        b.set_style(style.clone());
                        b.set_prefix(name);
                        b.set_message(if mode == DiskMode::Resync {
                            "resync"
                        } else {
                            "initial sync"
                        });
                        b.set_position((f * size as f64) as u64);
                        bars.insert(i, b);
                    }
                    (false, _, Some(b)) | (true, None, Some(b)) => {
                        b.set_position(size);
                        b.finish_with_message("in sync");
                        bars.remove(&i);
                    }
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        for b in bars.values() {
            b.abandon();
        }
    });
    if let Err(e) = r {
        tracing::warn!(error = %e, "no progress display");
    }
}
