//! Change tracking: consume completion events from a [`ChangeSource`], keep
//! the dirty map, and write merged `Extent`, `Flush` and `Lost` records.
//!
//! The tracefs backend ([`TraceSource`]) reads completion events (never
//! queue events) from a private instance's per-CPU raw buffers. Any sign of
//! loss (the kernel's overrun/dropped counters rising, or a page flagged
//! with missed events) becomes a `Lost` record, the whole device is marked
//! dirty and the disk goes to resync: tracking never continues silently
//! past a gap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl_format::{DiskMode, Extent, ExtentOp, Flush, LogWriter, LossReason, Lost, ModeChange, Record};

use crate::error::{AgentError, Result};
use crate::tracking::device::{BlockDevice, TraceTarget};
use crate::tracking::dirty::{DirtyMap, HotMap};
use crate::tracking::event::EventDecoder;
use crate::tracking::ringbuf::parse_page;
use crate::tracking::tracefs::{Instance, Tracefs};

/// One change to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Extent {
        op: ExtentOp,
        failed: bool,
        offset: u64,
        len: u64,
    },
    Flush {
        fua: bool,
    },
}

/// What a change source reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    Change(Change),
    /// Events were lost; `detail` says how we know.
    Lost(String),
}

/// Where changes come from.
pub trait ChangeSource: Send {
    /// Appends the changes available now, without waiting.
    fn poll(&mut self, out: &mut Vec<SourceEvent>) -> Result<()>;
    /// Appends every change that completed before this call. Points depend
    /// on it: after a freeze, drain gives the exact final dirty set.
    fn drain(&mut self, out: &mut Vec<SourceEvent>) -> Result<()>;
    /// What is being watched, for logs.
    fn describe(&self) -> String;
}

/// Counters of a trace source.
#[derive(Debug, Default, Clone, Copy)]
pub struct SourceCounters {
    pub pages: u64,
    pub events: u64,
    pub ignored: u64,
    pub lost_events: u64,
}

/// Completion events from a private tracefs instance.
pub struct TraceSource {
    inst: Instance,
    target: TraceTarget,
    decoder: EventDecoder,
    page: Vec<u8>,
    lost_seen: u64,
    /// When the per-CPU stats were last read.
    stats_at: Instant,
    pub counters: SourceCounters,
}

/// How often a poll reads the per-CPU stats (the kernel's count of lost
/// events). Read every 20 ms poll they were a fifth of the agent's CPU
/// under load (an open, a formatted text and a close per CPU); a drain
/// (before every point and at a stop) still reads them every time, and
/// a page flagged missed-events is seen on every poll.
const STATS_EVERY: Duration = Duration::from_millis(250);

impl TraceSource {
    /// Creates the instance for `dev` with `buffer_kb` per CPU, sets the
    /// filter, enables the completion event and starts tracing. Every
    /// completion after this returns is traced.
    pub fn start(tracefs: &Tracefs, dev: &BlockDevice, buffer_kb: u32) -> Result<Self> {
        let target = dev.trace_target();
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let tag = format!("{}_{}-{}", dev.dev.0, dev.dev.1, &nonce[..8]);
        let mut inst = tracefs.create_instance(&tag, buffer_kb)?;
        let fmt = inst.event_format("block", target.event)?;
        let decoder = EventDecoder::from_format(target.event, &fmt)?;
        inst.enable_event("block", target.event, &target.filter)?;
        inst.start()?;
        let lost_seen = inst.stats()?.iter().map(|s| s.lost()).sum();
        let page = vec![0u8; inst.page_size()];
        Ok(TraceSource {
            inst,
            target,
            decoder,
            page,
            lost_seen,
            stats_at: Instant::now(),
            counters: SourceCounters::default(),
        })
    }

    /// Name of the tracefs instance.
    pub fn instance_name(&self) -> &str {
        self.inst.name()
    }

