//! The live source database: locating it, checking it is SQLite, opening the connections the
//! capture protocol needs, and the guard against destinations inside the source's folder.
//!
//! Connections opened here never checkpoint on close (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`) and
//! never auto-checkpoint, so walbundle closing its connections can neither checkpoint nor delete
//! the application's WAL.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, config::DbConfig};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, IoContext, Result, SqlContext};

/// Identity of the database a set backs up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    /// Canonical absolute path of the database file.
    pub path: String,
    /// Host name of the machine it lives on.
    pub host: String,
}

/// What the first 100 bytes of a database file say.
#[derive(Debug, Clone, Copy)]
pub struct DbHeader {
    /// Page size in bytes.
    pub page_size: u32,
    /// File format write version: 1 rollback journal, 2 WAL.
    pub write_version: u8,
}

/// A source database, located and canonicalised.
#[derive(Debug, Clone)]
pub struct SourceDb {
    /// The path as the user gave it.
    pub path: PathBuf,
    /// Canonical absolute path.
    pub canonical: PathBuf,
}

impl SourceDb {
    /// Locate `path`: it must exist and be a regular file.
    ///
    /// # Errors
    /// `Io` (not found, permission) or `Usage` (a folder) naming the path.
    pub fn locate(path: &Path) -> Result<Self> {
        let md = std::fs::metadata(path).map_err(|e| {
            Error::io(path, "opening source database", e)
                .hint("check the path; walbundle never creates the database it backs up")
        })?;
        if md.is_dir() {
            return Err(Error::usage("is a folder, not a SQLite database file").at(path));
        }
        let canonical = crate::sys::canonicalize(path).ctx(path, "resolving path")?;
        Ok(Self {
            path: path.to_path_buf(),
            canonical,
        })
    }

    /// Stem of the file name: the default set name (`app.db` → `app`).
    pub fn default_set_name(&self) -> String {
        self.canonical
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "db".into())
    }

    /// The identity a set records.
    pub fn identity(&self) -> SourceIdentity {
        SourceIdentity {
            path: self.canonical.to_string_lossy().into_owned(),
            host: crate::sys::hostname(),
        }
    }

    /// Read and check the database header. Call only while this process holds no SQLite
    /// connection to the file: closing our own descriptor would drop SQLite's POSIX locks.
    ///
    /// # Errors
    /// `Corrupt` for an empty, truncated or non-SQLite file; `Io` if unreadable.
    pub fn read_header(&self) -> Result<DbHeader> {
        let p = &self.path;
        let mut f = File::open(p).ctx(p, "opening source database")?;
        let mut b = [0u8; 100];
        let mut n = 0;
        while n < 100 {
            match f.read(&mut b[n..]).ctx(p, "reading database header")? {
                0 => break,
                k => n += k,
            }
        }
        drop(f);
        if n == 0 {
            return Err(
                Error::corrupt(p, "is empty (0 bytes): not a SQLite database yet")
                    .hint("nothing to back up until the application has created it"),
            );
        }
        if b[..16.min(n)] != b"SQLite format 3\0"[..16.min(n)] {
            return Err(Error::corrupt(
                p,
                "is not a SQLite database (no \"SQLite format 3\" header)",
            ));
        }
        if n < 100 {
            return Err(Error::corrupt(
                p,
                format!("is truncated: {n} bytes, shorter than a SQLite header"),
            ));
        }
        // The SQLite header stores the page size big-endian (sqlite.org/fileformat2.html).
        let raw = (u32::from(b[16]) << 8) | u32::from(b[17]);
        let page_size = if raw == 1 { 65536 } else { raw };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(Error::corrupt(
                p,
                format!("header page size {raw} is invalid: damaged file"),
            ));
        }
        Ok(DbHeader {
            page_size,
            write_version: b[18],
        })
    }

    /// Open a connection for walbundle's own use: `query_only` (it can never take the write
    /// lock: walbundle only reads and runs PASSIVE checkpoints), and it never checkpoints on
    /// its own or on close.
    ///
    /// # Errors
    /// `Sqlite`/`Busy` naming the database.
    pub fn connect(&self, busy_timeout: Duration) -> Result<Connection> {
        let p = &self.path;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let c = Connection::open_with_flags(p, flags).sql_ctx(p, "opening database")?;
        c.busy_timeout(busy_timeout)
            .sql_ctx(p, "setting busy timeout")?;
        c.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .sql_ctx(p, "disabling checkpoint on close")?;
        c.pragma_update(None, "query_only", true)
            .sql_ctx(p, "setting query_only")?;
        Ok(c)
    }

    /// Path of the WAL file. SQLite names sidecars after the database's real path (it
    /// resolves symlinks), so they are found beside the canonical path, not the given one.
    pub fn wal_path(&self) -> PathBuf {
        sidecar(&self.canonical, "-wal")
    }

    /// Path of the wal-index file (beside the canonical path, as [`Self::wal_path`]).
    pub fn shm_path(&self) -> PathBuf {
        sidecar(&self.canonical, "-shm")
    }
}

