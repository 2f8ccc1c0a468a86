//! Tying a read transaction to an exact WAL position without ever taking the write lock.
//!
//! walbundle's protection against losing frames is a read transaction it keeps open: while a
//! reader holds a read mark on slot K > 0, no connection can restart the WAL (a restart needs
//! every read lock 1..4 exclusively), and a reader on slot 0 lets at most one restart happen,
//! only once every frame was already copied into the database file (it blocks all backfill).
//! What walbundle must know is *which* WAL position the read transaction it just began is
//! pinned at. It learns that without a barrier:
//!
//! 1. read the wal-index header (salts, `mxFrame`, `nBackfill`) — call it H1;
//! 2. begin the read transaction and make it read (SQLite loads the same header then);
//! 3. read the header again — H2.
//!
//! Within one WAL cycle `mxFrame` only grows and `nBackfill` only grows, and a restart always
//! changes the salts (salt-1 is incremented, salt-2 randomised). So if H1 and H2 agree on the
//! salts and `mxFrame`, the header the read transaction loaded between them had exactly those
//! values: the pin is at `(salts, mxFrame)`. If the read saw `nBackfill == mxFrame`, SQLite may
//! have put it on slot 0 (the only case in which a restart can follow); H2's `nBackfill` is at
//! least what the reader saw, so `full = H1.nBackfill == mx || H2.nBackfill == mx` is exact or
//! conservative. When H1 and H2 differ (a commit slipped in between), the transaction is ended
//! and the pin is tried again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rusqlite::Connection;

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::sqlite::wal::ShmHeader;
use crate::sys::{file_id, lock_held};

/// Byte offsets of SQLite's locks in the `-shm` file (wal.c: `WALINDEX_LOCK_OFFSET` 120, then
/// WRITE, CKPT, RECOVER, READ(0..4); os_unix.c: the dead-man switch `UNIX_SHM_DMS` at 128).
const WRITE_LOCK: i64 = 120;
const CKPT_LOCK: i64 = 121;
const DMS_LOCK: i64 = 128;

/// A read mark walbundle holds: the WAL cycle and frame it pins, and whether the WAL was fully
/// backfilled then (only then may the WAL restart once while it is held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    /// Salts of the WAL cycle the wal-index described.
    pub salts: (u32, u32),
    /// `mxFrame`: the last committed frame the read transaction sees.
    pub mx: u32,
    /// The wal-index's running checksum at `mx` (meaningful only when `mx > 0`).
    pub cksum: (u32, u32),
    /// The highest `nBackfill` seen while pinning.
    pub backfilled: u32,
    /// `nBackfill == mx`: the reader may be on slot 0 (one restart at `mx` possible).
    pub full: bool,
}

/// Descriptors on `-shm` files, shared within the process and keyed by the file's identity.
/// Closing any descriptor of a file drops every POSIX lock this process holds on it (SQLite's
/// included), so a descriptor is closed only when its last user — who closes its own SQLite
/// connections first — lets go of it.
static SHM_FILES: Mutex<Vec<ShmEntry>> = Mutex::new(Vec::new());

/// A registry entry: the file's (device, inode) and the shared descriptor, if still in use.
type ShmEntry = ((u64, u64), Weak<File>);

/// A read-only descriptor on a database's wal-index, with the identity it was opened at.
#[derive(Debug, Clone)]
pub struct Shm {
    file: Arc<File>,
    id: (u64, u64),
    path: PathBuf,
}

