//! A page-exact full snapshot of a live database, published as generation 0 of a new chain.
//!
//! How the image is tied to one committed state and, for WAL databases, to a WAL position —
//! without ever taking the write lock (an application with no busy timeout must never see
//! `SQLITE_BUSY` because of walbundle):
//! 1. Connection R begins a read transaction pinned at an exact WAL position, proven by reading
//!    the wal-index header before and after it starts ([`super::pin`]).
//! 2. When that position has frames, the WAL file's own header and that frame's header must
//!    agree with the wal-index (a cross-check, O(1)).
//! 3. Pages stream through `sqlite_dbpage` inside R's read transaction, which is byte-exact at
//!    that snapshot (unlike the backup API, which rewrites page 1, or VACUUM INTO).
//! 4. The compressed image is decompressed again into a scratch file, hashed, and checked by
//!    SQLite before the generation folder is renamed into the set.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde::Serialize;

use super::pin::{Pin, Shm, begin_pinned, begin_read, end_read, unpinnable};
use crate::bundle::image::ImageEncoder;
use crate::bundle::manifest::{
    GENERATION_FORMAT, GenerationManifest, ImageInfo, MANIFEST_VERSION, Origin, Sealed, WalPosition,
};
use crate::chain::BackupSet;
use crate::chain::layout::{IMAGE_FILE, MANIFEST_FILE, generation_dir, new_chain_id};
use crate::error::{Error, ErrorKind, IoContext, Result, SqlContext};
use crate::progress::Progress;
use crate::replay::{CheckLevel, check_image};
use crate::sqlite::source::SourceDb;
use crate::sqlite::wal::{FrameHeader, WalHeader};

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
            level: crate::bundle::image::DEFAULT_LEVEL,
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

/// Steps 1–2 above: R's read transaction is left open, pinned at the returned position
/// (`None` for a database not in WAL mode, read under an ordinary read transaction).
fn begin_pinned_read(
    src: &SourceDb,
    r: &Connection,
    shm: Option<&Shm>,
) -> Result<Option<WalPosition>> {
    let p = &src.path;
    let mode: String = r
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .sql_ctx(p, "reading journal mode")?;
    if !mode.eq_ignore_ascii_case("wal") {
        begin_read(r, p)?;
        return Ok(None);
    }
    let Some(shm) = shm else {
        return Err(Error::usage("a WAL database needs its wal-index to be pinned").at(p));
    };
    let mut last = None;
    for _ in 0..20 {
        let Some(pin) = begin_pinned(r, shm, p)? else {
            return Err(unpinnable(p));
        };
        match wal_position(src, &pin)? {
            Ok(pos) => return Ok(Some(pos)),
            Err(e) => {
                end_read(r, p)?;
                last = Some(e);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    Err(last.unwrap_or_else(|| unpinnable(p)))
}

/// The WAL position of a verified pin, cross-checked against the WAL file. `Ok(Err(_))` when
/// the WAL file and the wal-index disagree (worth another pin: the WAL may be mid-restart).
fn wal_position(src: &SourceDb, pin: &Pin) -> Result<std::result::Result<WalPosition, Error>> {
    let wal_path = src.wal_path();
    let wal = match std::fs::File::open(&wal_path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&wal_path, "opening WAL", e)),
    };
    let wh = match &wal {
        Some(f) => WalHeader::read(f).ctx(&wal_path, "reading WAL header")?,
        None => None,
    };
    let same_cycle = wh.is_some_and(|h| h.salts == pin.salts);
    // At frame 0 the next frames chain from whatever header the next writer writes; the
    // checksum recorded is the current header's when it belongs to this cycle (informational:
    // capture always seeds frame 1 from the WAL header it reads).
    let (checksum1, checksum2) = if pin.mx == 0 {
        wh.filter(|_| same_cycle).map_or((0, 0), |h| h.checksum)
    } else {
        pin.cksum
    };
    let pos = WalPosition {
        salt1: pin.salts.0,
        salt2: pin.salts.1,
        frame: pin.mx,
        checksum1,
        checksum2,
        backfilled: pin.backfilled,
    };
    if pin.mx == 0 {
        return Ok(Ok(pos));
    }
    let disagree = |what: &str| {
        Error::new(
            ErrorKind::Corrupt,
            format!("WAL and wal-index disagree: {what}"),
        )
        .at(&wal_path)
        .hint("retry; if it persists the WAL may be damaged")
    };
    let (Some(wal), Some(wh)) = (wal, wh) else {
        // Fully backfilled at the pin: the application may have restarted (or truncated) the
        // WAL since, which drops only frames already in the database file.
        return Ok(if pin.full {
            Ok(pos)
        } else {
            Err(disagree("WAL header invalid"))
        });
    };
    if !same_cycle {
        return Ok(if pin.full {
            Ok(pos)
        } else {
            Err(disagree("salts differ"))
        });
    }
    let fh = FrameHeader::read(&wal, &wh, pin.mx).ctx(&wal_path, "reading frame header")?;
    match fh {
        Some(fh) if fh.salts == pin.salts && fh.checksum == pin.cksum && fh.commit_size != 0 => {
            Ok(Ok(pos))
        }
        _ => Ok(Err(disagree(&format!(
            "frame {} is not the commit frame the wal-index records",
            pin.mx
        )))),
    }
}

/// Take a snapshot of `src` into `set` as a new chain. The caller holds the set's writer lock.
///
/// # Errors
/// Any failure leaves nothing published: `Corrupt` if the source is not a readable database or
/// the image fails verification, `Busy` if no read transaction could be pinned, `Io` for the
/// destination (full, unwritable).
pub fn snapshot(
    set: &BackupSet,
    src: &SourceDb,
    opts: &SnapshotOptions,
    progress: &dyn Progress,
) -> Result<SnapshotReport> {
    let r = src.connect(opts.busy_timeout)?;
    let shm = wal_index_for(src, &r)?;
    let rep = snapshot_with(
        set,
        src,
        opts,
        progress,
        Conns {
            r: &r,
            shm: shm.as_ref(),
            keep_pin: false,
            terms: None,
        },
    );
    // Our SQLite connection closes before the wal-index descriptor, never the other way
    // round (closing a descriptor drops this process's POSIX locks): see `pin::Shm`.
    drop(r);
    drop(shm);
    rep
}

/// The wal-index of a WAL database, opened after `r` has read (SQLite creates it at the first
/// read); `None` in other journal modes. Drop it only after `r`.
///
/// # Errors
/// SQLite or `Io` failures naming the file.
pub fn wal_index_for(src: &SourceDb, r: &Connection) -> Result<Option<Shm>> {
    let p = &src.path;
    let mode: String = r
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .sql_ctx(p, "reading journal mode")?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Ok(None);
    }
    r.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .sql_ctx(p, "reading schema")?;
    Shm::open(&src.shm_path()).map(Some)
}

