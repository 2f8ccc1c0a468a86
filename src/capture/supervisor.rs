//! Running capture: many databases (or one) in one process on a few threads, each failing
//! database retried with backoff without disturbing the others, until a stop flag is set.
//! [`crate::ops::protect::Protector`] is the front door.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::engine::{CaptureOptions, CaptureStats, Capturer, Event, now_us};
use crate::chain::BackupSet;
use crate::error::{Error, Result};
use crate::sqlite::source::SourceDb;

/// Route SIGTERM and SIGINT to a stop flag for [`run_many`] and return it: what a
/// command-line program wants. A library embedding capture passes its own flag instead and
/// keeps its own signal handling.
pub fn stop_on_signals() -> &'static AtomicBool {
    crate::sys::install_stop_signals();
    &crate::sys::STOP
}

/// Raise the process's soft limit on open files to its hard limit; returns (old, new). Each
/// captured database holds about seven descriptors (two SQLite connections with their WAL
/// handles, the shared wal-index, walbundle's own WAL and wal-index descriptors), so the
/// common soft default of 1024 would cap one process well below a thousand databases.
///
/// # Errors
/// The system call's error.
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    crate::sys::raise_open_files_limit()
}

/// Record a failure in the set's heartbeat (state "failing"), keeping what is known.
fn failing(set_dir: &std::path::Path, db: &str, cap: Option<&Capturer>, e: &Error) {
    let prev = super::heartbeat::read(set_dir);
    let mut hb = cap.map(|c| c.heartbeat("failing")).unwrap_or_else(|| {
        let mut h = prev.clone().unwrap_or_default();
        h.pid = std::process::id();
        h.host = crate::sys::hostname();
        h.db = db.to_string();
        h
    });
    hb.state = "failing".into();
    hb.at_us = now_us();
    hb.last_error = e.to_string();
    hb.last_error_us = hb.at_us;
    hb.errors = prev.map_or(0, |p| p.errors) + 1;
    super::heartbeat::write(set_dir, &hb);
}

/// One database of a multi-database run.
pub struct CaptureSpec {
    /// The database.
    pub src: SourceDb,
    /// Its set (opened or created by the caller).
    pub set: BackupSet,
    /// Its options.
    pub opts: CaptureOptions,
}

/// A capturer slot in a multi-database run: running, or waiting to (re)start after a failure.
struct Slot {
    name: String,
    spec: Option<CaptureSpec>,
    cap: Option<Capturer>,
    retry_at: Instant,
    failures: u32,
    final_stats: Option<CaptureStats>,
}

/// Finding databases that appear while a multi-database capture runs.
pub struct Discover<'a> {
    /// How often to look.
    pub every: Duration,
    /// Specs of databases not seen before (the caller remembers what it returned).
    pub find: &'a (dyn Fn() -> Vec<CaptureSpec> + Sync),
}

fn slot(spec: CaptureSpec) -> Slot {
    Slot {
        name: spec.src.path.display().to_string(),
        spec: Some(spec),
        cap: None,
        retry_at: Instant::now(),
        failures: 0,
        final_stats: None,
    }
}

