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
//!   take the write lock), only when the WAL has grown past `max_wal_bytes`.
//!
//! The pin never stands in the application's way for long: every poll it moves to the newest
//! commit (so the application's checkpoints can backfill everything), and once every committed
//! frame is captured and backfilled it moves onto the fully backfilled WAL (slot 0), which lets
//! the WAL restart once. When another process holds both the checkpoint and the write lock —
//! the application's own FULL, RESTART or TRUNCATE checkpoint, waiting for readers — capture
//! does both at once in a tight loop (see [`Capturer::step_aside`]) and then follows the
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

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::Ordering;
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
    /// Seal a bundle early once its uncompressed body reaches this.
    pub max_bundle_bytes: u64,
    /// zstd level for bundle bodies.
    pub level: i32,
    /// zstd window for bundle bodies, as a power of two (0: the level's default).
    pub window_log: u32,
    /// Options for the full snapshots that start chains.
    pub snapshot: SnapshotOptions,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            poll: Duration::from_millis(100),
            max_wal_bytes: 4 << 20,
            max_bundle_bytes: 64 << 20,
            level: 3,
            window_log: 24,
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
    /// Committed-looking frames refused because their header was zeroed (each led to a new
    /// chain from a snapshot instead of being trusted).
    pub zeroed_frames: u64,
    /// Times the pin moved forward (leapfrog between the two readers).
    pub pin_moves: u64,
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
    /// The wal-index header seen by the last `capture_new`.
    last_shm: Option<ShmHeader>,
    pending: Option<Pending>,
    /// Where capture has been unable to move past committed frames, and since when.
    stuck: Option<((u32, u32), u32, Instant)>,
    /// A committed frame whose header was zeroed: seen once at (salts, frame); a second sighting
    /// starts a new chain.
    zeroed: Option<((u32, u32), u32)>,
    last_seal: Instant,
    /// When the pin last moved, and when capture last tried to let a large WAL restart.
    last_move: Instant,
    last_restart_try: Instant,
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
        eprintln!("debug: {:.6} {}", now_us() as f64 / 1e6, msg());
    }
}

/// Per transaction, keep up to this many bytes of page content from the checksum pass instead of
/// reading the frames again when the transaction commits.
const TXN_KEEP_BYTES: usize = 8 << 20;

/// The heartbeat is written about once a second while something changes, and this often when
/// nothing does (`status` allows a heartbeat at least three times this old).
pub const HEARTBEAT_IDLE: Duration = Duration::from_secs(5);

/// The most frames the pin may trail the newest commit by before it moves (SQLite's default
/// auto-checkpoint threshold).
const MARK_LAG_FRAMES: u32 = 1000;

