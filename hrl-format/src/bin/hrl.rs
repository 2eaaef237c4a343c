//! `hrl`: look inside `.hrl` files and spool directories.
//!
//! Exit codes: 0 success; 1 damage found or the operation failed; 2 usage
//! error (bad arguments, a path that does not exist).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hrl_format::{list_segments, read_segment, stat_path, Cursor, Follower, FormatError, Record, RecoveryMode, Stats};
use uuid::Uuid;

#[derive(Parser)]
#[command(name = "hrl", version, about = "Inspect, verify and replay .hrl change logs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Statistics of a file or a spool directory.
    Stat {
        /// A .hrl file or a spool directory.
        path: PathBuf,
        /// Print the statistics as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the last records of a spool directory; with -f, keep following it.
    Tail {
        /// The spool directory (a single file is dumped whole).
        dir: PathBuf,
        /// After the last records, keep printing new ones as they are written.
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many of the last records to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Only this disk.
        #[arg(long)]
        disk: Option<Uuid>,
        /// JSON Lines: one object per record.
        #[arg(long)]
        json: bool,
    },
    /// Print every record of a file or directory.
    Dump {
        /// A .hrl file or a spool directory.
        path: PathBuf,
        /// JSON Lines: one object per record.
        #[arg(long)]
        json: bool,
    },
    /// Check every record of a file or directory. Exit 0 clean, 1 damaged.
    Verify {
        /// A .hrl file or a spool directory (every segment in it).
        path: PathBuf,
        /// Treat a torn tail as damage too (absolute consistency).
        #[arg(long)]
        strict: bool,
        /// One JSON object per file.
        #[arg(long)]
        json: bool,
    },
    /// Apply Data records up to a point onto an image file.
    Replay {
        /// The spool directory (or an archive of its segments).
        dir: PathBuf,
        /// Image file (or block device) to write.
        #[arg(long)]
        to: PathBuf,
        /// Point sequence; the last completed point when omitted.
        #[arg(long)]
        point: Option<u64>,
        /// The disk, when the spool holds more than one.
        #[arg(long)]
        disk: Option<Uuid>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code for a usage problem.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match &cli.cmd {
        Cmd::Stat { path, .. } | Cmd::Dump { path, .. } | Cmd::Verify { path, .. } => path,
        Cmd::Tail { dir, .. } | Cmd::Replay { dir, .. } => dir,
    };
    if !path.exists() {
        eprintln!("hrl: {}: no such file or directory", path.display());
        return ExitCode::from(USAGE);
    }
    let r = match cli.cmd {
        Cmd::Stat { path, json } => stat(&path, json),
        Cmd::Tail {
            dir,
            follow,
            lines,
            disk,
            json,
        } => tail(&dir, follow, lines, disk, json),
        Cmd::Dump { path, json } => dump(&path, json),
        Cmd::Verify { path, strict, json } => return verify(&path, strict, json),
        Cmd::Replay {
            dir,
            to,
            point,
            disk,
            json,
        } => replay(&dir, &to, point, disk, json),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(FormatError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hrl: {e}");
            ExitCode::from(1)
        }
    }
}

/// Files to read for `path`: the file itself, or every segment in a dir.
fn files(path: &Path) -> hrl_format::Result<Vec<PathBuf>> {
    if path.is_dir() {
        Ok(list_segments(path, None)?.into_iter().map(|s| s.path).collect())
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

fn stat(path: &Path, json: bool) -> hrl_format::Result<()> {
    let s = stat_path(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        print_stats(path, &s);
    }
    Ok(())
}

fn age(ns: u64) -> String {
    let now = hrl_format::now_ns();
    let s = now.saturating_sub(ns) as f64 / 1e9;
    if s < 120.0 {
        format!("{s:.1}s ago")
    } else if s < 7200.0 {
        format!("{:.1}m ago", s / 60.0)
    } else {
        format!("{:.1}h ago", s / 3600.0)
    }
}

fn print_stats(path: &Path, s: &Stats) {
    println!("{}", path.display());
    println!(
        "  files        {} ({} sealed), {}",
        s.files,
        s.sealed_files,
        hrl_format::human_bytes(s.bytes)
    );
    println!(
        "  disks        {}",
        s.disks.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
    );
    let types: Vec<String> = s.records_by_type.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("  records      {} ({})", s.records, types.join(" "));
    println!(
        "  extents      {} written, {} discarded, {} zeroed, {} failed writes",
        hrl_format::human_bytes(s.write_bytes),
        hrl_format::human_bytes(s.discard_bytes),
        hrl_format::human_bytes(s.write_zeroes_bytes),
        s.failed_writes
    );
    println!("  dirtied      {} distinct", hrl_format::human_bytes(s.dirtied_bytes));
    println!("  data         {} captured", hrl_format::human_bytes(s.data_bytes));
    println!(
        "  span         {:.1}s, write rate {}/s",
        s.span_seconds,
        hrl_format::human_bytes(s.write_rate_bytes_per_sec as u64)
    );
    if let Some(t) = s.tags.last() {
        println!(
            "  tags         {} (last: seq {} {:?} {}, freeze {:.1} ms)",
            s.tags.len(),
            t.seq,
            t.kind,
            age(t.time_ns),
            t.freeze_ms
        );
    } else {
        println!("  tags         0");
    }
    for l in &s.losses {
        println!("  LOST         {:?} {} ({})", l.reason, age(l.time_ns), l.detail);
    }
    for m in &s.modes {
        println!("  mode         {:?} {}", m.mode, age(m.time_ns));
    }
    for r in &s.top_regions {
        println!(
            "  hot region   {}..{}: {} written",
            hrl_format::human_bytes(r.offset),
            hrl_format::human_bytes(r.offset + r.len),
            hrl_format::human_bytes(r.written_bytes)
        );
    }
    for t in &s.torn_tails {
        println!(
            "  torn tail    {} at offset {}: {} bytes dropped ({})",
            t.path.display(),
            t.tail.offset,
            t.tail.dropped_bytes,
            t.tail.reason
        );
    }
}

fn print_record(
    out: &mut impl Write,
    file: &Path,
    seq: u64,
    offset: u64,
    rec: &Record,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let mut v = rec.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("file".into(), file.display().to_string().into());
            o.insert("segment".into(), seq.into());
            o.insert("pos".into(), offset.into());
        }
        writeln!(out, "{v}")
    } else {
        writeln!(out, "{}:{offset}\t{rec}", file.display())
    }
}

fn dump(path: &Path, json: bool) -> hrl_format::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for f in files(path)? {
        let sum = read_segment(&f, RecoveryMode::TolerateTornTail, |h, off, rec| {
            print_record(&mut out, &f, h.seq, off, rec, json).map_err(|e| FormatError::Io {
                path: "stdout".into(),
                op: "write",
                source: e,
            })
        })?;
        if let Some(t) = sum.torn_tail {
            let _ = out.flush();
            eprintln!(
                "hrl: {}: torn tail at offset {}: {} bytes dropped ({})",
                f.display(),
                t.offset,
                t.dropped_bytes,
                t.reason
            );
        }
    }
    let _ = out.flush();
    Ok(())
}