impl Shm {
    /// Open (or share) the descriptor for the `-shm` file at `path` as it is now.
    ///
    /// # Errors
    /// `Io` naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        let id = file_id(path).ctx(path, "opening wal-index")?;
        let mut files = SHM_FILES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        files.retain(|(_, w)| w.strong_count() > 0);
        if let Some(f) = files
            .iter()
            .find(|(k, _)| *k == id)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(Self {
                file: f,
                id,
                path: path.to_path_buf(),
            });
        }
        let f = Arc::new(File::open(path).ctx(path, "opening wal-index")?);
        // The path may have been replaced between the stat and the open: key by what we got.
        let id = crate::sys::file_id_of(&f).ctx(path, "reading wal-index identity")?;
        files.push((id, Arc::downgrade(&f)));
        Ok(Self {
            file: f,
            id,
            path: path.to_path_buf(),
        })
    }

    /// Is the file at the path still the one this descriptor reads?
    pub fn is_current(&self) -> bool {
        file_id(&self.path).is_ok_and(|id| id == self.id)
    }

    /// The wal-index header, retried briefly while a writer updates it; `None` if it stays torn.
    ///
    /// # Errors
    /// `Io` naming the file.
    pub fn header(&self) -> Result<Option<ShmHeader>> {
        for _ in 0..50 {
            if let Some(h) = ShmHeader::read(&self.file).ctx(&self.path, "reading wal-index")? {
                return Ok(Some(h));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(None)
    }

    /// Does another process hold both the checkpoint and the write lock? That is a FULL,
    /// RESTART or TRUNCATE checkpoint in progress (a PASSIVE one never takes the write lock),
    /// or a recovery: either may be waiting for walbundle's read mark. Locks held by this
    /// process are invisible to the probe (POSIX locks are per process).
    pub fn blocking_checkpoint(&self) -> bool {
        lock_held(&self.file, CKPT_LOCK, 1, true).unwrap_or(false)
            && lock_held(&self.file, WRITE_LOCK, 1, true).unwrap_or(false)
    }

    /// Does another process have a connection to this wal-index (its dead-man-switch lock)?
    pub fn others_attached(&self) -> bool {
        lock_held(&self.file, DMS_LOCK, 1, true).unwrap_or(true)
    }

    /// The identity of the file this descriptor reads.
    pub fn id(&self) -> (u64, u64) {
        self.id
    }
}

/// How many times to try pinning before reporting that commits never paused long enough.
const PIN_ATTEMPTS: u32 = 200;

/// Begin a read transaction on `conn` and return the WAL position it is pinned at (see the
/// module documentation). `Ok(None)` if the wal-index kept changing under every attempt; the
/// connection then has no open transaction.
///
/// # Errors
/// SQLite failures (with a hint when the database is locked exclusively), `Io` on the shm.
pub fn begin_pinned(conn: &Connection, shm: &Shm, db: &Path) -> Result<Option<Pin>> {
    for attempt in 0..PIN_ATTEMPTS {
        let h1 = shm.header()?;
        begin_read(conn, db)?;
        let h2 = shm.header().inspect_err(|_| {
            let _ = end_read(conn, db);
        })?;
        if let (Some(a), Some(b)) = (h1, h2)
            && a.salts == b.salts
            && a.mx_frame == b.mx_frame
            && a.frame_cksum == b.frame_cksum
        {
            let mx = a.mx_frame;
            return Ok(Some(Pin {
                salts: a.salts,
                mx,
                cksum: a.frame_cksum,
                backfilled: a.n_backfill.max(b.n_backfill),
                full: a.n_backfill == mx || b.n_backfill == mx,
            }));
        }
        end_read(conn, db)?;
        if attempt > 10 {
            std::thread::sleep(Duration::from_micros(50 * u64::from(attempt.min(40))));
        }
    }
    Ok(None)
}

/// Start a read transaction and make it read (a deferred `BEGIN` alone reads nothing).
///
/// # Errors
/// SQLite failures (`Busy` names exclusive locking mode in its hint).
pub fn begin_read(conn: &Connection, db: &Path) -> Result<()> {
    conn.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            Error::sqlite(db, "starting read transaction", e)
        })
}

/// End the read transaction, if one is open.
///
/// # Errors
/// SQLite failures.
pub fn end_read(conn: &Connection, db: &Path) -> Result<()> {
    if conn.is_autocommit() {
        return Ok(());
    }
    conn.execute_batch("COMMIT")
        .map_err(|e| Error::sqlite(db, "ending read transaction", e))
}

/// An error for a pin that could not be verified within `PIN_ATTEMPTS` tries.
pub fn unpinnable(db: &Path) -> Error {
    Error::new(
        ErrorKind::Busy,
        "the wal-index changed during every attempt to pin a read transaction (commits never \
         paused for a few microseconds)",
    )
    .at(db)
    .hint("retry; walbundle never blocks the application's writers to get a pin")
}