/// How often an idle poll (the wal-index header unchanged) still checks the files' identity.
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
            last_shm: None,
            pending: None,
            stuck: None,
            zeroed: None,
            last_seal: Instant::now(),
            last_move: Instant::now(),
            last_restart_try: Instant::now(),
            identity_at: Instant::now(),
            events: Vec::new(),
            stats: CaptureStats::default(),
            hb_at: Instant::now(),
            hb_mark: (u64::MAX, 0, 0, false),
            started_us: now_us(),
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
    fn resume(&mut self, inv: &crate::chain::Inventory) -> Result<Step> {
        let Some(cur) = Self::chain_end(inv)? else {
            return Ok(Err(Gap::new("first capture of this database")));
        };
        if inv.max_txn() >= cur.next_txn {
            return Ok(Err(Gap::new(
                "the set's newest point is not the end of a capturable chain",
            )));
        }
        let p = self.src.path.clone();
        let Some(pin) = begin_pinned(self.r(), &self.shm, &p)? else {
            return Err(unpinnable(&p));
        };
        self.pin = pin;
        if let Err(g) = self.check_resume(&cur)? {
            end_read(self.r(), &p)?;
            return Ok(Err(g));
        }
        // Prove the state: every page's term through the pin (exactly at the cursor).
        let (terms, state) = read_terms(self.r(), &p, cur.page_size)?;
        if state != cur.state || terms.len() != cur.page_count as usize {
            end_read(self.r(), &p)?;
            return Ok(Err(Gap::new(format!(
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

    /// With the pin just taken: is it exactly at the cursor, and does the WAL still hold the
    /// cursor's frame unchanged?
    fn check_resume(&mut self, cur: &Cursor) -> Result<Step> {
        let p = self.src.path.clone();
        let page_size: u32 = self
            .r()
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .sql_ctx(&p, "reading page size")?;
        if page_size != cur.page_size {
            return Ok(Err(Gap::new(format!(
                "page size changed from {} to {page_size}",
                cur.page_size
            ))));
        }
        let wp = self.src.wal_path();
        let pin = self.pin;
        let wal = self.open_wal()?;
        let hdr = match wal {
            Some(f) => WalHeader::read(f).ctx(&wp, "reading WAL header")?,
            None => None,
        };
        if pin.mx == 0 && cur.frame == 0 && hdr.is_none_or(|x| x.salts == cur.salts) {
            return Ok(Ok(()));
        }
        let Some(hdr) = hdr else {
            return Ok(Err(Gap::new(
                "the WAL was reset since the last captured frame",
            )));
        };
        if hdr.salts != cur.salts || pin.salts != cur.salts {
            return Ok(Err(Gap::new(
                "the WAL restarted since the last capture (the application checkpointed while \
                 walbundle was not running)",
            )));
        }
        if hdr.page_size != cur.page_size {
            return Ok(Err(Gap::new(format!(
                "page size changed from {} to {}",
                cur.page_size, hdr.page_size
            ))));
        }
        if cur.frame > 0 {
            let f = wal.map(|f| FrameHeader::read(f, &hdr, cur.frame));
            let ok = matches!(f, Some(Ok(Some(fh))) if fh.salts == cur.salts && fh.checksum == cur.cksum);
            if !ok {
                return Ok(Err(Gap::new(format!(
                    "the WAL no longer holds the last captured frame {} unchanged (the source lost \
                     or rewrote frames, e.g. after power loss with synchronous=NORMAL)",
                    cur.frame
                ))));
            }
        }
        if pin.mx != cur.frame {
            return Ok(Err(Gap::new(format!(
                "{} frames were committed while walbundle was not running; their before-state \
                 cannot be proven",
                pin.mx.saturating_sub(cur.frame)
            ))));
        }
        Ok(Ok(()))
    }

    /// Seal what is pending (it holds only verified, committed transactions), then start a new
    /// chain from a full snapshot taken through the pin, so the chain continues from exactly
    /// there. With `gap.reopen`, every connection and descriptor is dropped and reopened first,
    /// so the snapshot reads the file now at the path, never a replaced one.
    fn new_chain(&mut self, gap: Gap) -> Result<()> {
        self.seal()?;
        let p = self.src.path.clone();
        if gap.reopen {
            self.reopen()?;
        }
        for c in &self.readers {
            end_read(c, &p)?;
        }
        let mut opts = self.opts.snapshot.clone();
        opts.reason.clone_from(&gap.reason);
        let mut terms = Vec::new();
        let rep = snapshot_with(
            &self.set,
            &self.src,
            &opts,
            &NoProgress,
            Conns {
                r: &self.readers[self.active],
                shm: Some(&self.shm),
                keep_pin: true,
                terms: Some(&mut terms),
            },
        )?;
        let m = &rep.manifest;
        let Some(wal) = m.wal else {
            return Err(Error::usage("left WAL mode during the snapshot").at(&self.src.path));
        };
        self.terms = terms;
        self.cur = Cursor::at_generation(m, &wal);
        self.pin = pin_of(&wal);
        // If the WAL restarted since the pin (only possible when it was fully backfilled),
        // `capture_new` follows that restart; any other change is a gap it records.
        self.stats.chains_started += 1;
        self.stats.chain_id = m.chain_id.clone();
        self.stats.last_txn = m.txn;
        self.stats.sealed_txn = m.txn;
        self.events.push(Event::ChainStarted {
            chain_id: m.chain_id.clone(),
            reason: gap.reason.clone(),
            txn: m.txn,
        });
        Ok(())
    }

    /// The files changed identity: close everything on the old ones, then open the new ones.
    ///
    /// When the database was replaced, our connections are what kept the old `-wal` and `-shm`
    /// at their paths (the application's own last close would have checkpointed and deleted
    /// them; SQLite's close does not once the file has moved). SQLite pairs a WAL with whatever
    /// database file sits beside it, so leaving them would let the application's next open
    /// apply the old file's frames to the new one. If no other process uses them and they are
    /// still the files we had open, they are moved aside (renamed `…-wal.orphaned-<time>`,
    /// nothing deleted; their committed frames are already captured) and a warning says so;
    /// if another process is attached, they are left alone and the warning says what to do.
    fn reopen(&mut self) -> Result<()> {
        let p = self.src.path.clone();
        for c in &self.readers {
            end_read(c, &p)?;
        }
        let wal_path = self.src.wal_path();
        let wal_id = self.wal.as_ref().map(|(_, id)| *id);
        let wal_same = wal_id.is_some_and(|id| file_id(&wal_path).is_ok_and(|x| x == id));
        let db_replaced = file_id(&p).is_ok_and(|id| id != self.db_id);
        let orphaned = db_replaced && wal_same && self.shm.is_current();
        let attached = orphaned && self.shm.others_attached();
        let shm_id = self.shm.id();
        self.readers.clear();
        self.wal = None;
        if orphaned && !attached {
            let stamp = now_us() / 1_000_000;
            let mut moved = Vec::new();
            for (path, id) in [(wal_path, wal_id), (self.src.shm_path(), Some(shm_id))] {
                if id.is_some_and(|id| file_id(&path).is_ok_and(|x| x == id)) {
                    let to = crate::sqlite::source::sidecar(&path, &format!(".orphaned-{stamp}"));
                    std::fs::rename(&path, &to)
                        .ctx(&path, "moving the replaced file's sidecar aside")?;
                    moved.push(to.display().to_string());
                }
            }
            self.events.push(Event::Warning {
                message: format!(
                    "{} was replaced while its old WAL and wal-index were still beside it (kept \
                     alive by walbundle's connections); SQLite would pair them with the new \
                     file, so they were moved aside: {} (their frames are captured; remove them \
                     when you like)",
                    p.display(),
                    moved.join(", ")
                ),
            });
        } else if attached {
            self.events.push(Event::Warning {
                message: format!(
                    "{} was replaced while its old WAL is still beside it and in use by another \
                     process; SQLite may pair that WAL with the new file. Close every \
                     connection and remove the -wal and -shm files before swapping a database \
                     file",
                    p.display()
                ),
            });
        }
        let (readers, shm) = open_readers(&self.src, self.opts.snapshot.busy_timeout)?;
        self.readers = readers;
        self.active = 0;
        self.shm = shm;
        self.db_id = file_id(&p).ctx(&p, "reading file identity")?;
        self.last_shm = None;
        self.stuck = None;
        self.zeroed = None;
        Ok(())
    }

    /// Our WAL descriptor, (re)opened when the file at the path changed; `None` if there is no
    /// WAL file.
    fn open_wal(&mut self) -> Result<Option<&File>> {
        let wp = self.src.wal_path();
        let id = match file_id(&wp) {
            Ok(id) => id,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.wal = None;
                return Ok(None);
            }
            Err(e) => return Err(Error::io(&wp, "checking WAL", e)),
        };
        if self.wal.as_ref().is_none_or(|(_, old)| *old != id) {
            match File::open(&wp) {
                Ok(f) => self.wal = Some((f, id)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.wal = None;
                    return Ok(None);
                }
                Err(e) => return Err(Error::io(&wp, "opening WAL", e)),
            }
        }
        Ok(self.wal.as_ref().map(|(f, _)| f))
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
        self.seal()
    }

    /// Read frames committed since the cursor into the pending bundle. Whatever keeps capture
    /// from moving past committed frames is timed: past [`STUCK_LIMIT`] it becomes a gap.
    fn capture_new(&mut self) -> Result<Step> {
        let r = self.capture_inner()?;
        if r.is_err() {
            self.stuck = None;
            return Ok(r);
        }
        let Some(shm) = self.last_shm else {
            return Ok(Ok(()));
        };
        // Never stall silently: committed frames of our cycle that stay unread become a gap.
        if shm.salts == self.cur.salts && self.cur.frame < shm.mx_frame {
            let key = (self.cur.salts, self.cur.frame);
            match self.stuck {
                Some((s, f, since)) if (s, f) == key => {
                    if since.elapsed() > STUCK_LIMIT {
                        self.stuck = None;
                        return Ok(Err(Gap::new(format!(
                            "committed WAL frame {} stayed unreadable for {} s (the wal-index says \
                             {} frames are committed)",
                            self.cur.frame + 1,
                            STUCK_LIMIT.as_secs(),
                            shm.mx_frame
                        ))));
                    }
                }
                _ => self.stuck = Some((key.0, key.1, Instant::now())),
            }
        } else {
            self.stuck = None;
        }
        Ok(Ok(()))
    }

    fn capture_inner(&mut self) -> Result<Step> {
        // The idle fast path: an unchanged wal-index header means nothing was committed and no
        // restart happened, so one `pread` answers the poll; the files' identity is still
        // checked every IDENTITY_EVERY.
        // Only when the last scan read everything that header announced.
        if let Some(last) = self.last_shm
            && last.salts == self.cur.salts
            && last.mx_frame == self.cur.frame
            && self.identity_at.elapsed() < IDENTITY_EVERY
            && self.shm.header()? == Some(last)
        {
            return Ok(Ok(()));
        }
        self.identity_at = Instant::now();
        let p = self.src.path.clone();
        match file_id(&p) {
            Ok(id) if id == self.db_id => {}
            Ok(_) => {
                // Our descriptors still read the old file's WAL: take its last commits first.
                if let (Some(h), Some((walf, wid))) = (self.shm.header()?, self.wal.take()) {
                    let res = self.capture_wal(&walf, h);
                    self.wal = Some((walf, wid));
                    res?.ok();
                }
                return Ok(Err(Gap::replaced(
                    "the database file was replaced (a different file now has its name)",
                )));
            }
            // Between an unlink and a rename: look again at the next poll.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(())),
            Err(e) => return Err(Error::io(&p, "checking the database file", e)),
        }
        if !self.shm.is_current() {
            return Ok(Err(Gap::replaced(
                "the wal-index (-shm) file was removed or replaced while walbundle had it open",
            )));
        }
        let Some(shm) = self.shm.header()? else {
            debug(|| "capture: wal-index unreadable".into());
            return Ok(Ok(()));
        };
        self.last_shm = Some(shm);
        let had_wal = self.wal.as_ref().map(|(_, id)| *id);
        if self.open_wal()?.is_none() {
            if had_wal.is_some() {
                return Ok(Err(Gap::replaced(
                    "the WAL file was removed while walbundle had it open",
                )));
            }
            return Ok(Ok(()));
        }
        let now = self.wal.as_ref().map(|(_, id)| *id);
        if had_wal.is_some() && had_wal != now {
            return Ok(Err(Gap::replaced(
                "the WAL file was replaced while walbundle had it open",
            )));
        }
        let Some((walf, wid)) = self.wal.take() else {
            return Ok(Ok(()));
        };
        let res = self.capture_wal(&walf, shm);
        self.wal = Some((walf, wid));
        res
    }

    fn capture_wal(&mut self, wal: &File, shm: ShmHeader) -> Result<Step> {
        let Some(hdr) = WalHeader::read(wal).ctx(self.src.wal_path(), "reading WAL header")? else {
            return Ok(Ok(())); // empty or being reset: nothing committed in it yet
        };
        if hdr.salts != self.cur.salts {
            // A cycle counts once the wal-index says frames are committed in it.
            if shm.salts != hdr.salts || shm.mx_frame == 0 {
                return Ok(Ok(()));
            }
            // A new WAL cycle. Without a gap only if the pin was taken with the WAL fully
            // backfilled at exactly our position: then the restart dropped only frames we hold.
            if !(self.pin.full && self.pin.salts == self.cur.salts && self.pin.mx == self.cur.frame)
            {
                return Ok(Err(Gap::new(format!(
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
                return Ok(Err(Gap::new(format!(
                    "page size changed from {} to {}",
                    self.cur.page_size, hdr.page_size
                ))));
            }
            self.enter_cycle(hdr.salts)?;
        }
        if shm.salts != hdr.salts {
            return Ok(Ok(())); // the WAL file is a moment ahead of (or behind) its index
        }
        if shm.mx_frame < self.cur.frame {
            return Ok(Err(Gap::new(format!(
                "the wal-index now ends at frame {}, before the last captured frame {}: the \
                 source lost committed frames",
                shm.mx_frame, self.cur.frame
            ))));
        }
        if shm.mx_frame == self.cur.frame {
            return Ok(Ok(()));
        }
        self.scan(wal, &hdr, shm.mx_frame)
    }

    /// Follow a WAL restart that the pin proves lost nothing: seal the bundle of the old cycle
    /// and continue at frame 0 of cycle `salts`.
    fn enter_cycle(&mut self, salts: (u32, u32)) -> Result<()> {
        self.seal()?;
        let changed = salts != self.cur.salts;
        self.cur.salts = salts;
        self.cur.frame = 0;
        self.cur.cksum = (0, 0);
        // At most one restart can happen while the pin is held: any further one is a gap
        // until the pin moves into the new cycle.
        self.pin.full = false;
        if changed {
            self.stats.wal_restarts_followed += 1;
            self.events.push(Event::WalRestarted { salts });
        }
        Ok(())
    }

    /// Scan frames (cursor, bound], all committed, emitting each transaction at its commit frame.
    fn scan(&mut self, wal: &File, hdr: &WalHeader, bound: u32) -> Result<Step> {
        let ps = hdr.page_size as usize;
        let wp = self.src.wal_path();
        let mut buf = vec![0u8; ps + FRAME_HEADER_LEN as usize];
        // Frame 1 chains from the header the writer wrote for this cycle (the wal-index's own
        // running checksum is stale after a TRUNCATE).
        let mut cksum = if self.cur.frame == 0 {
            hdr.checksum
        } else {
            self.cur.cksum
        };
        // The open transaction's pages: frame index and, within a memory budget, the bytes
        // already read for the checksum (so each frame is read once, not twice).
        // The open transaction's pages: page number to its newest frame (8 bytes a page plus
        // the map's own overhead: the only part of memory that grows with the transaction), and
        // within TXN_KEEP_BYTES the bytes already read for the checksum, so most transactions
        // read each frame once.
        let mut txn_pages: HashMap<u32, u32> = HashMap::new();
        let mut kept: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut i = self.cur.frame + 1;
        let mut next_look = i + MARK_LAG_FRAMES / 4;
        while i <= bound {
            let n = pread_full(wal, &mut buf, hdr.frame_offset(i)).ctx(&wp, "reading WAL frame")?;
            if n < buf.len() {
                debug(|| format!("scan: frame {i} short read {n} (bound {bound})"));
                return Ok(Ok(())); // shorter than the index says: look again later
            }
            let fh = FrameHeader::parse(&buf[..24]);
            if fh.salts != hdr.salts {
                if fh.salts == (0, 0) && fh.checksum == (0, 0) {
                    // A frame at or below the committed frontier with a zeroed header. SQLite
                    // writes such frames only inside an uncommitted transaction (`iReCksum`),
                    // and its own recovery stops at one, so it is never trusted: look once
                    // more, then start a new chain from a snapshot (which reads the page
                    // through SQLite, whatever its WAL header says).
                    let at = (hdr.salts, i);
                    if self.zeroed == Some(at) {
                        self.zeroed = None;
                        self.stats.zeroed_frames += 1;
                        return Ok(Err(Gap::new(format!(
                            "committed WAL frame {i} has a zeroed header (salts and checksum 0), \
                             which SQLite's own recovery would stop at: a new chain starts from \
                             a snapshot instead of trusting it"
                        ))));
                    }
                    self.zeroed = Some(at);
                }
                debug(|| {
                    format!(
                        "scan: frame {i} salts {:08x} != header {:08x} (bound {bound})",
                        fh.salts.0, hdr.salts.0
                    )
                });
                return Ok(Ok(())); // being rewritten, or the WAL restarting: look again later
            }
            let c = wal_checksum(hdr.big_endian_cksum, &buf[..8], cksum);
            let c = wal_checksum(hdr.big_endian_cksum, &buf[24..], c);
            if c != fh.checksum || fh.pgno == 0 {
                return Ok(Err(Gap::new(format!(
                    "committed WAL frame {i} failed its checksum"
                ))));
            }
            cksum = c;
            txn_pages.insert(fh.pgno, i);
            let page = &buf[FRAME_HEADER_LEN as usize..];
            if let Some(old) = kept.get_mut(&fh.pgno) {
                old.copy_from_slice(page); // the newest version wins
            } else if (kept.len() + 1) * ps <= TXN_KEEP_BYTES {
                kept.insert(fh.pgno, page.to_vec());
            }
            if fh.commit_size != 0 {
                let commit = Commit {
                    frame: i,
                    size: fh.commit_size,
                    cksum: c,
                };
                self.emit_txn(wal, hdr, &mut txn_pages, &kept, commit)?;
                txn_pages.clear();
                kept.clear();
                // Bundles stay bounded however much a single scan finds (a backlog after a
                // burst): seal at this transaction boundary once the bundle is full.
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.body.raw_len() >= self.opts.max_bundle_bytes)
                {
                    self.seal()?;
                }
                // A long scan (a backlog after a burst) moves the read mark as it goes, so the
                // application's auto-checkpoint keeps backfilling in small steps meanwhile.
                if i >= next_look {
                    next_look = i + MARK_LAG_FRAMES / 4;
                    if let Some(h) = self.shm.header()?
                        && h.salts == hdr.salts
                        && self.pin.salts == hdr.salts
                        && h.mx_frame.saturating_sub(self.pin.mx) >= MARK_LAG_FRAMES
                    {
                        self.move_mark()?;
                    }
                }
            }
            i += 1;
        }
        self.zeroed = None;
        Ok(Ok(()))
    }
    /// Add one committed transaction (its pages, last version of each) to the pending bundle.
    fn emit_txn(
        &mut self,
        wal: &File,
        hdr: &WalHeader,
        pages: &mut HashMap<u32, u32>,
        kept: &HashMap<u32, Vec<u8>>,
        commit: Commit,
    ) -> Result<()> {
        let Commit {
            frame: commit_frame,
            size: commit_size,
            cksum,
        } = commit;
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
        let mut order: Vec<(u32, u32)> = pages.drain().collect();
        order.shrink_to_fit();
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
            // Two passes, so memory does not grow with the transaction: the record carries the
            // state after the transaction before its pages, so the first pass computes every
            // page's term, the second streams the pages into the bundle. Pages the scan kept
            // (up to TXN_KEEP_BYTES) are not read again; the others are read twice, and must
            // read back the same both times.
            let changed = |frame: u32| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("WAL frame {frame} changed while being captured"),
                )
                .at(&wp)
            };
            let read_page = |buf: &mut Vec<u8>, pgno: u32, frame: u32| -> Result<()> {
                let n =
                    pread_full(wal, buf, hdr.frame_offset(frame)).ctx(&wp, "reading WAL frame")?;
                let again = FrameHeader::parse(&buf[..24]);
                if n < buf.len() || again.salts != hdr.salts || again.pgno != pgno {
                    return Err(changed(frame));
                }
                Ok(())
            };
            let term_of = |pgno: u32, page: &[u8]| {
                if pgno == lock {
                    0
                } else {
                    crate::bundle::checksum::page_term(pgno, page)
                }
            };
            let mut new_terms: Vec<u64> = Vec::with_capacity(order.len());
            for (pgno, frame) in &order {
                let t = if let Some(p) = kept.get(pgno) {
                    term_of(*pgno, p)
                } else {
                    read_page(&mut buf, *pgno, *frame)?;
                    term_of(*pgno, &buf[FRAME_HEADER_LEN as usize..])
                };
                new_terms.push(t);
            }
            for ((pgno, _), t) in order.iter().zip(&new_terms) {
                let slot = &mut self.terms[*pgno as usize - 1];
                state.0 ^= *slot ^ *t;
                *slot = *t;
            }
            meta_state = state;
            let meta = TxnMeta {
                time_us,
                page_count: commit_size,
                commit_frame,
                state_after: state.0,
            };
            let n_pages = u32::try_from(order.len()).unwrap_or(u32::MAX);
            pend.body
                .begin_txn(&meta, n_pages)
                .ctx(&wp, "compressing")?;
            for ((pgno, frame), t) in order.iter().zip(&new_terms) {
                let page: &[u8] = if let Some(p) = kept.get(pgno) {
                    p
                } else {
                    read_page(&mut buf, *pgno, *frame)?;
                    &buf[FRAME_HEADER_LEN as usize..]
                };
                if term_of(*pgno, page) != *t {
                    return Err(changed(*frame));
                }
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
        let t0 = Instant::now();
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
        self.stats.seal_max_us = self.stats.seal_max_us.max(us(t0.elapsed()));
        debug(|| format!("seal {seq}: {} us, {len} bytes", us(t0.elapsed())));
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

    /// Keep the pin out of the application's way (called every poll):
    /// - another process holds the checkpoint and the write lock: [`Self::step_aside`];
    /// - everything is captured and backfilled but the pin is not on the fully backfilled WAL:
    ///   move it there, which lets the WAL restart once;
    /// - the WAL's committed frames exceed `max_wal_bytes`: once per `interval`, try to let it
    ///   restart — move the pin
    ///   to the newest commit, backfill up to it with a PASSIVE checkpoint on the idle reader,
    ///   and if nothing was committed meanwhile, move onto the fully backfilled WAL. Under writes
    ///   that never pause for those few milliseconds the WAL keeps growing (restarting it anyway
    ///   would take the write lock, which walbundle never does); it restarts at the first pause;
    /// - otherwise, the pin is behind the newest commit (it caps what the application's own
    ///   checkpoints may backfill): move it there once per `interval`, or as soon as it trails
    ///   by 1,000 frames, so the application's checkpoints backfill in small steps.
    fn tend_pin(&mut self) -> Result<()> {
        if self.shm.blocking_checkpoint() {
            return self.step_aside();
        }
        let Some(h) = self.last_shm else {
            return Ok(());
        };
        if self.can_free(&h) {
            return self.advance();
        }
        let frame_bytes = u64::from(self.cur.page_size) + FRAME_HEADER_LEN;
        let live = u64::from(h.mx_frame) * frame_bytes;
        if live > self.opts.max_wal_bytes
            && h.salts == self.cur.salts
            && self.cur.frame == h.mx_frame
            && self.last_restart_try.elapsed() >= self.opts.interval
        {
            self.last_restart_try = Instant::now();
            if self.is_behind(&h) {
                self.advance()?;
            }
            if self.pin.mx == h.mx_frame && h.n_backfill < h.mx_frame {
                let idle = &self.readers[1 - self.active];
                // PASSIVE never takes the write lock and never waits; a busy checkpoint lock (the
                // application is checkpointing) is not an error.
                let t0 = Instant::now();
                let _ = idle.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                let took = us(t0.elapsed());
                self.stats.checkpoints += 1;
                self.stats.checkpoint_max_us = self.stats.checkpoint_max_us.max(took);
                debug(|| format!("own checkpoint: {took} us"));
            }
            // A fresh header, not `last_shm`: that one must stay the header of the last scan,
            // or the idle fast path would skip commits made since it.
            if let Some(h2) = self.shm.header()?
                && self.can_free(&h2)
            {
                self.advance()?;
            }
            return Ok(());
        }
        // At most an interval behind, and never more than SQLite's own auto-checkpoint unit:
        // the application's auto-checkpoint runs inside a commit and backfills up to our mark,
        // so a far-behind mark would make that one commit copy a whole interval of a burst.
        let lag = if h.salts == self.pin.salts {
            h.mx_frame.saturating_sub(self.pin.mx)
        } else {
            h.mx_frame
        };
        if self.is_behind(&h)
            && (self.last_move.elapsed() >= self.opts.interval || lag >= MARK_LAG_FRAMES)
        {
            self.advance()?;
        }
        Ok(())
    }

    /// The pin is older than the newest commit (or in an older cycle).
    fn is_behind(&self, h: &ShmHeader) -> bool {
        h.salts != self.pin.salts || h.mx_frame > self.pin.mx
    }

    /// Everything committed is captured and backfilled, and the pin may be what keeps the WAL
    /// from restarting.
    fn can_free(&self, h: &ShmHeader) -> bool {
        !self.pin.full
            && h.n_backfill == h.mx_frame
            && h.mx_frame > 0
            && h.salts == self.cur.salts
            && self.cur.frame == h.mx_frame
    }

    /// Would moving the pin now help a waiting checkpointer (see [`Self::step_aside`])?
    fn pin_wants_move(&self, h: &ShmHeader) -> bool {
        self.is_behind(h) || self.can_free(h)
    }

    /// Another process is running a FULL, RESTART or TRUNCATE checkpoint, holding the write
    /// lock (so nothing commits) while it waits for readers. Capture everything committed, move
    /// the pin to the newest frame (its backfill no longer waits for us), and once that is
    /// backfilled, onto the fully backfilled WAL (its restart no longer waits for us) — polling
    /// every millisecond until the locks are released or [`STEP_ASIDE_LIMIT`] passes.
    fn step_aside(&mut self) -> Result<()> {
        let t0 = Instant::now();
        self.stats.step_asides += 1;
        let mut out_of_way: Option<Duration> = None;
        let mut moved_at = Instant::now();
        while t0.elapsed() < STEP_ASIDE_LIMIT {
            if let Err(g) = self.capture_new()? {
                return self.new_chain(g);
            }
            if let Some(h) = self.last_shm {
                // `full` is conservative: a reader that began while a checkpointer held read
                // lock 0, or just as backfill finished, sits on slot K although the header says
                // fully backfilled. If the checkpoint still waits, pin again (it lands on
                // slot 0 now).
                let stuck_full = self.pin.full && moved_at.elapsed() >= Duration::from_millis(10);
                if self.pin_wants_move(&h) || stuck_full {
                    self.advance()?;
                    moved_at = Instant::now();
                }
                let fresh = self.pin.salts == h.salts && self.pin.mx == h.mx_frame;
                if out_of_way.is_none() && fresh && self.pin.full {
                    out_of_way = Some(t0.elapsed());
                }
            }
            if !self.shm.blocking_checkpoint() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = us(out_of_way.unwrap_or_else(|| t0.elapsed()));
        self.stats.step_aside_max_us = self.stats.step_aside_max_us.max(took);
        debug(|| format!("step aside: {took} us"));
        Ok(())
    }

    /// Move the pin to the newest commit by leapfrogging: the idle reader takes a new pin, capture
    /// catches up under the old one (which still protects every frame), and the old reader lets
    /// go only if the new pin is safe to rely on:
    /// - it is in our cycle, or the WAL is empty at it and we are at (or may follow to) frame 0;
    /// - if it may be on the fully backfilled WAL (`full`), everything up to it is captured, since
    ///   the WAL may restart at it as soon as the old pin is gone.
    ///
    /// Otherwise the new transaction ends and the old pin stays.
    fn advance(&mut self) -> Result<()> {
        let p = self.src.path.clone();
        let spare = 1 - self.active;
        let Some(p2) = begin_pinned(&self.readers[spare], &self.shm, &p)? else {
            return Ok(());
        };
        let caught_up = match self.capture_new() {
            Ok(x) => x,
            Err(e) => {
                let _ = end_read(&self.readers[spare], &p);
                return Err(e);
            }
        };
        if let Err(g) = caught_up {
            end_read(&self.readers[spare], &p)?;
            return self.new_chain(g);
        }
        let follows_empty = p2.mx == 0
            && p2.salts != self.cur.salts
            && (self.cur.frame == 0
                || (self.pin.full
                    && self.pin.salts == self.cur.salts
                    && self.pin.mx == self.cur.frame));
        let same = p2.salts == self.cur.salts || follows_empty;
        let safe = same && (!p2.full || follows_empty || self.cur.frame >= p2.mx);
        if !safe {
            debug(|| {
                format!(
                    "advance refused: pin {:08x}/{} full {} vs cursor {:08x}/{}",
                    p2.salts.0, p2.mx, p2.full, self.cur.salts.0, self.cur.frame
                )
            });
            return end_read(&self.readers[spare], &p);
        }
        if follows_empty {
            // The WAL restarted and is empty (a TRUNCATE): the state is the database file,
            // which is the state at our cursor.
            self.enter_cycle(p2.salts)?;
        }
        self.take_pin(spare, p2)
    }

    /// Move the read mark to the newest commit in the middle of a scan, without catching up
    /// first: safe when the new pin is in our cycle and not on the fully backfilled WAL (any
    /// such pin keeps the WAL from restarting, so every frame of the cycle stays readable), or
    /// when capture already holds everything up to it.
    fn move_mark(&mut self) -> Result<()> {
        let p = self.src.path.clone();
        let spare = 1 - self.active;
        let Some(p2) = begin_pinned(&self.readers[spare], &self.shm, &p)? else {
            return Ok(());
        };
        if p2.salts != self.cur.salts || (p2.full && self.cur.frame < p2.mx) {
            return end_read(&self.readers[spare], &p);
        }
        self.take_pin(spare, p2)
    }

    /// The spare reader's new pin `p2` replaces the active one.
    fn take_pin(&mut self, spare: usize, p2: Pin) -> Result<()> {
        end_read(&self.readers[self.active], &self.src.path)?;
        self.active = spare;
        self.pin = p2;
        self.last_move = Instant::now();
        self.stats.pin_moves += 1;
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
    crate::sqlite::source::each_page(r, p, page_size, page_count, |pgno, page| {
        let t = term_or_zero(page_size, pgno, page);
        state.0 ^= t;
        terms.push(t);
        Ok(())
    })?;
    Ok((terms, state))
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
