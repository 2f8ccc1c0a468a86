//! Continuous capture: committed WAL frames into chained bundles, in checkpoint-controlled
//! windows, never losing a frame silently.
//!
//! Three connections (none ever checkpoints on close, none auto-checkpoints):
//! - **R** keeps a read transaction open at all times: its read mark stops any other connection
//!   from restarting the WAL over frames walbundle has not captured yet.
//! - **W** takes the write barrier (`BEGIN IMMEDIATE`, then `ROLLBACK`) for the instant R's pin
//!   moves forward: capture the last few frames, end R, (for a restart cut: PASSIVE checkpoint on
//!   C), begin R again, release. Nothing slow happens inside it.
//! - **C** runs PASSIVE checkpoints (never RESTART/TRUNCATE: those take the write lock and can
//!   make frames committed just before them vanish).
//!
//! Frames are read with `pread` up to the wal-index's `mxFrame` (the committed frontier; nothing
//! beyond it is ever read), each checked against the running WAL checksum and the cycle's salts.
//! A transaction is emitted once its commit frame is seen, with its last version of every page.
//!
//! The state checksum after every transaction is kept from one 64-bit term per page (8 bytes a
//! page), so no old page is ever read back. The terms come from the chain's snapshot, or on
//! resume from a full read through R whose XOR must equal the chain's recorded state.
//!
//! Continuity is proven or a new chain starts, with the reason recorded: WAL salts changing when
//! R's pin could not have allowed it, a captured frame changing, the database or WAL file being
//! replaced, the page size changing, the database leaving WAL mode, or (on resume) the WAL no
//! longer holding the last captured frame unchanged.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;
use serde::Serialize;

use super::snapshot::{Conns, SnapshotOptions, snapshot_with};
use super::source::{SourceDb, shm_file};
use super::wal::{FRAME_HEADER_LEN, FrameHeader, ShmHeader, WalHeader, wal_checksum};
use crate::bundle::checksum::{StateChecksum, lock_byte_page, term_or_zero};
use crate::bundle::wbb::{self, BodyEncoder, BundleHeader, TxnMeta};
use crate::chain::BackupSet;
use crate::error::{Error, ErrorKind, IoContext, Result, SqlContext};
use crate::progress::NoProgress;
use crate::sys::{file_id, pread_full};

/// How capture behaves.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// The longest a committed transaction waits before it is sealed into a bundle.
    pub interval: Duration,
    /// Look for new frames this often.
    pub poll: Duration,
    /// When the WAL file grows past this, cut a window that lets the WAL restart.
    pub max_wal_bytes: u64,
    /// Seal a bundle early once its uncompressed body reaches this.
    pub max_bundle_bytes: u64,
    /// zstd level for bundle bodies.
    pub level: i32,
    /// zstd window for bundle bodies, as a power of two (0: the level's default).
    pub window_log: u32,
    /// How long the write barrier may wait for the application's write lock before the cut is
    /// retried at the next poll (writers are never held longer than the barrier's own work).
    pub barrier_timeout: Duration,
    /// Options for the full snapshots that start chains.
    pub snapshot: SnapshotOptions,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            poll: Duration::from_millis(100),
            max_wal_bytes: 16 << 20,
            max_bundle_bytes: 64 << 20,
            level: 3,
            window_log: 24,
            barrier_timeout: Duration::from_millis(200),
            snapshot: SnapshotOptions {
                check: crate::replay::CheckLevel::Quick,
                ..SnapshotOptions::default()
            },
        }
    }
}

/// Running totals, exported in logs and `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CaptureStats {
    /// Bundles published.
    pub bundles: u64,
    /// Transactions captured.
    pub txns: u64,
    /// Bytes of bundles published.
    pub bundle_bytes: u64,
    /// Chains started (full snapshots).
    pub chains_started: u64,
    /// WAL restarts followed without a gap.
    pub wal_restarts_followed: u64,
    /// Committed frames whose header SQLite left zeroed (accepted; see `scan`).
    pub zeroed_frames: u64,
    /// Write barriers taken.
    pub barriers: u64,
    /// Longest write barrier, µs (the longest writers were held by walbundle).
    pub barrier_max_us: u64,
    /// Sum of barrier durations, µs.
    pub barrier_total_us: u64,
    /// Newest transaction number captured.
    pub last_txn: u64,
    /// Current chain.
    pub chain_id: String,
    /// Newest transaction sealed into a published bundle (or the chain's generation).
    pub sealed_txn: u64,
    /// When the newest bundle was sealed (µs since the epoch; 0: none yet).
    pub last_seal_us: i64,
}

/// Something a caller may want to log.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A new chain started from a full snapshot.
    ChainStarted {
        /// Chain id.
        chain_id: String,
        /// Why.
        reason: String,
        /// Transaction number of its base.
        txn: u64,
    },
    /// Capture continues an existing chain.
    Resumed {
        /// Chain id.
        chain_id: String,
        /// Next bundle sequence.
        next_seq: u64,
        /// Last transaction already in the set.
        txn: u64,
    },
    /// A bundle was published.
    Bundle {
        /// Chain id.
        chain_id: String,
        /// Sequence.
        seq: u64,
        /// First and last transaction.
        txns: (u64, u64),
        /// File size.
        bytes: u64,
        /// WAL frames covered.
        frames: (u32, u32),
    },
    /// The application's WAL restarted and capture followed it without a gap.
    WalRestarted {
        /// New salts.
        salts: (u32, u32),
    },
    /// Capture of this database ended (multi-database runs).
    Stopped {
        /// Final totals.
        stats: Box<CaptureStats>,
    },
}

/// Where the chain ends: what the next bundle continues from.
#[derive(Debug, Clone)]
struct Cursor {
    chain_id: String,
    next_seq: u64,
    prev_digest: [u8; 32],
    state: StateChecksum,
    page_size: u32,
    page_count: u32,
    next_txn: u64,
    salts: (u32, u32),
    frame: u32,
    cksum: (u32, u32),
}