    /// Reads every CPU's pages; `stats`: also read the lost-event counts
    /// now (else only when [`STATS_EVERY`] has passed or a page says
    /// events were missed).
    fn read_all(&mut self, out: &mut Vec<SourceEvent>, stats: bool) -> Result<()> {
        let mut missed = false;
        for cpu in 0..self.inst.cpu_count() {
            while let Some(n) = self.inst.read_page(cpu, &mut self.page)? {
                self.counters.pages += 1;
                let (target, decoder, counters) = (&self.target, &self.decoder, &mut self.counters);
                let info = parse_page(&self.page[..n], |p| {
                    counters.events += 1;
                    match decoder.decode(p) {
                        Some(ev) => {
                            if let Some(c) = to_changes(target, &ev) {
                                out.extend(c.into_iter().flatten().map(SourceEvent::Change));
                            }
                        }
                        None => counters.ignored += 1,
                    }
                })
                .map_err(|e| AgentError::RingBuffer(format!("cpu {cpu}: {e}")))?;
                missed |= info.missed;
            }
        }
        if !(stats || missed || self.stats_at.elapsed() >= STATS_EVERY) {
            return Ok(());
        }
        self.stats_at = Instant::now();
        let lost: u64 = self.inst.stats()?.iter().map(|s| s.lost()).sum();
        if lost > self.lost_seen || missed {
            let n = lost - self.lost_seen;
            self.counters.lost_events += n;
            self.lost_seen = lost;
            out.push(SourceEvent::Lost(format!(
                "kernel trace buffer lost {n} events{} (instance {}); raise buffer_size_kb or lower the load",
                if missed { ", pages flagged missed-events" } else { "" },
                self.inst.name()
            )));
        }
        Ok(())
    }
}

/// The changes one completion event stands for (preflush, the I/O, FUA).
fn to_changes(target: &TraceTarget, ev: &crate::tracking::event::BlockEvent) -> Option<[Option<Change>; 3]> {
    let r = ev.rwbs();
    let pre = r.preflush.then_some(Change::Flush { fua: false });
    let fua = r.fua.then_some(Change::Flush { fua: true });
    let op = match r.op {
        b'R' => return None,
        b'F' => return Some([Some(Change::Flush { fua: false }), None, None]),
        b'W' => ExtentOp::Write,
        b'D' => ExtentOp::Discard,
        // Write-zeroes shows as 'N'; anything else that carries sectors is
        // treated as a change too: dirtying too much is safe, too little not.
        _ => ExtentOp::WriteZeroes,
    };
    if ev.nr_sector == 0 {
        return Some([pre.or(fua), None, None]);
    }
    let (offset, len) = target.translate(ev.dev, ev.sector, ev.nr_sector)?;
    Some([
        pre,
        Some(Change::Extent {
            op,
            failed: ev.error != 0,
            offset,
            len,
        }),
        fua,
    ])
}

impl ChangeSource for TraceSource {
    fn poll(&mut self, out: &mut Vec<SourceEvent>) -> Result<()> {
        self.read_all(out, false)
    }

    fn drain(&mut self, out: &mut Vec<SourceEvent>) -> Result<()> {
        // Non-blocking reads until every CPU's buffer is empty: everything
        // committed before this call is then consumed, and any loss seen.
        self.read_all(out, true)
    }

    fn describe(&self) -> String {
        format!(
            "tracefs instance {} event block/{} filter '{}'",
            self.inst.name(),
            self.target.event,
            self.target.filter
        )
    }
}

/// What a poll or drain did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub changes: u64,
    pub lost: bool,
}

/// Counters of a tracker.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrackerCounters {
    pub changes: u64,
    pub extent_records: u64,
    pub extent_bytes: u64,
    pub flushes: u64,
    pub losses: u64,
}

/// Turns change events into the dirty map and log records.
pub struct Tracker {
    source: Box<dyn ChangeSource>,
    dirty: Arc<DirtyMap>,
    hot: Option<Arc<HotMap>>,
    events: Vec<SourceEvent>,
    pending: Option<Extent>,
    pub counters: TrackerCounters,
}

