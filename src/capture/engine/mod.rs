//! Continuous capture: committed WAL frames into chained bundles, in checkpoint-controlled
//! windows, never losing a frame silently — and never taking the source's write lock.
//!
//! Two reader connections, both `query_only`, neither checkpointing on close:
//! - one of them always holds a read transaction (the **pin**): its read mark stops any other
//!   connection from restarting the WAL over frames walbundle has not captured yet;
//! - the pin moves forward by **leapfrogging**: the idle reader begins a new read transaction,
//!   pinned at a position proven without any lock ([`super::pin`]), capture catches up while the
//!   old pin still protects the WAL, and only then does the old reader end its transaction. At
//!   no instant is the WAL unprotected;
//! - the idle reader runs walbundle's own PASSIVE checkpoints (never RESTART/TRUNCATE, which
//!   take the write lock), only when the WAL has grown past `max_wal_bytes` (past four times
//!   that while its cycle is younger than `min_wal_cycle`: `window.rs`, `wal_bound`).
//!
//! The pin never stands in the application's way for long: every poll it moves to the newest
//! commit (so the application's checkpoints can backfill everything), and once every committed
//! frame is captured and backfilled it moves onto the fully backfilled WAL (slot 0), which lets
//! the WAL restart once. When another process holds both the checkpoint and the write lock —
//! the application's own FULL, RESTART or TRUNCATE checkpoint, waiting for readers — capture
//! does both at once in a tight loop (`window.rs`, `step_aside`) and then follows the
//! restart.
//!
//! Frames are read with `pread` up to the wal-index's `mxFrame` (the committed frontier; nothing
//! beyond it is ever read), each checked against the running WAL checksum and the cycle's salts
//! (salts first: a frame that SQLite's own recovery would reject is never emitted). A
//! transaction is emitted once its commit frame is seen, with its last version of every page.
//!
//! The state checksum after every transaction is kept from one 64-bit term per page (8 bytes a
//! page), so no old page is ever read back. The terms come from the chain's snapshot, or on
//! resume from a full read through the pin whose XOR must equal the chain's recorded state.
//!
//! Continuity is proven or a new chain starts, with the reason recorded: WAL salts changing when
//! the pin could not have allowed it, a captured frame changing, the database, WAL or wal-index
//! file being replaced, the page size changing, the database leaving WAL mode, or (on resume)
//! the WAL no longer holding the last captured frame unchanged.
//!
//! Files: this one holds the options, statistics, events and the poll step; `window.rs` the pin
//! and window protocol, `read.rs` WAL reading and transaction assembly, `seal.rs` bundle
//! writing, `resume.rs` resuming and starting chains; [`super::supervisor`] runs one or many
//! capturers.

use std::collections::HashMap;
use std::fs::File;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;
use serde::Serialize;

use super::pin::{Pin, Shm, begin_pinned, begin_read, end_read, unpinnable};
use super::snapshot::{Conns, SnapshotOptions, snapshot_with};
use crate::bundle::checksum::{StateChecksum, lock_byte_page, term_or_zero};
use crate::bundle::wbb::{self, BodyEncoder, BundleHeader, TxnMeta};
use crate::chain::BackupSet;
use crate::error::{Error, ErrorKind, IoContext, Result, SqlContext};
use crate::progress::NoProgress;
use crate::sqlite::source::SourceDb;
use crate::sqlite::wal::{FRAME_HEADER_LEN, FrameHeader, ShmHeader, WalHeader, wal_checksum};
use crate::sys::{file_id, pread_full};

mod describe;
mod read;
mod resume;
mod seal;
mod spool;
mod window;

use seal::Pending;