impl Cursor {
    /// The end of a chain that holds only its generation `m` (at WAL position `wal`): bundle 1
    /// links to the generation's image.
    fn at_generation(
        m: &crate::chain::manifest::GenerationManifest,
        wal: &crate::chain::manifest::WalPosition,
    ) -> Self {
        Self {
            chain_id: m.chain_id.clone(),
            next_seq: m.seq + 1,
            prev_digest: m.link(),
            state: StateChecksum::from_hex(&m.state_checksum).unwrap_or_default(),
            page_size: m.page_size,
            page_count: m.page_count,
            next_txn: m.txn + 1,
            salts: (wal.salt1, wal.salt2),
            frame: wal.frame,
            cksum: (wal.checksum1, wal.checksum2),
        }
    }
}

/// R's read mark: the WAL cycle and frame it pins, and whether the WAL was fully backfilled then
/// (only then may the WAL restart once while R is held).
#[derive(Debug, Clone, Copy)]
struct Pin {
    salts: (u32, u32),
    mx: u32,
    full: bool,
}

/// A bundle being filled: streamed into a temporary file in the chain folder, so memory does
/// not grow with the bundle.
struct Pending {
    body: BodyEncoder<std::io::BufWriter<File>>,
    tmp: std::path::PathBuf,
    header: BundleHeader,
    txns: u32,
    started: Instant,
}

