//! Restore: choose what to replay (a [`RestorePlan`]), stage it beside the output, prove it,
//! and only then publish it atomically.
//!
//! The output is never written in place: the database is materialised into a temporary file in
//! the output's own folder, its hashes and state checksum are checked while it is written,
//! SQLite's integrity check runs on the staged file (opened `immutable`, so no sidecar appears),
//! and a rename puts it in place. A failure at any step removes the temporary and leaves the old
//! output, if any, untouched.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

pub mod apply;
pub mod plan;

pub use apply::{Replayed, replay_into, replay_into_holding};
pub use plan::{RestorePlan, Stop, Target, parse_time, plan};

use crate::bundle::image::{ImageSummary, decode_image_unchecked};
use crate::bundle::manifest::GenerationManifest;
use crate::error::{Error, ErrorKind, IoContext, Result, SqlContext};
use crate::progress::Progress;
use crate::sqlite::source::sidecar;
use crate::store::{TEMP_PREFIX, sync_dir};

/// Which SQLite check proves a materialised database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum CheckLevel {
    /// `PRAGMA integrity_check`: every page, index and constraint.
    Full,
    /// `PRAGMA quick_check`: structure without index cross-checks; O(N) instead of O(N log N).
    Quick,
    /// No SQLite check (hashes and checksums are still verified).
    None,
}

impl CheckLevel {
    /// Name as written in manifests and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Quick => "quick",
            Self::None => "none",
        }
    }
}

/// `file:` URI for `path` (percent-encoding everything but unreserved characters and `/`).
pub fn file_uri(path: &Path, query: &str) -> String {
    let mut s = String::from("file:");
    for &b in crate::sys::path_bytes(path).iter() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push('?');
    s.push_str(query);
    s
}

/// Run SQLite's check on the database file at `path`, opened read-only and immutable.
///
/// # Errors
/// `Corrupt` with SQLite's first findings if the check fails; `Sqlite` if it cannot run.
pub fn integrity_check(path: &Path, level: CheckLevel) -> Result<()> {
    if level == CheckLevel::None {
        return Ok(());
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let c = Connection::open_with_flags(file_uri(path, "immutable=1"), flags)
        .sql_ctx(path, "opening staged database")?;
    let pragma = if level == CheckLevel::Full {
        "integrity_check(20)"
    } else {
        "quick_check(20)"
    };
    let mut stmt = c
        .prepare(&format!("PRAGMA {pragma}"))
        .sql_ctx(path, "running integrity check")?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|it| it.collect())
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                Error::corrupt(
                    path,
                    format!("SQLite integrity check could not read it: {e}"),
                )
            }
            _ => Error::sqlite(path, "running integrity check", e),
        })?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    Err(Error::corrupt(
        path,
        format!(
            "SQLite {} check failed: {}",
            level.as_str(),
            rows.join("; ")
        ),
    ))
}

/// A temporary file that deletes itself unless kept.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// Create a new temporary file named after `final_name` in `dir`.
    ///
    /// # Errors
    /// `Io` naming the folder.
    pub fn create_in(dir: &Path, final_name: &str) -> Result<(Self, File)> {
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        let host = xxhash_rust::xxh3::xxh3_64(crate::sys::hostname().as_bytes()) >> 32;
        let name = format!(
            "{TEMP_PREFIX}{host:08x}-{}-{:08x}-{final_name}",
            std::process::id(),
            u32::from_le_bytes(r)
        );
        let path = dir.join(name);
        let f = File::create_new(&path).ctx(&path, "creating temporary file")?;
        Ok((Self { path, keep: false }, f))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Do not delete on drop (it was renamed away).
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// How to publish a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Where the database should appear.
    pub out: PathBuf,
    /// Replace an existing output (moving it and its sidecars aside, never deleting them).
    pub force: bool,
    /// SQLite check on the staged database.
    pub check: CheckLevel,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The plan executed.
    pub plan: RestorePlan,
    /// The published database.
    pub out: PathBuf,
    /// Bytes written.
    pub bytes: u64,
    /// The state reached (transaction, time, state checksum).
    pub reached: Replayed,
    /// State checksum of the result.
    pub state_checksum: String,
    /// SQLite check that passed.
    pub check: CheckLevel,
    /// Files moved aside to make room (with `--force`).
    pub moved_aside: Vec<PathBuf>,
}