/// How capture behaves.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// The longest a committed transaction waits before it is sealed into a bundle.
    pub interval: Duration,
    /// Look for new frames (and for the application's checkpoints waiting on us) this often.
    pub poll: Duration,
    /// When the WAL's committed frames pass this, walbundle helps it restart: PASSIVE
    /// checkpoints of its own and a read mark on the fully backfilled WAL (default 4 MiB, about
    /// SQLite's own autocheckpoint threshold of 1,000 pages).
    pub max_wal_bytes: u64,
    /// A WAL cycle younger than this is let grow to [`WAL_CAP_FACTOR`] times `max_wal_bytes`
    /// before capture works to restart it (default 5 s): each restart costs capture a sync of
    /// the WAL and of the database, so under fast writes it restarts the WAL about this often
    /// instead of at every `max_wal_bytes`, while a slow writer's WAL stays at `max_wal_bytes`.
    pub min_wal_cycle: Duration,
    /// Seal a bundle early once its uncompressed body reaches this.
    pub max_bundle_bytes: u64,
    /// zstd level for bundle bodies.
    pub level: i32,
    /// zstd window for bundle bodies, as a power of two (0: the level's default).
    pub window_log: u32,
    /// Compress each bundle against the previous versions of the pages it rewrites (bundle
    /// format version 2; off: every bundle is version 1, as walbundle 0.1 wrote them).
    pub reference_pages: bool,
    /// Options for the full snapshots that start chains.
    pub snapshot: SnapshotOptions,
}

/// How far past `max_wal_bytes` a WAL cycle younger than `min_wal_cycle` may grow before
/// capture works to restart it anyway (16 MiB at the defaults).
pub const WAL_CAP_FACTOR: u64 = 4;

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            poll: Duration::from_millis(100),
            max_wal_bytes: 4 << 20,
            min_wal_cycle: Duration::from_secs(5),
            max_bundle_bytes: 8 << 20,
            level: 1,
            window_log: 24,
            reference_pages: true,
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
    /// Requests sent to the set's store this run, by kind (PUT, GET, LIST, HEAD, DELETE).
    #[serde(default)]
    pub requests: crate::store::Requests,
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
    /// Committed-looking frames refused because their header was zeroed (each led to a new
    /// chain from a snapshot instead of being trusted).
    pub zeroed_frames: u64,
    /// Times the pin moved forward (leapfrog between the two readers).
    pub pin_moves: u64,
    /// Reference pages taken for bundles (previous versions the body is compressed against).
    pub reference_pages: u64,
    /// PASSIVE checkpoints walbundle ran itself (the WAL had grown past `max_wal_bytes`).
    pub checkpoints: u64,
    /// Times another process's FULL/RESTART/TRUNCATE checkpoint was seen and capture stepped
    /// out of its way.
    pub step_asides: u64,
    /// Longest of those, µs: how long capture took to get out of the way (the application's
    /// checkpoint then completes on its own).
    pub step_aside_max_us: u64,
    /// Longest of walbundle's own PASSIVE checkpoints, µs (it holds SQLite's checkpointer lock
    /// meanwhile; an application checkpoint that finds it held returns at once).
    pub checkpoint_max_us: u64,
    /// Longest seal of a bundle, µs: finishing compression, writing, fsync and publication.
    pub seal_max_us: u64,
    /// Longest poll step, µs: reading new frames, sealing, and moving the read mark.
    pub step_max_us: u64,
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
    /// Something the user should know that did not stop capture.
    Warning {
        /// What happened and what to do.
        message: String,
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
    /// Last captured frame of the cycle `salts`; 0: the cycle's first frame comes next, its
    /// checksum seeded from the WAL header as the writer writes it.
    frame: u32,
    cksum: (u32, u32),
}

