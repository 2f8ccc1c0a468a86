//! A page-exact full snapshot of a live database, published as generation 0 of a new chain.
//!
//! How the image is tied to one committed state and, for WAL databases, to a WAL position:
//! 1. Connection W takes a write barrier (`BEGIN IMMEDIATE`): no writer can commit.
//! 2. Connection R starts its read transaction: its snapshot is now every committed frame.
//! 3. The wal-index header gives that snapshot's last frame, salts and running checksum; the WAL
//!    file's own header and that frame's header must agree (a cross-check, O(1)).
//! 4. W rolls back: writers continue. The barrier lasts only steps 2–3, whatever the WAL size.
//! 5. Pages stream through `sqlite_dbpage` inside R's read transaction, which is byte-exact at
//!    that snapshot (unlike the backup API, which rewrites page 1, or VACUUM INTO).
//! 6. The compressed image is decompressed again into a scratch file, hashed, and checked by
//!    SQLite before the generation folder is renamed into the set.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde::Serialize;

use super::source::{SourceDb, shm_file};
use super::wal::{FrameHeader, ShmHeader, WalHeader};
use crate::bundle::image::ImageEncoder;
use crate::chain::BackupSet;
use crate::chain::layout::{IMAGE_FILE, MANIFEST_FILE, generation_dir, new_chain_id};
use crate::chain::manifest::{
    GENERATION_FORMAT, GenerationManifest, ImageInfo, MANIFEST_VERSION, Origin, Sealed, WalPosition,
};
use crate::error::{Error, ErrorKind, IoContext, Result, SqlContext};
use crate::progress::Progress;
use crate::replay::{CheckLevel, check_image};

/// How to take a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// SQLite check on the materialised image before publishing (never `None` by default).
    pub check: CheckLevel,
    /// zstd level for the image.
    pub level: i32,
    /// zstd worker threads (0: compress on the reading thread).
    pub workers: u32,
    /// How long to wait for the source's locks.
    pub busy_timeout: Duration,
    /// Where to materialise the image for its check (default: the system temp folder).
    pub scratch_dir: Option<PathBuf>,
    /// Why a new chain starts here (recorded in the manifest, shown by `list`).
    pub reason: String,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self {
            check: CheckLevel::Full,
            level: 3,
            workers: 2,
            busy_timeout: Duration::from_secs(10),
            scratch_dir: None,
            reason: "snapshot".into(),
        }
    }
}

/// What a snapshot did.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    /// The published generation's manifest.
    pub manifest: GenerationManifest,
    /// Its folder.
    pub generation_dir: PathBuf,
    /// How long writers were held at the barrier (WAL databases), in microseconds.
    pub barrier_us: u64,
    /// Time reading and compressing pages, in milliseconds.
    pub read_ms: u64,
    /// Time verifying the image before publishing, in milliseconds.
    pub verify_ms: u64,
    /// Old temporaries removed from the set.
    pub stale_temps_removed: usize,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Position and barrier time from steps 1–4 above; R's read transaction is left open.
fn begin_pinned_read(
    src: &SourceDb,
    r: &Connection,
    w: &Connection,
) -> Result<(Option<WalPosition>, Duration)> {
    let p = &src.path;
    let mode: String = r
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .sql_ctx(p, "reading journal mode")?;
    if !mode.eq_ignore_ascii_case("wal") {
        r.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
            .sql_ctx(p, "starting read transaction")?;
        return Ok((None, Duration::ZERO));
    }
    w.execute_batch("BEGIN IMMEDIATE")
        .sql_ctx(p, "taking the write barrier")?;
    let t0 = Instant::now();
    let res = (|| {
        r.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
            .sql_ctx(p, "starting read transaction")?;
        wal_position(src)
    })();
    let rb = w.execute_batch("ROLLBACK");
    let barrier = t0.elapsed();
    let pos = res?;
    rb.sql_ctx(p, "releasing the write barrier")?;
    Ok((Some(pos), barrier))
}