fn verify(path: &Path, strict: bool, json: bool) -> ExitCode {
    let fl = match files(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("hrl: {e}");
            return ExitCode::from(1);
        }
    };
    if fl.is_empty() {
        eprintln!(
            "hrl: {}: no .hrl segment in this directory: nothing to verify",
            path.display()
        );
        return ExitCode::from(USAGE);
    }
    let mode = if strict {
        RecoveryMode::AbsoluteConsistency
    } else {
        RecoveryMode::TolerateTornTail
    };
    let mut damaged = 0;
    for f in &fl {
        let res = read_segment(f, mode, |_, _, _| Ok(()));
        match res {
            Ok(sum) => {
                if let Some(t) = &sum.torn_tail {
                    eprintln!(
                        "hrl: warning: {}: torn tail at offset {}: {} bytes ({}); whole records before it are intact",
                        f.display(),
                        t.offset,
                        t.dropped_bytes,
                        t.reason
                    );
                }
                if json {
                    println!("{}", serde_json::json!({"file": f, "ok": true, "summary": sum}));
                } else {
                    println!(
                        "{}: ok, {} records{}{}",
                        f.display(),
                        sum.records,
                        if sum.sealed { ", sealed" } else { ", not sealed" },
                        if sum.unknown_skipped > 0 {
                            format!(", {} of unknown type skipped", sum.unknown_skipped)
                        } else {
                            String::new()
                        }
                    );
                }
            }
            Err(e) => {
                damaged += 1;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"file": f, "ok": false, "offset": e.offset(), "error": e.to_string()})
                    );
                }
                eprintln!("hrl: {e}");
            }
        }
    }
    if damaged > 0 {
        eprintln!("hrl: {damaged} of {} files damaged", fl.len());
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn stdout_err(e: std::io::Error) -> FormatError {
    FormatError::Io {
        path: "stdout".into(),
        op: "write",
        source: e,
    }
}

/// The last `n` records of a spool (every disk, or one), then with
/// `follow` every new record as it is written.
fn tail(dir: &Path, follow: bool, n: usize, disk: Option<Uuid>, json: bool) -> hrl_format::Result<()> {
    if !dir.is_dir() {
        return dump(dir, json);
    }
    let mut followers: Vec<Follower> = Vec::new();
    let mut last: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut first = true;
    loop {
        let disks = match disk {
            Some(d) => vec![d],
            None => hrl_format::list_disks(dir)?,
        };
        for d in disks {
            if !followers.iter().any(|f| f.disk() == d) {
                followers.push(Follower::new(dir, d, Cursor::default()));
            }
        }
        let mut any = false;
        for f in followers.iter_mut() {
            while let Some(r) = f.try_next()? {
                any = true;
                let path = dir.join(hrl_format::segment_file_name(r.header.disk_id, r.seq));
                let mut line = Vec::new();
                print_record(&mut line, &path, r.seq, r.offset, &r.record, json).map_err(stdout_err)?;
                if first {
                    // What is there already: keep only the last n.
                    last.push_back(line);
                    if last.len() > n {
                        last.pop_front();
                    }
                } else {
                    std::io::stdout().lock().write_all(&line).map_err(stdout_err)?;
                }
            }
        }
        if first {
            let mut out = std::io::stdout().lock();
            for line in last.drain(..) {
                out.write_all(&line).map_err(stdout_err)?;
            }
            out.flush().map_err(stdout_err)?;
            first = false;
        }
        if !follow {
            return Ok(());
        }
        if !any {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn replay(dir: &Path, to: &Path, point: Option<u64>, disk: Option<Uuid>, json: bool) -> hrl_format::Result<()> {
    let r = hrl_format::replay(dir, disk, point, to)?;
    if json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        println!(
            "replayed point {} ({:?}) of disk {} onto {}: {} data records, {} from {} segments; device size {}",
            r.point_seq,
            r.kind,
            r.disk,
            r.image.display(),
            r.data_records,
            hrl_format::human_bytes(r.data_bytes),
            r.segments,
            hrl_format::human_bytes(r.device_size)
        );
    }
    Ok(())
}