impl Cursor {
    /// The end of a chain that holds only its generation `m` (at WAL position `wal`): bundle 1
    /// links to the generation's image.
    fn at_generation(
        m: &crate::bundle::manifest::GenerationManifest,
        wal: &crate::bundle::manifest::WalPosition,
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

fn pin_of(wal: &crate::bundle::manifest::WalPosition) -> Pin {
    Pin {
        salts: (wal.salt1, wal.salt2),
        mx: wal.frame,
        cksum: (wal.checksum1, wal.checksum2),
        backfilled: wal.backfilled,
        full: wal.frame == wal.backfilled,
    }
}

/// One captured database.
pub struct Capturer {
    src: SourceDb,
    set: BackupSet,
    opts: CaptureOptions,
    /// The two readers; `readers[active]` holds the pin. Declared before `shm` so that they
    /// close before the wal-index descriptor does (see [`Shm`]).
    readers: Vec<Connection>,
    active: usize,
    shm: Shm,
    /// Our descriptor on the WAL (no locks are ever taken on it) and the file's identity.
    wal: Option<(File, (u64, u64))>,
    db_id: (u64, u64),
    cur: Cursor,
    pin: Pin,
    /// State-checksum term of every page at the cursor (index pgno-1).
    terms: Vec<u64>,
    /// Page number to the newest frame of the current WAL cycle that capture has read for it
    /// (where a bundle's reference pages are found; at most [`CYCLE_FRAMES_MAX`] entries).
    cycle_frames: HashMap<u32, u32>,
    /// The wal-index header seen by the last `capture_new`.
    last_shm: Option<ShmHeader>,
    pending: Option<Pending>,
    /// Bundles sealed into local files whose publication an unreachable object store refused
    /// so far, oldest first; published in order at every step.
    unpublished: std::collections::VecDeque<seal::Sealed>,
    /// Since when the object store has refused publication (a warning was given).
    store_down_since: Option<Instant>,
    /// Where capture has been unable to move past committed frames, and since when.
    stuck: Option<((u32, u32), u32, Instant)>,
    /// A committed frame whose header was zeroed: seen once at (salts, frame); a second sighting
    /// starts a new chain.
    zeroed: Option<((u32, u32), u32)>,
    last_seal: Instant,
    /// When the pin last moved, and when capture last tried to let a large WAL restart.
    last_move: Instant,
    last_restart_try: Instant,
    /// When capture started following the current WAL cycle (see `min_wal_cycle`).
    cycle_since: Instant,
    /// Tries to let a large WAL restart that failed in a row (they set the wait before the
    /// next one: `window::restart_wait`).
    restart_fails: u32,
    /// Reference bytes of the recent bundles sealed (the largest, fading): the next bundle
    /// keeps room for as much before its body, so sealing does not copy the body behind it.
    last_ref_bytes: usize,
    /// When the files' identity was last checked.
    identity_at: Instant,
    events: Vec<Event>,
    /// When the heartbeat file was last written, what it said (txns, bundles, chains, stuck),
    /// and when this capture started (µs).
    hb_at: Instant,
    hb_mark: (u64, u64, u64, bool),
    started_us: i64,
    /// Running totals.
    pub stats: CaptureStats,
}

pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn debug(msg: impl FnOnce() -> String) {
    if std::env::var_os("WALBUNDLE_DEBUG").is_some() {
        eprintln!("debug: {:.6} {}", now_us() as f64 / 1e6, msg());
    }
}

/// The most reference pages capture gives one bundle (the format allows 16 MiB; with bundles
/// sealed at 8 MiB this covers every page a bundle can rewrite, at a bounded cost in memory).
const CAPTURE_REF_BYTES: u64 = 8 << 20;

/// The most pages [`Capturer`]'s map of the WAL cycle's frames tracks (8 MB of map or so); past
/// it, pages first written later in the cycle get no reference (compression only).
const CYCLE_FRAMES_MAX: usize = 1 << 20;

/// The most bytes of WAL frames one read of [`Capturer`]'s scan takes (its buffer, one per
/// capturing thread).
const SCAN_READ_BYTES: usize = 256 << 10;

/// Per transaction, keep up to this many bytes of page content from the checksum pass instead of
/// reading the frames again when the transaction commits.
const TXN_KEEP_BYTES: usize = 8 << 20;

/// The heartbeat is written about once a second while something changes, and this often when
/// nothing does (`status` allows a heartbeat at least three times this old).
pub const HEARTBEAT_IDLE: Duration = Duration::from_secs(5);

/// The most frames the pin may trail the newest commit by before it moves (SQLite's default
/// auto-checkpoint threshold).
const MARK_LAG_FRAMES: u32 = 1000;

/// How often capture checks the identity of the database, WAL and wal-index files (a `stat` of
/// each name), whether polls find commits or not.
const IDENTITY_EVERY: Duration = Duration::from_secs(1);

/// How long committed frames may stay unreadable before capture gives up on the chain.
const STUCK_LIMIT: Duration = Duration::from_secs(5);

/// The longest capture keeps stepping out of the way of one blocking checkpoint before it goes
/// back to its other databases (the checkpoint itself may take longer: backfilling is its work).
const STEP_ASIDE_LIMIT: Duration = Duration::from_secs(2);

/// Why continuity could not be proven (becomes a new chain's recorded reason). `reopen`: the
/// files themselves changed, so every connection and descriptor must be dropped and reopened.
struct Gap {
    reason: String,
    reopen: bool,
}

impl Gap {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            reopen: false,
        }
    }