/// `path` with `suffix` appended to its file name (SQLite's sidecar naming).
pub fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Refuse a destination inside the folder that holds the source database, unless allowed.
///
/// # Errors
/// `Refused` naming both paths.
pub fn guard_destination(src: &SourceDb, dest: &Path, allow_inside: bool) -> Result<()> {
    let Some(src_dir) = src.canonical.parent() else {
        return Ok(());
    };
    let dest_abs = canonical_prefix(dest)?;
    if dest_abs.starts_with(src_dir) && !allow_inside {
        return Err(Error::new(
            ErrorKind::Refused,
            format!(
                "destination lies inside {}, the folder of the database it backs up: a backup \
                 there dies with the data, and a sync of that folder would copy it too",
                src_dir.display()
            ),
        )
        .at(dest)
        .hint("choose a destination outside that folder, or pass --allow-inside-source"));
    }
    Ok(())
}

/// Canonicalise the longest existing ancestor of `p` and append the rest.
fn canonical_prefix(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .ctx(p, "reading current folder")?
            .join(p)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = crate::sys::canonicalize(existing) {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Ok(out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return Ok(abs),
        }
    }
}

/// Page `pgno` as `r`'s read transaction sees it (`sqlite_dbpage`), or `None` if it cannot be
/// read (past the end, the lock-byte page, no `sqlite_dbpage`): callers use it only as a hint
/// they check.
pub fn read_page(r: &Connection, pgno: u32) -> Option<Vec<u8>> {
    let mut stmt = r
        .prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")
        .ok()?;
    stmt.query_row([pgno], |row| row.get::<_, Vec<u8>>(0)).ok()
}

/// Every page 1..=`page_count` of the database as `r`'s read transaction sees it, in order,
/// byte-exact (`sqlite_dbpage`). Pages `sqlite_dbpage` does not return (the lock-byte page) are
/// handed over as zeros, which is what the file holds there.
///
/// # Errors
/// `Sqlite` naming the database (with a hint if the build lacks `sqlite_dbpage`); `Corrupt` if
/// pages come back out of order or with the wrong size; any error from `f`.
pub fn each_page(
    r: &Connection,
    p: &Path,
    page_size: u32,
    page_count: u32,
    mut f: impl FnMut(u32, &[u8]) -> Result<()>,
) -> Result<()> {
    let zeros = vec![0u8; page_size as usize];
    let mut next: u32 = 1;
    let mut stmt = r.prepare("SELECT pgno, data FROM sqlite_dbpage").map_err(|e| {
        Error::sqlite(p, "reading pages", e)
            .hint("this build of walbundle lacks SQLITE_ENABLE_DBPAGE_VTAB; build it from its own folder")
    })?;
    let mut rows = stmt.query([]).sql_ctx(p, "reading pages")?;
    while let Some(row) = rows.next().sql_ctx(p, "reading pages")? {
        let pgno: u32 = row.get(0).sql_ctx(p, "reading pages")?;
        let data = row
            .get_ref(1)
            .and_then(|v| Ok(v.as_blob()?))
            .sql_ctx(p, "reading pages")?;
        if pgno < next || pgno > page_count {
            return Err(Error::corrupt(
                p,
                format!("sqlite_dbpage returned page {pgno} out of order"),
            ));
        }
        if data.len() != page_size as usize && !data.is_empty() {
            return Err(Error::corrupt(
                p,
                format!("page {pgno} is {} bytes, not {page_size}", data.len()),
            ));
        }
        while next < pgno {
            f(next, &zeros)?;
            next += 1;
        }
        f(pgno, if data.is_empty() { &zeros } else { data })?;
        next += 1;
    }
    while next <= page_count {
        f(next, &zeros)?;
        next += 1;
    }
    Ok(())
}