/// The WAL position of the current committed state, while the write barrier is held.
fn wal_position(src: &SourceDb) -> Result<WalPosition> {
    let shm = shm_file(src)?;
    let shm_path = src.shm_path();
    let mut hdr = None;
    for _ in 0..100 {
        hdr = ShmHeader::read(&shm).ctx(&shm_path, "reading wal-index header")?;
        if hdr.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let Some(h) = hdr else {
        return Err(Error::corrupt(
            &shm_path,
            "wal-index header is not valid (both copies disagree)",
        ));
    };
    let pos = WalPosition {
        salt1: h.salts.0,
        salt2: h.salts.1,
        frame: h.mx_frame,
        checksum1: h.frame_cksum.0,
        checksum2: h.frame_cksum.1,
        backfilled: h.n_backfill,
    };
    if h.mx_frame == 0 {
        return Ok(pos);
    }
    let wal_path = src.wal_path();
    let wal = std::fs::File::open(&wal_path).ctx(&wal_path, "opening WAL")?;
    let disagree = |what: &str| {
        Error::new(
            ErrorKind::Corrupt,
            format!("WAL and wal-index disagree: {what}"),
        )
        .at(&wal_path)
        .hint("retry; if it persists the WAL may be damaged")
    };
    let wh = WalHeader::read(&wal)
        .ctx(&wal_path, "reading WAL header")?
        .ok_or_else(|| disagree("WAL header invalid"))?;
    if wh.salts != h.salts {
        return Err(disagree("salts differ"));
    }
    let fh = FrameHeader::read(&wal, &wh, h.mx_frame)
        .ctx(&wal_path, "reading frame header")?
        .ok_or_else(|| disagree("WAL shorter than the wal-index says"))?;
    if fh.salts != h.salts || fh.checksum != h.frame_cksum || fh.commit_size == 0 {
        return Err(disagree(&format!(
            "frame {} is not the commit frame the wal-index records",
            h.mx_frame
        )));
    }
    Ok(pos)
}

/// Take a snapshot of `src` into `set` as a new chain. The caller holds the set's writer lock.
///
/// # Errors
/// Any failure leaves nothing published: `Corrupt` if the source is not a readable database or
/// the image fails verification, `Busy` if the barrier could not be taken in time, `Io` for the
/// destination (full, unwritable).
pub fn snapshot(
    set: &BackupSet,
    src: &SourceDb,
    opts: &SnapshotOptions,
    progress: &dyn Progress,
) -> Result<SnapshotReport> {
    let r = src.connect(opts.busy_timeout, true)?;
    let w = src.connect(opts.busy_timeout, false)?;
    snapshot_with(
        set,
        src,
        opts,
        progress,
        Conns {
            r: &r,
            w: &w,
            keep_pin: false,
            terms: None,
        },
    )
}

/// The caller's connections for [`snapshot_with`], and what to leave behind.
pub struct Conns<'a> {
    /// Query-only reader: reads the pages.
    pub r: &'a Connection,
    /// Takes the write barrier (only ever rolls back).
    pub w: &'a Connection,
    /// Leave `r`'s read transaction open on return.
    pub keep_pin: bool,
    /// Receive every page's state-checksum term.
    pub terms: Option<&'a mut Vec<u64>>,
}