    fn replaced(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            reopen: true,
        }
    }
}

type Step = std::result::Result<(), Gap>;

/// A transaction's commit frame: its index, the database size after it (pages), and the
/// running WAL checksum through it.
#[derive(Debug, Clone, Copy)]
struct Commit {
    frame: u32,
    size: u32,
    cksum: (u32, u32),
}

/// Open our two readers on `src` (WAL mode required), each having read once so that it can
/// checkpoint, and the wal-index descriptor — in that order (SQLite creates the wal-index).
fn open_readers(src: &SourceDb, busy: Duration) -> Result<(Vec<Connection>, Shm)> {
    let p = &src.path;
    let mut readers = Vec::with_capacity(2);
    for _ in 0..2 {
        let c = src.connect(busy)?;
        readers.push(c);
    }
    let mode: String = readers[0]
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .sql_ctx(p, "reading journal mode")?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::usage(format!(
            "is in journal mode {mode}; continuous capture reads the WAL and needs WAL mode"
        ))
        .at(p)
        .hint("switch the application to `PRAGMA journal_mode=WAL`, or use `walbundle snapshot` on a schedule"));
    }
    for c in &readers {
        begin_read(c, p)?;
        end_read(c, p)?;
    }
    let shm = Shm::open(&src.shm_path())?;
    Ok((readers, shm))
}

/// Continuous capture needs to see, without taking them, the locks SQLite connections hold on
/// the wal-index (whether a checkpoint runs, whether anyone still has the database open): on
/// Windows those byte-range locks are mandatory and cannot be probed without being taken, and
/// a lock held while the application commits makes that commit wait and then fail with
/// `SQLITE_BUSY` when it has no busy timeout (measured under Wine: `tests/windows.rs`). So
/// capture refuses there, pointing to snapshot mode.
///
/// # Errors
/// `Refused` on Windows.
pub fn refuse_on_windows(db: &std::path::Path) -> Result<()> {
    if cfg!(windows) {
        return Err(Error::refused(
            "continuous capture is not available on Windows: it needs to observe the \
             application's SQLite locks, which Windows only lets a process see by taking them",
        )
        .at(db)
        .hint(
            "back it up with `walbundle snapshot` (and `walbundle schedule install --mode \
             snapshot --every 15m` to repeat it), which is complete and safe on Windows",
        ));
    }
    Ok(())
}