impl Tracker {
    pub fn new(source: Box<dyn ChangeSource>, dirty: Arc<DirtyMap>) -> Self {
        Tracker {
            source,
            dirty,
            hot: None,
            events: Vec::with_capacity(4096),
            pending: None,
            counters: TrackerCounters::default(),
        }
    }

    pub fn dirty(&self) -> &Arc<DirtyMap> {
        &self.dirty
    }

    /// Also marks changed ranges in `hot` (for the pre-copier's hot delay).
    pub fn with_hot(mut self, hot: Arc<HotMap>) -> Self {
        self.hot = Some(hot);
        self
    }

    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// Consumes what is available now.
    pub fn poll(&mut self, log: &mut LogWriter) -> Result<Outcome> {
        let mut ev = std::mem::take(&mut self.events);
        self.source.poll(&mut ev)?;
        let r = self.apply(&ev, log);
        ev.clear();
        self.events = ev;
        r
    }

    /// Consumes every completion that happened before this call.
    pub fn drain(&mut self, log: &mut LogWriter) -> Result<Outcome> {
        let mut ev = std::mem::take(&mut self.events);
        self.source.drain(&mut ev)?;
        let r = self.apply(&ev, log);
        ev.clear();
        self.events = ev;
        r
    }

    fn flush_pending(&mut self, log: &mut LogWriter) -> Result<()> {
        if let Some(e) = self.pending.take() {
            log.append(&Record::Extent(e))?;
            self.counters.extent_records += 1;
        }
        Ok(())
    }

    fn apply(&mut self, events: &[SourceEvent], log: &mut LogWriter) -> Result<Outcome> {
        let mut out = Outcome::default();
        let now = hrl_format::now_ns();
        for e in events {
            match e {
                SourceEvent::Change(Change::Extent {
                    op,
                    failed,
                    offset,
                    len,
                }) => {
                    out.changes += 1;
                    self.counters.changes += 1;
                    self.counters.extent_bytes += len;
                    self.dirty.mark_range(*offset, *len);
                    if let Some(h) = &self.hot {
                        h.mark_range(*offset, *len);
                    }
                    if let Some(p) = self.pending.as_mut() {
                        if p.op == *op && p.failed == *failed && p.offset + p.len == *offset {
                            p.len += len;
                            continue;
                        }
                    }
                    self.flush_pending(log)?;
                    self.pending = Some(Extent {
                        op: *op,
                        failed: *failed,
                        offset: *offset,
                        len: *len,
                        time_ns: now,
                    });
                }
                SourceEvent::Change(Change::Flush { fua }) => {
                    self.flush_pending(log)?;
                    self.counters.flushes += 1;
                    log.append(&Record::Flush(Flush {
                        fua: *fua,
                        time_ns: now,
                    }))?;
                }
                SourceEvent::Lost(detail) => {
                    self.flush_pending(log)?;
                    out.lost = true;
                    self.counters.losses += 1;
                    record_loss(log, &self.dirty, LossReason::Overrun, detail.clone())?;
                }
            }
        }
        self.flush_pending(log)?;
        Ok(out)
    }
}

/// Writes a whole-device `Lost` record and a `Mode(Resync)`, and marks every
/// chunk dirty: what was lost is unknown, so everything is suspect.
pub fn record_loss(log: &mut LogWriter, dirty: &DirtyMap, reason: LossReason, detail: String) -> Result<()> {
    let now = hrl_format::now_ns();
    dirty.mark_all();
    log.append(&Record::Lost(Lost {
        reason,
        range: None,
        time_ns: now,
        detail,
    }))?;
    log.append(&Record::Mode(ModeChange {
        mode: DiskMode::Resync,
        time_ns: now,
    }))?;
    log.sync()?;
    Ok(())
}