/// One captured database.
pub struct Capturer {
    src: SourceDb,
    set: BackupSet,
    opts: CaptureOptions,
    r: Connection,
    w: Connection,
    c: Connection,
    shm: Arc<File>,
    db_id: (u64, u64),
    cur: Cursor,
    pin: Pin,
    /// State-checksum term of every page at the cursor (index pgno-1).
    terms: Vec<u64>,
    wal_hdr: Option<WalHeader>,
    pending: Option<Pending>,
    /// Where capture has been unable to move past committed frames, and since when.
    stuck: Option<((u32, u32), u32, Instant)>,
    /// Inside a write barrier: do nothing slow (no sealing).
    in_barrier: bool,
    last_seal: Instant,
    events: Vec<Event>,
    /// Since when the write barrier has been unavailable (the application holds the lock).
    barrier_busy_since: Option<Instant>,
    /// When the heartbeat file was last written, and when this capture started (µs).
    hb_at: Instant,
    started_us: i64,
    /// Running totals.
    pub stats: CaptureStats,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn debug(msg: impl FnOnce() -> String) {
    if std::env::var_os("WALBUNDLE_DEBUG").is_some() {
        eprintln!("debug: {}", msg());
    }
}

/// Per transaction, keep up to this many bytes of page content from the checksum pass instead of
/// reading the frames again when the transaction commits.
const TXN_KEEP_BYTES: usize = 8 << 20;

/// The most frames capture may still have to read when it takes the write barrier; with more,
/// the barrier waits for the next poll.
const MAX_BARRIER_FRAMES: u32 = 256;

/// How long committed frames may stay unreadable before capture gives up on the chain.
const STUCK_LIMIT: Duration = Duration::from_secs(5);

/// Why continuity could not be proven (becomes a new chain's recorded reason).
struct Gap(String);

impl Capturer {
    /// Open `src` for capture into `set` (whose writer lock is taken here): resume the newest
    /// chain if the WAL still proves continuity, else start a new chain with the reason.
    ///
    /// # Errors
    /// `Usage` if the database is not in WAL mode; `Busy` if another process writes the set;
    /// anything a snapshot can fail with.
    pub fn start(src: SourceDb, mut set: BackupSet, opts: CaptureOptions) -> Result<Self> {
        set.lock_writer()?;
        // Bundles a killed capture was writing are hidden temporaries: remove them.
        set.store().clean_stale_temps("")?;
        // One scan of the set serves start-up (listings skip temporaries, so it stays valid).
        let inv = set.inventory()?;
        for chain in &inv.chains {
            set.store().clean_stale_temps(&chain.id)?;
        }
        // No header check with a descriptor of our own here: this process may already hold
        // SQLite connections to the database (closing any descriptor drops their POSIX locks).
        // Callers check the header before any connection exists; SQLite refuses a non-database.
        let p = src.path.clone();
        let r = src.connect(opts.snapshot.busy_timeout, true)?;
        let w = src.connect(opts.snapshot.busy_timeout, false)?;
        let c = src.connect(opts.snapshot.busy_timeout, true)?;
        let mode: String = r
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .sql_ctx(&p, "reading journal mode")?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::usage(format!(
                "is in journal mode {mode}; continuous capture reads the WAL and needs WAL mode"
            ))
            .at(&p)
            .hint("switch the application to `PRAGMA journal_mode=WAL`, or use `walbundle snapshot` on a schedule"));
        }
        c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .sql_ctx(&p, "reading schema")?;
        let shm = shm_file(&src)?;
        let db_id = file_id(&src.path).ctx(&src.path, "reading file identity")?;
        let empty_cursor = Cursor {
            chain_id: String::new(),
            next_seq: 1,
            prev_digest: [0; 32],
            state: StateChecksum::default(),
            page_size: 0,
            page_count: 0,
            next_txn: 1,
            salts: (0, 0),
            frame: 0,
            cksum: (0, 0),
        };
        let mut me = Self {
            src,
            set,
            opts,
            r,
            w,
            c,
            shm,
            db_id,
            cur: empty_cursor,
            pin: Pin {
                salts: (0, 0),
                mx: 0,
                full: false,
            },
            terms: Vec::new(),
            wal_hdr: None,
            pending: None,
            stuck: None,
            in_barrier: false,
            last_seal: Instant::now(),
            events: Vec::new(),
            stats: CaptureStats::default(),
            hb_at: Instant::now(),
            started_us: now_us(),
            barrier_busy_since: None,
        };
        match me.resume(&inv)? {
            Ok(()) => {}
            Err(Gap(reason)) => me.new_chain(&reason)?,
        }
        Ok(me)
    }

    /// The set being written.
    pub fn set(&self) -> &BackupSet {
        &self.set
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The cursor of the newest chain that has a WAL position, if the set has one.
    fn chain_end(inv: &crate::chain::Inventory) -> Result<Option<Cursor>> {
        let mut best: Option<(u64, Cursor)> = None;
        for chain in &inv.chains {
            let Some(base) = chain.base() else { continue };
            let Some(wal) = base.wal else { continue };
            let cur = if let Some(last) = chain.bundles.last() {
                let b = match wbb::read_bundle(&last.path) {
                    Ok(b) => b,
                    Err(e) if e.kind() == ErrorKind::Corrupt => continue,
                    Err(e) => return Err(e),
                };
                let h = &b.header;
                Cursor {
                    chain_id: chain.id.clone(),
                    next_seq: h.seq + 1,
                    prev_digest: b.digest,
                    state: StateChecksum(h.state_after),
                    page_size: h.page_size,
                    page_count: h.page_count_after,
                    next_txn: h.last_txn() + 1,
                    salts: h.salts,
                    frame: h.last_frame,
                    cksum: h.end_checksum,
                }
            } else {
                Cursor::at_generation(base, &wal)
            };
            let end = cur.next_txn;
            if best.as_ref().is_none_or(|(b, _)| end > *b) {
                best = Some((end, cur));
            }
        }
        Ok(best.map(|(_, c)| c))
    }

    /// Try to continue the newest chain. `Ok(Err(gap))` when continuity cannot be proven.
    fn resume(&mut self, inv: &crate::chain::Inventory) -> Result<std::result::Result<(), Gap>> {
        let Some(cur) = Self::chain_end(inv)? else {
            return Ok(Err(Gap("first capture of this database".into())));
        };
        if inv.max_txn() >= cur.next_txn {
            return Ok(Err(Gap(
                "the set's newest point is not the end of a capturable chain".into(),
            )));
        }
        let p = self.src.path.clone();
        self.w
            .execute_batch("BEGIN IMMEDIATE")
            .sql_ctx(&p, "taking the write barrier")?;
        let t0 = Instant::now();
        let res = self.check_and_pin(&cur);
        let rb = self.w.execute_batch("ROLLBACK");
        self.note_barrier(t0.elapsed());
        rb.sql_ctx(&p, "releasing the write barrier")?;
        if let Some(g) = res?.err() {
            let _ = self.r.execute_batch("COMMIT");
            return Ok(Err(g));
        }
        // Prove the state: every page's term through R (pinned exactly at the cursor).
        let (terms, state) = read_terms(&self.r, &p, cur.page_size)?;
        if state != cur.state || terms.len() != cur.page_count as usize {
            let _ = self.r.execute_batch("COMMIT");
            return Ok(Err(Gap(format!(
                "the database's content at the last captured frame does not match the chain's \
                 state checksum ({} pages, {} vs {})",
                terms.len(),
                state.to_hex(),
                cur.state.to_hex()
            ))));
        }
        self.terms = terms;
        self.stats.chain_id = cur.chain_id.clone();
        self.stats.last_txn = cur.next_txn - 1;
        self.stats.sealed_txn = cur.next_txn - 1;
        self.events.push(Event::Resumed {
            chain_id: cur.chain_id.clone(),
            next_seq: cur.next_seq,
            txn: cur.next_txn - 1,
        });
        self.cur = cur;
        Ok(Ok(()))
    }

    /// Under the barrier: does the WAL still hold the cursor's frame unchanged, with nothing
    /// committed after it? If so, pin R there.
    fn check_and_pin(&mut self, cur: &Cursor) -> Result<std::result::Result<(), Gap>> {
        let p = self.src.path.clone();
        self.r
            .execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
            .sql_ctx(&p, "starting read transaction")?;
        let shm = self.read_shm()?;
        let wal = self.open_wal()?;
        let hdr = match &wal {
            Some(f) => WalHeader::read(f).ctx(self.src.wal_path(), "reading WAL header")?,
            None => None,
        };
        let Some(h) = shm else {
            return Ok(Err(Gap("the wal-index is not readable".into())));
        };
        if h.mx_frame == 0
            && cur.frame == 0
            && (hdr.is_none() || hdr.is_some_and(|x| x.salts == cur.salts))
        {
            self.pin = Pin {
                salts: h.salts,
                mx: 0,
                full: true,
            };
            self.wal_hdr = hdr;
            return Ok(Ok(()));
        }
        let Some(hdr) = hdr else {
            return Ok(Err(Gap(
                "the WAL was reset since the last captured frame".into()
            )));
        };
        if hdr.salts != cur.salts || h.salts != cur.salts {
            return Ok(Err(Gap(
                "the WAL restarted since the last capture (the application checkpointed while \
                 walbundle was not running)"
                    .into(),
            )));
        }
        if hdr.page_size != cur.page_size {
            return Ok(Err(Gap(format!(
                "page size changed from {} to {}",
                cur.page_size, hdr.page_size
            ))));
        }
        if cur.frame > 0 {
            let f = wal.as_ref().map(|f| FrameHeader::read(f, &hdr, cur.frame));
            let ok = matches!(f, Some(Ok(Some(fh))) if fh.salts == cur.salts && fh.checksum == cur.cksum);
            if !ok {
                return Ok(Err(Gap(format!(
                    "the WAL no longer holds the last captured frame {} unchanged (the source lost \
                     or rewrote frames, e.g. after power loss with synchronous=NORMAL)",
                    cur.frame
                ))));
            }
        }
        if h.mx_frame != cur.frame {
            return Ok(Err(Gap(format!(
                "{} frames were committed while walbundle was not running; their before-state \
                 cannot be proven",
                h.mx_frame.saturating_sub(cur.frame)
            ))));
        }
        self.pin = Pin {
            salts: cur.salts,
            mx: h.mx_frame,
            full: h.mx_frame == h.n_backfill,
        };
        self.wal_hdr = Some(hdr);
        Ok(Ok(()))
    }

    /// Seal what is pending, then start a new chain from a full snapshot taken with R pinned at
    /// its position (so the chain continues from exactly there).
    fn new_chain(&mut self, reason: &str) -> Result<()> {
        self.seal()?;
        let _ = self.r.execute_batch("COMMIT");
        let mut opts = self.opts.snapshot.clone();
        opts.reason = reason.to_string();
        let mut terms = Vec::new();
        let rep = snapshot_with(
            &self.set,
            &self.src,
            &opts,
            &NoProgress,
            Conns {
                r: &self.r,
                w: &self.w,
                keep_pin: true,
                terms: Some(&mut terms),
            },
        )?;
        let m = &rep.manifest;
        let Some(wal) = m.wal else {
            return Err(Error::usage("left WAL mode during the snapshot").at(&self.src.path));
        };
        self.note_barrier(Duration::from_micros(rep.barrier_us));
        self.terms = terms;
        self.cur = Cursor::at_generation(m, &wal);
        self.pin = Pin {
            salts: self.cur.salts,
            mx: wal.frame,
            full: wal.frame == wal.backfilled,
        };
        self.wal_hdr = self
            .open_wal()?
            .and_then(|f| WalHeader::read(&f).ok().flatten());
        // With the WAL fully backfilled at the snapshot, R reads nothing from it and the
        // application may already have restarted it: `capture_new` follows that restart (the
        // pin is `full`). Otherwise R's read mark forbids a restart, and a change is an error.
        let changed = wal.frame > 0 && self.wal_hdr.is_none_or(|h| h.salts != self.cur.salts);
        if changed && self.pin.full {
            self.wal_hdr = None;
        } else if changed {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "WAL changed during the snapshot's barrier",
            )
            .at(self.src.wal_path()));
        }
        self.db_id = file_id(&self.src.path).ctx(&self.src.path, "reading file identity")?;
        self.stats.chains_started += 1;
        self.stats.chain_id = m.chain_id.clone();
        self.stats.last_txn = m.txn;
        self.stats.sealed_txn = m.txn;
        self.events.push(Event::ChainStarted {
            chain_id: m.chain_id.clone(),
            reason: reason.to_string(),
            txn: m.txn,
        });
        Ok(())
    }

    fn read_shm(&self) -> Result<Option<ShmHeader>> {
        for _ in 0..50 {
            if let Some(h) =
                ShmHeader::read(&self.shm).ctx(self.src.shm_path(), "reading wal-index")?
            {
                return Ok(Some(h));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(None)
    }

    fn open_wal(&self) -> Result<Option<File>> {
        let wp = self.src.wal_path();
        match File::open(&wp) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&wp, "opening WAL", e)),
        }
    }

    fn note_barrier(&mut self, d: Duration) {
        let u = us(d);
        self.stats.barriers += 1;
        self.stats.barrier_total_us += u;
        self.stats.barrier_max_us = self.stats.barrier_max_us.max(u);
    }

    /// One round: capture new committed frames, seal when due, move the pin, restart the chain on
    /// a gap. Call every `opts.poll`.
    ///
    /// # Errors
    /// Destination and SQLite failures (the caller logs them and retries or exits).
    pub fn step(&mut self) -> Result<()> {
        match self.capture_new()? {
            Ok(()) => {}
            Err(Gap(reason)) => return self.new_chain(&reason),
        }
        // `interval` bounds how long a committed transaction waits to be sealed: it was
        // committed up to one poll before it was captured, and sealing takes a moment, so the
        // bundle is sealed two polls early.
        let deadline = self
            .opts
            .interval
            .saturating_sub(self.opts.poll * 2)
            .max(self.opts.poll);
        let due = self.pending.as_ref().is_some_and(|p| {
            p.started.elapsed() >= deadline || p.body.raw_len() >= self.opts.max_bundle_bytes
        });
        if due {
            self.seal()?;
            // Sealing took a moment (compress, fsync): catch up on what was committed meanwhile
            // with no barrier held, so inside the barrier only a handful of frames remain.
            if let Err(Gap(reason)) = self.capture_new()? {
                return self.new_chain(&reason);
            }
            self.cut_window()?;
        } else if self.pending.is_none() && self.last_seal.elapsed() >= self.opts.interval * 5 {
            // Idle: still move the pin now and then so the application's checkpoints can
            // backfill and the WAL can restart.
            self.last_seal = Instant::now();
            self.cut_window()?;
        }
        Ok(())
    }

    /// This capture's heartbeat in `state` ("running", "stopped", "failing"); see
    /// [`super::heartbeat`].
    pub fn heartbeat(&self, state: &str) -> super::heartbeat::Heartbeat {
        super::heartbeat::Heartbeat {
            state: state.into(),
            pid: std::process::id(),
            host: crate::sys::hostname(),
            db: self.src.path.display().to_string(),
            at_us: now_us(),
            started_us: self.started_us,
            chain_id: self.cur.chain_id.clone(),
            last_txn: self.stats.last_txn.max(self.stats.sealed_txn),
            sealed_txn: self.stats.sealed_txn,
            last_seal_us: self.stats.last_seal_us,
            oldest_unsealed_us: self.pending.as_ref().map_or(0, |p| p.header.first_time_us),
            stuck_since_us: self.stuck.as_ref().map_or(0, |s| {
                now_us() - i64::try_from(s.2.elapsed().as_micros()).unwrap_or(i64::MAX / 2)
            }),
            bundles: self.stats.bundles,
            txns: self.stats.txns,
            bundle_bytes: self.stats.bundle_bytes,
            barrier_max_us: self.stats.barrier_max_us,
            last_error: String::new(),
            last_error_us: 0,
            errors: 0,
        }
    }

    /// Write the heartbeat file (at most about once a second unless `force`).
    pub fn write_heartbeat(&mut self, state: &str, force: bool) {
        if force || self.hb_at.elapsed() >= Duration::from_secs(1) {
            self.hb_at = Instant::now();
            super::heartbeat::write(self.set.dir(), &self.heartbeat(state));
        }
    }

    /// Capture everything committed now, seal it, and move the pin (for `--once` and shutdown).
    ///
    /// # Errors
    /// As [`Self::step`].
    pub fn flush(&mut self) -> Result<()> {
        match self.capture_new()? {
            Ok(()) => {}
            Err(Gap(reason)) => return self.new_chain(&reason),
        }
        self.seal()?;
        self.cut_window()
    }

    /// Read frames committed since the cursor into the pending bundle.
    fn capture_new(&mut self) -> Result<std::result::Result<(), Gap>> {
        match file_id(&self.src.path) {
            Ok(id) if id == self.db_id => {}
            Ok(_) => return Ok(Err(Gap("the database file was replaced".into()))),
            Err(e) => return Err(Error::io(&self.src.path, "checking the database file", e)),
        }
        let Some(wal) = self.open_wal()? else {
            return Ok(Ok(()));
        };
        let Some(hdr) = WalHeader::read(&wal).ctx(self.src.wal_path(), "reading WAL header")?
        else {
            return Ok(Ok(())); // empty or being reset: nothing committed in it yet
        };
        if hdr.salts != self.cur.salts {
            // A new WAL cycle. Without a gap only if R was pinned with the WAL fully backfilled
            // at exactly our position: then the restart dropped only frames we hold.
            if !(self.pin.full && self.pin.salts == self.cur.salts && self.pin.mx == self.cur.frame)
            {
                return Ok(Err(Gap(format!(
                    "the WAL restarted (salts {:08x}/{:08x} -> {:08x}/{:08x}) at a moment walbundle \
                     cannot prove it held every frame (captured through frame {}; read mark at \
                     frame {}{})",
                    self.cur.salts.0,
                    self.cur.salts.1,
                    hdr.salts.0,
                    hdr.salts.1,
                    self.cur.frame,
                    self.pin.mx,
                    if self.pin.full {
                        ", WAL fully backfilled"
                    } else {
                        ""
                    }
                ))));
            }
            if hdr.page_size != self.cur.page_size {
                return Ok(Err(Gap(format!(
                    "page size changed from {} to {}",
                    self.cur.page_size, hdr.page_size
                ))));
            }
            self.seal()?;
            self.cur.salts = hdr.salts;
            self.cur.frame = 0;
            self.cur.cksum = hdr.checksum;
            // At most one restart can happen while R is held: any further one is a gap.
            self.pin = Pin {
                salts: hdr.salts,
                mx: 0,
                full: false,
            };
            self.stats.wal_restarts_followed += 1;
            self.events.push(Event::WalRestarted { salts: hdr.salts });
        }
        self.wal_hdr = Some(hdr);
        let Some(shm) = self.read_shm()? else {
            debug(|| "capture: wal-index unreadable".into());
            return Ok(Ok(()));
        };
        if shm.salts != hdr.salts || shm.mx_frame <= self.cur.frame {
            if shm.salts != hdr.salts {
                debug(|| {
                    format!(
                        "capture: shm salts {:08x} != WAL header {:08x}",
                        shm.salts.0, hdr.salts.0
                    )
                });
            }
            return Ok(Ok(()));
        }
        let res = self.scan(&wal, &hdr, shm.mx_frame)?;
        if res.is_err() {
            return Ok(res);
        }
        // Never stall silently: committed frames that stay unreadable become a recorded gap.
        if self.cur.frame < shm.mx_frame {
            let since = *self
                .stuck
                .get_or_insert((self.cur.salts, self.cur.frame, Instant::now()));
            if since.0 == self.cur.salts && since.1 == self.cur.frame {
                if since.2.elapsed() > STUCK_LIMIT {
                    self.stuck = None;
                    return Ok(Err(Gap(format!(
                        "committed WAL frame {} stayed unreadable for {} s (the wal-index says \
                         {} frames are committed)",
                        self.cur.frame + 1,
                        STUCK_LIMIT.as_secs(),
                        shm.mx_frame
                    ))));
                }
            } else {
                self.stuck = Some((self.cur.salts, self.cur.frame, Instant::now()));
            }
        } else {
            self.stuck = None;
        }
        Ok(Ok(()))
    }

    /// Scan frames (cursor, bound], all committed, emitting each transaction at its commit frame.
    fn scan(
        &mut self,
        wal: &File,
        hdr: &WalHeader,
        bound: u32,
    ) -> Result<std::result::Result<(), Gap>> {
        let ps = hdr.page_size as usize;
        let wp = self.src.wal_path();
        let mut buf = vec![0u8; ps + FRAME_HEADER_LEN as usize];
        let mut cksum = self.cur.cksum;
        // The open transaction's pages: frame index and, within a memory budget, the bytes
        // already read for the checksum (so each frame is read once, not twice).
        let mut txn_pages: HashMap<u32, (u32, Option<Vec<u8>>)> = HashMap::new();
        let mut kept: usize = 0;
        let mut i = self.cur.frame + 1;
        while i <= bound {
            let n = pread_full(wal, &mut buf, hdr.frame_offset(i)).ctx(&wp, "reading WAL frame")?;
            if n < buf.len() {
                debug(|| format!("scan: frame {i} short read {n} (bound {bound})"));
                return Ok(Ok(())); // shorter than the index says: being rewritten; look again later
            }
            let fh = FrameHeader::parse(&buf[..24]);
            if fh.salts == (0, 0) && fh.checksum == (0, 0) && fh.pgno != 0 {
                // A committed frame (it is at or below the wal-index's mxFrame) whose salts and
                // checksum SQLite left zeroed: writers that overwrite a frame in place defer
                // checksums to commit (`iReCksum`), and SQLite 3.40 can leave a stale
                // `iReCksum` after a rolled-back transaction, so the commit-time rewrite starts
                // one frame late and seeds the chain from this header's zeros. The wal-index
                // is the authority on what is committed; the frames after this one must verify
                // from a (0, 0) seed, which still catches any real damage.
                debug(|| {
                    format!(
                        "scan: frame {i} has a zeroed header (bound {bound}); continuing from a zero seed"
                    )
                });
                self.stats.zeroed_frames += 1;
                cksum = (0, 0);
                txn_pages.insert(fh.pgno, (i, None));
                if fh.commit_size != 0 {
                    self.emit_txn(wal, hdr, &mut txn_pages, i, fh.commit_size, cksum)?;
                    txn_pages.clear();
                    kept = 0;
                }
                i += 1;
                continue;
            }
            if fh.salts != hdr.salts {
                debug(|| {
                    format!(
                        "scan: frame {i} salts {:08x} != header {:08x} (bound {bound})",
                        fh.salts.0, hdr.salts.0
                    )
                });
                return Ok(Ok(())); // the WAL is restarting under us; the next poll sees the new cycle
            }
            let c = wal_checksum(hdr.big_endian_cksum, &buf[..8], cksum);
            let c = wal_checksum(hdr.big_endian_cksum, &buf[24..], c);
            if c != fh.checksum || fh.pgno == 0 {
                return Ok(Err(Gap(format!(
                    "committed WAL frame {i} failed its checksum"
                ))));
            }
            cksum = c;
            let keep = kept + ps <= TXN_KEEP_BYTES;
            if keep {
                kept += ps;
            }
            let content = keep.then(|| buf[FRAME_HEADER_LEN as usize..].to_vec());
            txn_pages.insert(fh.pgno, (i, content));
            if fh.commit_size != 0 {
                self.emit_txn(wal, hdr, &mut txn_pages, i, fh.commit_size, c)?;
                txn_pages.clear();
                kept = 0;
                // Bundles stay bounded however much a single scan finds (a backlog after a
                // burst): seal at this transaction boundary once the bundle is full.
                if !self.in_barrier
                    && self
                        .pending
                        .as_ref()
                        .is_some_and(|p| p.body.raw_len() >= self.opts.max_bundle_bytes)
                {
                    self.seal()?;
                }
            }
            i += 1;
        }
        Ok(Ok(()))
    }

    /// Add one committed transaction (its pages, last version of each) to the pending bundle.
    fn emit_txn(
        &mut self,
        wal: &File,
        hdr: &WalHeader,
        pages: &mut HashMap<u32, (u32, Option<Vec<u8>>)>,
        commit_frame: u32,
        commit_size: u32,
        cksum: (u32, u32),
    ) -> Result<()> {
        let ps = hdr.page_size;
        let wp = self.src.wal_path();
        if self.pending.is_none() {
            let name = wbb::file_name(self.cur.next_seq);
            let (tmp, mut f) = self.set.store().temp_file(&self.cur.chain_id, &name)?;
            std::io::Write::write_all(&mut f, &[0u8; wbb::HEADER_LEN])
                .ctx(&tmp, "writing bundle")?;
            let body = BodyEncoder::to_writer(
                std::io::BufWriter::with_capacity(1 << 20, f),
                ps,
                self.opts.level,
                self.opts.window_log,
            )
            .ctx(&tmp, "starting compression")?;
            let header = BundleHeader {
                set_id: wbb::set_id_bytes(&self.set.record().set_id).unwrap_or([0; 16]),
                chain_id: self.cur.chain_id.clone(),
                seq: self.cur.next_seq,
                prev_sha256: self.cur.prev_digest,
                salts: hdr.salts,
                first_frame: self.cur.frame + 1,
                last_frame: 0,
                end_checksum: (0, 0),
                page_size: ps,
                page_count_before: self.cur.page_count,
                page_count_after: 0,
                txn_count: 0,
                first_txn: self.cur.next_txn,
                state_before: self.cur.state.0,
                state_after: 0,
                first_time_us: 0,
                last_time_us: 0,
                body_len: 0,
                body_raw_len: 0,
            };
            self.pending = Some(Pending {
                body,
                tmp,
                header,
                txns: 0,
                started: Instant::now(),
            });
        }
        let mut order: Vec<(u32, u32, Option<Vec<u8>>)> =
            pages.drain().map(|(p, (f, c))| (p, f, c)).collect();
        order.sort_unstable_by_key(|e| e.0);
        order.retain(|e| e.0 <= commit_size);
        let mut buf = vec![0u8; ps as usize + FRAME_HEADER_LEN as usize];
        let lock = lock_byte_page(ps);
        // Pages beyond the old size that this transaction does not write are zeros.
        let old = self.cur.page_count;
        let zeros = vec![0u8; ps as usize];
        let mut state = self.cur.state;
        if commit_size < old {
            for q in commit_size + 1..=old {
                state.0 ^= self.terms[q as usize - 1];
            }
            self.terms.truncate(commit_size as usize);
        } else {
            for q in old + 1..=commit_size {
                let t = term_or_zero(ps, q, &zeros);
                state.0 ^= t;
                self.terms.push(t);
            }
        }
        let time_us = now_us();
        let meta_state;
        {
            let pend = self
                .pending
                .as_mut()
                .ok_or_else(|| Error::usage("no pending bundle"))?;
            // State first (the record carries the state after the transaction).
            let mut contents: Vec<(u32, Vec<u8>)> = Vec::with_capacity(order.len());
            for (pgno, frame, kept) in order {
                let page: Vec<u8> = if let Some(p) = kept {
                    p
                } else {
                    let n = pread_full(wal, &mut buf, hdr.frame_offset(frame))
                        .ctx(&wp, "reading WAL frame")?;
                    let again = FrameHeader::parse(&buf[..24]);
                    if n < buf.len()
                        || (again.salts != hdr.salts && again.salts != (0, 0))
                        || again.pgno != pgno
                    {
                        return Err(Error::new(
                            ErrorKind::Corrupt,
                            format!("WAL frame {frame} changed while being captured"),
                        )
                        .at(&wp));
                    }
                    buf[FRAME_HEADER_LEN as usize..].to_vec()
                };
                let t = if pgno == lock {
                    0
                } else {
                    crate::bundle::checksum::page_term(pgno, &page)
                };
                let slot = &mut self.terms[pgno as usize - 1];
                state.0 ^= *slot ^ t;
                *slot = t;
                contents.push((pgno, page));
            }
            meta_state = state;
            let meta = TxnMeta {
                time_us,
                page_count: commit_size,
                commit_frame,
                state_after: state.0,
            };
            let n_pages = u32::try_from(contents.len()).unwrap_or(u32::MAX);
            pend.body
                .begin_txn(&meta, n_pages)
                .ctx(&wp, "compressing")?;
            for (pgno, page) in &contents {
                pend.body.page(*pgno, page).ctx(&wp, "compressing")?;
            }
            pend.body.end_txn().ctx(&wp, "compressing")?;
            pend.txns += 1;
            let h = &mut pend.header;
            if h.first_time_us == 0 {
                h.first_time_us = time_us;
            }
            h.last_time_us = time_us;
            h.last_frame = commit_frame;
            h.end_checksum = cksum;
            h.page_count_after = commit_size;
            h.txn_count = pend.txns;
            h.state_after = state.0;
        }
        self.cur.state = meta_state;
        self.cur.page_count = commit_size;
        self.cur.frame = commit_frame;
        self.cur.cksum = cksum;
        self.cur.next_txn += 1;
        self.stats.txns += 1;
        self.stats.last_txn = self.cur.next_txn - 1;
        Ok(())
    }

    /// Publish the pending bundle, if any.
    fn seal(&mut self) -> Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let tmp = p.tmp.clone();
        let res = (|| -> Result<(BundleHeader, [u8; 32], u64)> {
            let (w, raw) = p.body.finish().ctx(&tmp, "compressing")?;
            let mut f = w
                .into_inner()
                .map_err(|e| Error::io(&tmp, "writing bundle", e.into_error()))?;
            let header = p.header;
            let (digest, len) = wbb::finish_file(header.clone(), &mut f, &tmp, raw)?;
            Ok((header, digest, len))
        })();
        let (header, digest, len) = match res {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let seq = header.seq;
        let (first, last) = (header.first_txn, header.last_txn());
        let frames = (header.first_frame, header.last_frame);
        let key = format!("{}/{}", self.cur.chain_id, wbb::file_name(seq));
        self.set.store().publish_temp(&tmp, &key)?;
        let bytes_len = len;
        self.cur.next_seq = seq + 1;
        self.cur.prev_digest = digest;
        self.last_seal = Instant::now();
        self.stats.sealed_txn = last;
        self.stats.last_seal_us = now_us();
        self.stats.bundles += 1;
        self.stats.bundle_bytes += bytes_len;
        self.events.push(Event::Bundle {
            chain_id: self.cur.chain_id.clone(),
            seq,
            txns: (first, last),
            bytes: bytes_len,
            frames,
        });
        Ok(())
    }

    /// Move R's pin to the newest committed frame under a short write barrier. When the WAL has
    /// grown past the limit, do it in three steps so that little work happens while writers
    /// wait: move the pin (short barrier), backfill up to it with no barrier held, then a second
    /// short barrier that captures and checkpoints only the frames committed since, and pins R
    /// on the fully backfilled WAL, so the next writer restarts the WAL from its beginning.
    fn cut_window(&mut self) -> Result<()> {
        // The WAL's live size is its committed frames, not the file's length: SQLite reuses
        // the file after a restart, so the file only ever shrinks by `journal_size_limit`.
        let shm = self.read_shm()?;
        let frame_bytes = u64::from(self.cur.page_size) + FRAME_HEADER_LEN;
        let live = shm.map_or(0, |h| u64::from(h.mx_frame) * frame_bytes);
        if live <= self.opts.max_wal_bytes {
            return self.repin(false);
        }
        self.repin(false)?;
        if let Some(h) = self.read_shm()?
            && h.n_backfill < h.mx_frame
        {
            // Backfill up to R's new mark with no barrier held (writers unaffected).
            let _ = self
                .c
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
        if let Err(Gap(reason)) = self.capture_new()? {
            return self.new_chain(&reason);
        }
        self.repin(true)
    }

    /// One write barrier: capture the last frames, end R, optionally checkpoint (PASSIVE, C),
    /// begin R again, release. Skipped (retried next poll) if the application holds the write
    /// lock longer than `barrier_timeout`.
    fn repin(&mut self, checkpoint: bool) -> Result<()> {
        let p = self.src.path.clone();
        // Never make writers wait while capture catches up: with a backlog, keep the old pin
        // (the WAL grows meanwhile) and try again once capture is nearly level.
        if let Some(h) = self.read_shm()?
            && h.salts == self.cur.salts
            && h.mx_frame.saturating_sub(self.cur.frame) > MAX_BARRIER_FRAMES
        {
            debug(|| {
                format!(
                    "repin skipped: {} frames behind",
                    h.mx_frame - self.cur.frame
                )
            });
            return Ok(());
        }
        self.w
            .busy_timeout(self.opts.barrier_timeout)
            .sql_ctx(&p, "setting busy timeout")?;
        match self.w.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) =>
            {
                // The application holds the write lock: try at the next poll. If it has held
                // it for a while with nothing committed, it is most likely its own FULL,
                // RESTART or TRUNCATE checkpoint waiting for our read mark (and blocking its
                // writers meanwhile): move the mark without the barrier so it can finish.
                let since = *self.barrier_busy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= YIELD_AFTER {
                    self.barrier_busy_since = None;
                    return self.yield_pin();
                }
                return Ok(());
            }
            Err(e) => return Err(Error::sqlite(&p, "taking the write barrier", e)),
        }
        self.barrier_busy_since = None;
        let t0 = Instant::now();
        self.in_barrier = true;
        let res = (|| -> Result<std::result::Result<(), Gap>> {
            let g = self.capture_new()?;
            if g.is_err() {
                return Ok(g);
            }
            // R's new mark is what it sees when it begins under the barrier: the whole WAL.
            self.move_pin(checkpoint, "under the barrier")?;
            Ok(Ok(()))
        })();
        let rb = self.w.execute_batch("ROLLBACK");
        self.in_barrier = false;
        self.note_barrier(t0.elapsed());
        rb.sql_ctx(&p, "releasing the write barrier")?;
        match res? {
            Ok(()) => Ok(()),
            Err(Gap(reason)) => self.new_chain(&reason),
        }
    }
}