/// The caller's connections for [`snapshot_with`], and what to leave behind.
pub struct Conns<'a> {
    /// Query-only reader: reads the pages.
    pub r: &'a Connection,
    /// The wal-index descriptor to pin with (required for a WAL database).
    pub shm: Option<&'a Shm>,
    /// Leave `r`'s read transaction open on return.
    pub keep_pin: bool,
    /// Receive every page's state-checksum term.
    pub terms: Option<&'a mut Vec<u64>>,
}

/// [`snapshot`] on a connection the caller owns (`conns.r` reads). With `keep_pin`, `r`'s read transaction is still open when this returns, so the
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
        shm,
        keep_pin,
        terms,
    } = conns;
    let stale = set.clean_stale_temps([])?;
    let inv = set.inventory()?;
    let previous_chain = inv.chains.last().map(|c| c.id.clone());
    let txn = inv.max_txn() + 1;
    let p = &src.path;
    let t_read = Instant::now();
    let wal = begin_pinned_read(src, r, shm)?;
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
    let mut staged = set.stage(&chain_id)?;
    staged.mkdir(&gen_name)?;
    let image_file = staged.create_file(&format!("{gen_name}/{IMAGE_FILE}"))?;
    let image_path = image_file.path().to_path_buf();
    let mut enc = ImageEncoder::new(image_file, opts.level, opts.workers, page_size, page_count)
        .ctx(&image_path, "starting compression")?;
    if terms.is_some() {
        enc.collect_terms(page_count);
    }
    progress.begin("snapshot", u64::from(page_size) * u64::from(page_count));
    crate::sqlite::source::each_page(r, p, page_size, page_count, |_, page| {
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
    let generation_dir = set.objects().location(&format!("{chain_id}/{gen_name}"));
    set.publish(staged, &chain_id)?;
    Ok(SnapshotReport {
        manifest,
        generation_dir,
        read_ms,
        verify_ms,
        stale_temps_removed: stale,
    })
}