/// Refuse to touch `out` while a SQLite connection (any process) has it open.
fn refuse_if_in_use(out: &Path) -> Result<()> {
    #[cfg(windows)]
    {
        // Windows: locks cannot be probed (crate::sys), but open handles can: an exclusive
        // open (no sharing) fails with a sharing violation while any process has the file open.
        use std::os::windows::fs::OpenOptionsExt;
        for p in [
            out.to_path_buf(),
            sidecar(out, "-wal"),
            sidecar(out, "-shm"),
        ] {
            let probe = std::fs::OpenOptions::new()
                .read(true)
                .share_mode(0)
                .open(&p);
            if probe.is_err_and(|e| e.raw_os_error() == Some(32)) {
                return Err(in_use(out));
            }
        }
        Ok(())
    }
    #[cfg(not(windows))]
    refuse_if_in_use_unix(out)
}

#[cfg(not(windows))]
fn refuse_if_in_use_unix(out: &Path) -> Result<()> {
    // WAL mode: every open connection holds a shared lock on the -shm "dead man switch" byte.
    let shm = sidecar(out, "-shm");
    if let Ok(f) = File::open(&shm)
        && crate::sys::lock_held(&f, 128, 1, true).unwrap_or(false)
    {
        return Err(in_use(out));
    }
    // Any mode: a connection inside a transaction holds locks near the pending byte.
    if let Ok(f) = File::open(out) {
        let pending = i64::try_from(crate::bundle::checksum::PENDING_BYTE).unwrap_or(i64::MAX);
        if crate::sys::lock_held(&f, pending, 512, true).unwrap_or(false) {
            return Err(in_use(out));
        }
    }
    Ok(())
}

fn in_use(out: &Path) -> Error {
    Error::refused("is open in another process (it holds SQLite locks on it)")
        .at(out)
        .hint("stop the application that uses this database, then restore again")
}

/// [`restore`], and with `until_break`, when a bundle of the plan turns out damaged while it
/// is replayed, once more up to the last transaction before that bundle (the plan returned
/// then says why in `partial`).
///
/// # Errors
/// As [`restore`]; without `until_break`, or when the damage is not inside a planned bundle,
/// the first failure.
pub fn restore_until_break(
    plan: RestorePlan,
    opts: &RestoreOptions,
    until_break: bool,
    progress: &dyn Progress,
) -> Result<(RestorePlan, RestoreReport)> {
    match restore(&plan, opts, progress) {
        Err(e) if until_break && e.kind() == crate::ErrorKind::Corrupt => {
            let failed = e
                .path()
                .and_then(|p| plan.bundles.iter().find(|b| b.path == p))
                .map(|b| b.seq);
            match failed.and_then(|seq| plan.cut_before(seq, e.to_string())) {
                Some(shorter) => {
                    let r = restore(&shorter, opts, progress)?;
                    Ok((shorter, r))
                }
                None => Err(e),
            }
        }
        other => other.map(|r| (plan, r)),
    }
}