impl Capturer {
    /// Open `src` for capture into `set` (whose writer lock is taken here): resume the newest
    /// chain if the WAL still proves continuity, else start a new chain with the reason.
    ///
    /// # Errors
    /// `Usage` if the database is not in WAL mode; `Busy` if another process writes the set;
    /// anything a snapshot can fail with.
    pub fn start(src: SourceDb, mut set: BackupSet, opts: CaptureOptions) -> Result<Self> {
        refuse_on_windows(&src.path)?;
        set.lock_writer()?;
        set.objects().set_patience(CAPTURE_PATIENCE);
        // Bundles a killed capture was writing are hidden temporaries: remove them.
        // One scan of the set serves start-up (listings skip temporaries, so it stays valid).
        let inv = set.inventory()?;
        set.clean_stale_temps(inv.chains.iter().map(|c| c.id.as_str()))?;
        // No header check with a descriptor of our own here: this process may already hold
        // SQLite connections to the database (closing any descriptor drops their POSIX locks).
        // Callers check the header before any connection exists; SQLite refuses a non-database.
        let db_id = file_id(&src.path).ctx(&src.path, "reading file identity")?;
        let (readers, shm) = open_readers(&src, opts.snapshot.busy_timeout)?;
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
            readers,
            active: 0,
            shm,
            wal: None,
            db_id,
            cur: empty_cursor,
            pin: Pin {
                salts: (0, 0),
                mx: 0,
                cksum: (0, 0),
                backfilled: 0,
                full: false,
            },
            terms: Vec::new(),
            cycle_frames: HashMap::new(),
            last_shm: None,
            pending: None,
            unpublished: std::collections::VecDeque::new(),
            store_down_since: None,
            stuck: None,
            zeroed: None,
            last_seal: Instant::now(),
            last_move: Instant::now(),
            last_restart_try: Instant::now(),
            cycle_since: Instant::now(),
            restart_fails: 0,
            last_ref_bytes: 0,
            identity_at: Instant::now(),
            events: Vec::new(),
            stats: CaptureStats::default(),
            hb_at: Instant::now(),
            hb_mark: (u64::MAX, 0, 0, false),
            started_us: now_us(),
        };
        // Bundles an earlier capture sealed while the store could not be reached: published
        // first, so the chain's end below is where history really ends.
        let inv = if me.drain_spool(&inv)? {
            me.set.inventory()?
        } else {
            inv
        };
        match me.resume(&inv)? {
            Ok(()) => {}
            Err(gap) => me.new_chain(gap)?,
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

    fn r(&self) -> &Connection {
        &self.readers[self.active]
    }

    /// One round: capture new committed frames, seal when due, keep the pin out of the
    /// application's way, restart the chain on a gap. Call every `opts.poll`.
    ///
    /// # Errors
    /// Destination and SQLite failures (the caller logs them and retries or exits).
    pub fn step(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let res = self.step_inner();
        let took = us(t0.elapsed());
        self.stats.step_max_us = self.stats.step_max_us.max(took);
        if took > 20_000 {
            debug(|| format!("slow step: {took} us"));
        }
        res
    }

    fn step_inner(&mut self) -> Result<()> {
        self.publish_sealed()?;
        if let Err(g) = self.capture_new()? {
            return self.new_chain(g);
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
            if let Err(g) = self.capture_new()? {
                return self.new_chain(g);
            }
        }
        self.tend_pin()
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
            unpublished: self.unpublished.len() as u64,
            oldest_unpublished_us: self.unpublished.front().map_or(0, |s| s.first_time_us),
            stuck_since_us: self.stuck.as_ref().map_or(0, |s| {
                now_us() - i64::try_from(s.2.elapsed().as_micros()).unwrap_or(i64::MAX / 2)
            }),
            bundles: self.stats.bundles,
            txns: self.stats.txns,
            bundle_bytes: self.stats.bundle_bytes,
            step_aside_max_us: self.stats.step_aside_max_us,
            last_error: String::new(),
            last_error_us: 0,
            errors: 0,
            requests: self.set.objects().requests(),
        }
    }

    /// Write the heartbeat file (at most about once a second unless `force`).
    pub fn write_heartbeat(&mut self, state: &str, force: bool) {
        let mark = (
            self.stats.txns,
            self.stats.bundles,
            self.stats.chains_started,
            self.stuck.is_some(),
        );
        let changed = mark != self.hb_mark;
        let age = self.hb_at.elapsed();
        if force || (changed && age >= Duration::from_secs(1)) || age >= HEARTBEAT_IDLE {
            self.hb_at = Instant::now();
            self.hb_mark = mark;
            super::heartbeat::write(self.set.dir(), &self.heartbeat(state));
        }
    }

    /// Capture everything committed now and seal it (for `--once` and shutdown). Nothing is
    /// captured after the seal, so nothing captured is left unsealed.
    ///
    /// # Errors
    /// As [`Self::step`].
    pub fn flush(&mut self) -> Result<()> {
        self.last_shm = None; // a full look, never the idle fast path
        if let Err(g) = self.capture_new()? {
            return self.new_chain(g);
        }
        self.seal()?;
        // Stopping: the store gets its full patience for what still waits.
        self.set.objects().set_patience(0);
        self.publish_sealed()?;
        self.set.objects().set_patience(CAPTURE_PATIENCE);
        self.stats.requests = self.set.objects().requests();
        if let Some(s) = self.unpublished.front() {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "{} sealed bundle(s) from txn {} on could not be published: the store does \
                     not answer; they wait on this machine in {}",
                    self.unpublished.len(),
                    s.txns.0,
                    s.tmp.parent().unwrap_or(&s.tmp).display()
                ),
            )
            .at(self.set.objects().location(&s.key))
            .hint(
                "start capture again once the store answers: it publishes them before anything \
                 else (until then, restores cannot reach those transactions)",
            ));
        }
        Ok(())
    }
}

/// Tries per request to an object store in the capture loop (the loop itself retries at every
/// poll, so a store that does not answer never stalls reading commits).
const CAPTURE_PATIENCE: u32 = 2;