/// How long the write barrier may stay unavailable before capture moves its read mark without
/// it (see [`Capturer::yield_pin`]).
const YIELD_AFTER: Duration = Duration::from_millis(500);

impl Capturer {
    /// Move R's read mark to the newest commit without the write barrier, while another
    /// connection holds the write lock and nothing is being committed — the signature of the
    /// application's own FULL/RESTART/TRUNCATE checkpoint waiting for readers. Capture reads
    /// everything committed first; if a commit lands meanwhile, it gives up until next time.
    /// Without the barrier the new mark is not guaranteed to be exactly at our cursor; if the
    /// WAL then restarts, `capture_new` proves continuity or records a gap (never a silent loss).
    fn yield_pin(&mut self) -> Result<()> {
        let before = self.read_shm()?.map(|h| (h.salts, h.mx_frame));
        if let Err(Gap(reason)) = self.capture_new()? {
            return self.new_chain(&reason);
        }
        let now = self.read_shm()?.map(|h| (h.salts, h.mx_frame));
        if before.is_none() || before != now || now.is_some_and(|(_, mx)| mx != self.cur.frame) {
            return Ok(()); // commits are happening: a writer, not a checkpoint, holds the lock
        }
        self.move_pin(false, "yielded to a checkpoint")
    }

    /// End R's read transaction (with `checkpoint`, run a PASSIVE checkpoint while no mark is
    /// held), begin a new one at the newest commit, and record where it is pinned.
    fn move_pin(&mut self, checkpoint: bool, why: &str) -> Result<()> {
        let p = self.src.path.clone();
        self.r
            .execute_batch("COMMIT")
            .sql_ctx(&p, "ending read transaction")?;
        if checkpoint {
            let _ = self
                .c
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
        self.r
            .execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
            .sql_ctx(&p, "starting read transaction")?;
        if let Some(h) = self.read_shm()? {
            debug(|| {
                format!(
                    "pin ({why}): cur salts {:08x} frame {} | shm salts {:08x} mx {} backfill {} | checkpoint {checkpoint}",
                    self.cur.salts.0, self.cur.frame, h.salts.0, h.mx_frame, h.n_backfill
                )
            });
            self.pin = Pin {
                salts: h.salts,
                mx: h.mx_frame,
                full: h.mx_frame == h.n_backfill,
            };
        }
        Ok(())
    }
}

/// Every page's state-checksum term through `r`'s current read transaction, and their XOR.
fn read_terms(
    r: &Connection,
    p: &std::path::Path,
    page_size: u32,
) -> Result<(Vec<u64>, StateChecksum)> {
    let page_count: u32 = r
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .sql_ctx(p, "reading page count")?;
    let mut terms = Vec::with_capacity(page_count as usize);
    let mut state = StateChecksum::default();
    super::source::each_page(r, p, page_size, page_count, |pgno, page| {
        let t = term_or_zero(page_size, pgno, page);
        state.0 ^= t;
        terms.push(t);
        Ok(())
    })?;
    Ok((terms, state))
}

/// Capture `src` into `set` until SIGTERM/SIGINT (or once, with `once`), calling `on_event`
/// for every event. Installs the signal handlers.
///
/// # Errors
/// Start-up failures; persistent failures during the run.
pub fn run(
    src: SourceDb,
    set: BackupSet,
    opts: CaptureOptions,
    once: bool,
    mut on_event: impl FnMut(&Event, &CaptureStats),
) -> Result<CaptureStats> {
    crate::sys::install_stop_signals();
    let poll = opts.poll;
    let set_dir = set.dir().to_path_buf();
    let db = src.path.display().to_string();
    let mut cap =
        Capturer::start(src, set, opts).inspect_err(|e| failing(&set_dir, &db, None, e))?;
    for e in cap.take_events() {
        on_event(&e, &cap.stats);
    }
    let mut body = || -> Result<()> {
        if !once {
            while !crate::sys::STOP.load(Ordering::SeqCst) {
                cap.step()?;
                cap.write_heartbeat("running", false);
                for e in cap.take_events() {
                    on_event(&e, &cap.stats);
                }
                std::thread::sleep(poll);
            }
        }
        cap.flush()
    };
    let res = body();
    match &res {
        Ok(()) => cap.write_heartbeat("stopped", true),
        Err(e) => failing(&set_dir, &db, Some(&cap), e),
    }
    for e in cap.take_events() {
        on_event(&e, &cap.stats);
    }
    res.map(|()| cap.stats.clone())
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

/// Capture several databases in one process on at most `threads` threads until SIGTERM/SIGINT
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
    on_event: &(dyn Fn(&str, &Event, &CaptureStats) + Sync),
    on_error: &(dyn Fn(&str, &Error) + Sync),
) -> Result<Vec<(String, CaptureStats)>> {
    crate::sys::install_stop_signals();
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
                    let stopping = crate::sys::STOP.load(Ordering::SeqCst);
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
    on_error: &(dyn Fn(&str, &Error) + Sync),
) {
    if slot.cap.is_none() {
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
                on_error(&slot.name, &e);
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
        failing(cap.set.dir(), &slot.name, Some(cap), &e);
        on_error(&slot.name, &e);
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