/// [`snapshot`] on connections the caller owns (`conns.r` reads, `conns.w` takes the write
/// barrier). With `keep_pin`, `r`'s read transaction is still open when this returns, so the
/// database cannot move past the snapshot's WAL position unseen (capture continues from it);
/// otherwise it ends as soon as the pages are read.
///
/// # Errors
/// As [`snapshot`]. With `keep_pin`, `r` may be left inside a read transaction on error.
pub fn snapshot_with(
    set: &BackupSet,
    src: &SourceDb,
    opts: &SnapshotOptions,
    progress: &dyn Progress,
    conns: Conns<'_>,
) -> Result<SnapshotReport> {
    let Conns {
        r,
        w,
        keep_pin,
        terms,
    } = conns;
    let stale = set.store().clean_stale_temps("")?;
    let inv = set.inventory()?;
    let previous_chain = inv.chains.last().map(|c| c.id.clone());
    let txn = inv.max_txn() + 1;
    let p = &src.path;
    let t_read = Instant::now();
    let (wal, barrier) = begin_pinned_read(src, r, w)?;
    let state_time = jiff::Timestamp::now();
    let journal_mode: String = r
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .sql_ctx(p, "reading journal mode")?;
    let page_size: u32 = r
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .sql_ctx(p, "reading page size")?;
    let page_count: u32 = r
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .sql_ctx(p, "reading page count")?;

    let chain_id = new_chain_id(state_time);
    // The whole new chain folder is staged and appears in one rename.
    let gen_name = generation_dir(0);
    let mut staged = set.store().stage_dir(&chain_id)?;
    staged.mkdir(&gen_name)?;
    let image_file = staged.create_file(&format!("{gen_name}/{IMAGE_FILE}"))?;
    let image_path = image_file.path().to_path_buf();
    let mut enc = ImageEncoder::new(image_file, opts.level, opts.workers, page_size, page_count)
        .ctx(&image_path, "starting compression")?;
    if terms.is_some() {
        enc.collect_terms(page_count);
    }
    progress.begin("snapshot", u64::from(page_size) * u64::from(page_count));
    super::source::each_page(r, p, page_size, page_count, |_, page| {
        enc.write_page(page).ctx(&image_path, "compressing")?;
        progress.advance(u64::from(page_size));
        Ok(())
    })?;
    if !keep_pin {
        r.execute_batch("COMMIT")
            .sql_ctx(p, "ending read transaction")?;
    }
    if let Some(t) = terms {
        *t = enc.take_terms();
    }
    let (file, written) = enc.finish().ctx(&image_path, "compressing")?;
    file.finish()?;
    progress.end();
    let read_ms = ms(t_read.elapsed());

    // Verified before it is trusted: decode what was written into a scratch database, take the
    // hashes from the artifact itself, require the same state checksum as the pages read from
    // the source, and let SQLite check the scratch copy.
    let t_verify = Instant::now();
    let scratch = opts.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let summary = check_image(
        &image_path,
        page_size,
        page_count,
        &scratch,
        opts.check,
        progress,
    )
    .map_err(|e| e.context("verifying the new image before publishing"))?;
    if summary.state != written.state || summary.size != written.size {
        return Err(Error::corrupt(
            &image_path,
            "image read back differs from what was written",
        ));
    }
    let verify_ms = ms(t_verify.elapsed());

    let mut manifest = GenerationManifest {
        format: GENERATION_FORMAT.into(),
        version: MANIFEST_VERSION,
        set_id: set.record().set_id.clone(),
        chain_id: chain_id.clone(),
        seq: 0,
        txn,
        state_time: state_time.to_string(),
        created: String::new(),
        tool: crate::chain::tool_version(),
        origin: Origin::Snapshot {
            journal_mode: journal_mode.to_ascii_lowercase(),
            reason: opts.reason.clone(),
            previous_chain,
        },
        page_size,
        page_count,
        state_checksum: summary.state.to_hex(),
        image: ImageInfo::of(&summary),
        wal,
        check: opts.check.as_str().into(),
        self_sha256: String::new(),
    };

    manifest.created = jiff::Timestamp::now().to_string();
    staged.write_file(
        &format!("{gen_name}/{MANIFEST_FILE}"),
        &manifest.to_sealed_bytes(),
    )?;
    let generation_dir = staged.final_path().join(&gen_name);
    staged.publish()?;
    Ok(SnapshotReport {
        manifest,
        generation_dir,
        barrier_us: u64::try_from(barrier.as_micros()).unwrap_or(u64::MAX),
        read_ms,
        verify_ms,
        stale_temps_removed: stale,
    })
}