/// The main database file of `c` as SQLite holds it open (`SQLITE_FCNTL_FILE_POINTER`).
#[expect(unsafe_code)]
fn main_file(c: &Connection) -> std::io::Result<*mut rusqlite::ffi::sqlite3_file> {
    use rusqlite::ffi;
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `c.handle()` is a live connection for the duration of this call (borrowed), the
    // schema name is a NUL-terminated literal, and SQLITE_FCNTL_FILE_POINTER writes one
    // `sqlite3_file*` through the pointer we pass, which points at a local of that type.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            c.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        )
    };
    if rc != ffi::SQLITE_OK || file.is_null() {
        return Err(std::io::Error::other(format!(
            "file pointer: SQLite code {rc}"
        )));
    }
    Ok(file)
}

/// Make the main database file of `c` durable (fsync) through SQLite's own file handle, taking
/// no lock: capture flushes what the application's checkpoints copied into the database before
/// it takes the checkpoint lock itself, so that its checkpoint's own sync (inside that lock) has
/// little left to write. Going through SQLite's handle, not a descriptor of our own, matters:
/// closing any descriptor on the file would drop the POSIX locks of this process's SQLite
/// connections (see the brief's note on `-shm`).
///
/// # Errors
/// SQLite's error code from the file control or the sync, as an `io::Error`.
#[expect(unsafe_code)]
pub fn sync_main_file(c: &Connection) -> std::io::Result<()> {
    let file = main_file(c)?;
    // SAFETY: `main_file` returned the connection's open main-database file, which stays open
    // while `c` is borrowed; an open file always has its methods, and xSync only syncs that
    // file's descriptor (no lock is taken or released).
    let rc = unsafe {
        match (*file).pMethods.as_ref().and_then(|m| m.xSync) {
            Some(sync) => sync(file, rusqlite::ffi::SQLITE_SYNC_NORMAL),
            None => rusqlite::ffi::SQLITE_OK,
        }
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("sync: SQLite code {rc}")))
    }
}

/// Read `buf.len()` bytes at `offset` of the main database file of `c`, raw, through SQLite's
/// own file handle (for the same reason as [`sync_main_file`]): what the file holds, not what a
/// read transaction sees, so callers use it only as a hint they check. About a third of the
/// cost of one `sqlite_dbpage` query per page. Returns false on any error or a short read.
#[expect(unsafe_code)]
pub fn read_main_file(c: &Connection, offset: u64, buf: &mut [u8]) -> bool {
    let (Ok(file), Ok(off), Ok(amt)) = (
        main_file(c),
        i64::try_from(offset),
        std::ffi::c_int::try_from(buf.len()),
    ) else {
        return false;
    };
    // SAFETY: as in `sync_main_file`; xRead writes at most `amt` bytes into `buf`, which is
    // that long, and takes no lock (the unix and Windows VFSs read with pread/ReadFile).
    let rc = unsafe {
        match (*file).pMethods.as_ref().and_then(|m| m.xRead) {
            Some(read) => read(file, buf.as_mut_ptr().cast(), amt, off),
            None => rusqlite::ffi::SQLITE_IOERR,
        }
    };
    rc == rusqlite::ffi::SQLITE_OK
}