/// Capture several databases in one process on at most `threads` threads until `stop` is set
/// (or once each, with `once`). A failing database is logged through `on_error` and retried
/// with backoff (1 s doubling to 60 s) without disturbing the others. With `discover`,
/// databases found later join the run (spread over the threads).
///
/// # Errors
/// Only if a thread cannot be spawned; per-database failures go to `on_error`.
pub fn run_many(
    specs: Vec<CaptureSpec>,
    threads: usize,
    once: bool,
    discover: Option<&Discover<'_>>,
    stop: &AtomicBool,
    on_event: &(dyn Fn(&str, &Event, &CaptureStats) + Sync),
    on_error: &(dyn Fn(&str, Error) + Sync),
) -> Result<Vec<(String, CaptureStats)>> {
    let threads = if discover.is_some() && !once {
        threads.max(1)
    } else {
        threads.clamp(1, specs.len().max(1))
    };
    let mut groups: Vec<Vec<Slot>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, spec) in specs.into_iter().enumerate() {
        groups[i % threads].push(slot(spec));
    }
    let inboxes: Vec<std::sync::Mutex<Vec<Slot>>> = (0..threads)
        .map(|_| std::sync::Mutex::new(Vec::new()))
        .collect();
    let next_inbox = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (ti, mut group) in groups.into_iter().enumerate() {
            let results = &results;
            let inboxes = &inboxes;
            let next_inbox = &next_inbox;
            scope.spawn(move || {
                let poll = group
                    .iter()
                    .filter_map(|s| s.spec.as_ref().map(|x| x.opts.poll))
                    .min()
                    .unwrap_or(Duration::from_millis(100));
                let mut last_scan = Instant::now();
                loop {
                    if let Some(d) = discover.filter(|_| ti == 0 && !once)
                        && last_scan.elapsed() >= d.every
                    {
                        last_scan = Instant::now();
                        for spec in (d.find)() {
                            let i = next_inbox.fetch_add(1, Ordering::SeqCst) % inboxes.len();
                            inboxes[i]
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(slot(spec));
                        }
                    }
                    group.append(
                        &mut inboxes[ti]
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner),
                    );
                    let stopping = stop.load(Ordering::SeqCst);
                    let mut all_done = true;
                    for slot in &mut group {
                        drive(slot, once || stopping, on_event, on_error);
                        all_done &= slot.cap.is_none() && slot.spec.is_none();
                    }
                    if (once || stopping) && all_done {
                        break;
                    }
                    if once && group.iter().all(|s| s.cap.is_none() && s.failures > 0) {
                        break; // --once: every remaining database failed and was reported
                    }
                    std::thread::sleep(poll);
                }
                let mut r = results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for s in group {
                    let stats = s.cap.map(|c| c.stats).or(s.final_stats).unwrap_or_default();
                    r.push((s.name, stats));
                }
            });
        }
    });
    Ok(results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// Advance one slot: start it when due, step it, or (finishing) flush and retire it.
fn drive(
    slot: &mut Slot,
    finishing: bool,
    on_event: &(dyn Fn(&str, &Event, &CaptureStats) + Sync),
    on_error: &(dyn Fn(&str, Error) + Sync),
) {
    if slot.cap.is_none() {
        if finishing && slot.failures > 0 {
            slot.spec = None; // stopping: no more retries of a failing database
            return;
        }
        if Instant::now() < slot.retry_at {
            return;
        }
        let Some(spec) = slot.spec.take() else { return };
        let (src, set, opts) = (
            spec.src.clone(),
            BackupSet::open(spec.set.dir()),
            spec.opts.clone(),
        );
        match set.and_then(|set| Capturer::start(src, set, opts)) {
            Ok(c) => {
                slot.cap = Some(c);
                slot.failures = 0;
            }
            Err(e) => {
                failing(spec.set.dir(), &slot.name, None, &e);
                on_error(&slot.name, e);
                slot.failures += 1;
                slot.retry_at = Instant::now() + backoff(slot.failures);
                slot.spec = Some(spec);
                if finishing {
                    slot.spec = None; // give up on it: the run is ending
                }
                return;
            }
        }
        slot.spec = Some(spec);
    }
    let Some(cap) = slot.cap.as_mut() else { return };
    let res = if finishing { cap.flush() } else { cap.step() };
    for e in cap.take_events() {
        on_event(&slot.name, &e, &cap.stats);
    }
    if res.is_ok() {
        cap.write_heartbeat(if finishing { "stopped" } else { "running" }, finishing);
    }
    if let Err(e) = res {
        failing(cap.set().dir(), &slot.name, Some(cap), &e);
        on_error(&slot.name, e);
        slot.failures += 1;
        slot.retry_at = Instant::now() + backoff(slot.failures);
        slot.cap = None; // restart it from what the set holds
        if finishing {
            slot.spec = None;
        }
        return;
    }
    if finishing {
        // Done: keep the stats, release the database.
        let stats = cap.stats.clone();
        slot.final_stats = Some(stats.clone());
        slot.cap = None;
        slot.spec = None;
        slot.failures = 0;
        on_event(
            &slot.name,
            &Event::Stopped {
                stats: Box::new(stats.clone()),
            },
            &stats,
        );
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6).saturating_sub(1)).min(Duration::from_secs(60))
}