/// Execute `plan`: stage beside `opts.out`, verify, publish atomically.
///
/// # Errors
/// `Refused` if `out` exists (without `force`) or is in use; `Corrupt` if any check fails;
/// `Io` for the output folder. On every error the output is untouched and no temporary remains.
pub fn restore(
    plan: &RestorePlan,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let out = &opts.out;
    if out.is_dir() {
        return Err(Error::usage("is a folder; --out names the database file to create").at(out));
    }
    let sidecars = [
        sidecar(out, "-wal"),
        sidecar(out, "-shm"),
        sidecar(out, "-journal"),
    ];
    let existing: Vec<&PathBuf> = std::iter::once(out)
        .chain(sidecars.iter())
        .filter(|p| p.exists())
        .collect();
    if !existing.is_empty() && !opts.force {
        let names: Vec<String> = existing.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::refused(format!(
            "already exists ({}); nothing was changed",
            names.join(", ")
        ))
        .at(out)
        .hint(
            "restore to a new path, or pass --force to move the old files aside (they are kept)",
        ));
    }
    if !existing.is_empty() {
        refuse_if_in_use(out)?;
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    crate::store::ensure_dir_durable(&dir)?;
    let name = out
        .file_name()
        .map_or_else(|| "restore.db".into(), |n| n.to_string_lossy().into_owned());
    let (tmp, mut f) = TempFile::create_in(&dir, &name)?;
    let hint = |e: Error| {
        if e.kind() == ErrorKind::Corrupt && e.hint_text().is_none() {
            e.hint("nothing was published; `walbundle verify` names every problem and `walbundle list` the other restorable points (--txn N)")
        } else {
            e
        }
    };
    let reached = replay_into(plan, &mut f, tmp.path(), progress).map_err(hint)?;
    // The check reads the staged pages while the kernel writes them to disk: the fsync and the
    // check overlap, and both must succeed before anything is published.
    let (synced, checked) = std::thread::scope(|s| {
        let sync = s.spawn(|| f.sync_all());
        let checked = integrity_check(tmp.path(), opts.check);
        let synced = sync
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the syncing thread failed")));
        (synced, checked)
    });
    synced.ctx(tmp.path(), "syncing")?;
    checked.map_err(hint)?;
    drop(f);

    let mut moved = Vec::new();
    if !existing.is_empty() {
        refuse_if_in_use(out)?;
        let stamp = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let suffix_of = |p: &Path| p.to_string_lossy()[out.to_string_lossy().len()..].to_string();
        // A second `--force` restore within the same second gets `-2`, `-3`, ...: never a name
        // that is taken (the rename would refuse and the restore fail).
        let mut n = 1u32;
        let aside = loop {
            let tag = if n == 1 {
                stamp.clone()
            } else {
                format!("{stamp}-{n}")
            };
            let a = sidecar(out, &format!(".walbundle-old-{tag}"));
            let taken = std::iter::once(out)
                .chain(sidecars.iter())
                .any(|p| sidecar(&a, &suffix_of(p)).exists());
            if !taken || n >= 10_000 {
                break a;
            }
            n += 1;
        };
        for p in std::iter::once(out).chain(sidecars.iter()) {
            if p.exists() {
                let to = sidecar(&aside, &suffix_of(p));
                crate::sys::rename_noreplace(p, &to).ctx(p, "moving aside")?;
                moved.push(to);
            }
        }
    }
    crate::sys::rename_noreplace(tmp.path(), out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::refused("appeared while restoring; nothing was changed").at(out)
        } else {
            Error::io(out, "publishing restored database", e)
        }
    })?;
    tmp.keep();
    sync_dir(&dir)?;
    Ok(RestoreReport {
        plan: plan.clone(),
        out: out.clone(),
        bytes: u64::from(reached.page_count) * u64::from(plan.page_size),
        state_checksum: reached.state_checksum.clone(),
        reached,
        check: opts.check,
        moved_aside: moved,
    })
}

/// Materialise generation `m` from `image` into a scratch file in `scratch_dir`, require it to
/// match its manifest, and run the SQLite check on it; the scratch file is removed afterwards.
///
/// # Errors
/// As [`check_image`], and `Corrupt` if the image is not the one `m` describes.
pub fn check_generation(
    image: &Path,
    m: &GenerationManifest,
    scratch_dir: &Path,
    level: CheckLevel,
    progress: &dyn Progress,
) -> Result<ImageSummary> {
    let s = check_image(
        image,
        m.page_size,
        m.page_count,
        scratch_dir,
        level,
        progress,
    )?;
    s.matches(image, m)?;
    Ok(s)
}

/// Decode an image not yet described by a manifest (`page_size` × `page_count`) into a scratch
/// file, compute its hashes and state checksum, and run the SQLite check on it.
///
/// # Errors
/// `Corrupt` naming the image if it does not decode or fails the check.
pub fn check_image(
    image: &Path,
    page_size: u32,
    page_count: u32,
    scratch_dir: &Path,
    level: CheckLevel,
    progress: &dyn Progress,
) -> Result<ImageSummary> {
    let (tmp, mut f) = TempFile::create_in(scratch_dir, "verify.db")?;
    progress.begin("verifying", u64::from(page_size) * u64::from(page_count));
    let mut w = BufWriter::with_capacity(1 << 20, &mut f);
    let s = decode_image_unchecked(
        image,
        page_size,
        page_count,
        None,
        |_, page| w.write_all(page).ctx(tmp.path(), "writing"),
        |n| progress.advance(n),
    )?;
    w.flush().ctx(tmp.path(), "writing")?;
    drop(w);
    drop(f);
    progress.end();
    integrity_check(tmp.path(), level).map_err(|e| {
        if e.kind() == ErrorKind::Corrupt {
            Error::corrupt(image, format!("the image decodes, but {}", e.message()))
        } else {
            e
        }
    })?;
    Ok(s)
}
