//! The capture-mode databases a config names, as capture specs: resolved once at start and again
//! at every rescan (patterns match new databases while capture runs), one per database *file*
//! whatever names reach it, each with the options its table and the defaults give.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::config::{Config, Mode, Resolved, duration};
use crate::capture::engine::CaptureOptions;
use crate::capture::supervisor::CaptureSpec;
use crate::chain::BackupSet;
use crate::sqlite::source::{SourceDb, guard_destination};
use crate::{Error, Result};

/// What a look at the config found besides specs to capture.
#[derive(Debug)]
pub enum Note {
    /// `db` is the same file as `first` (a symlink, a hard link, overlapping patterns): it is
    /// captured once, under the first name. A second capturer would read the header through a
    /// descriptor of its own and, closing it, drop the POSIX locks the first one's SQLite
    /// connections hold.
    SameFile {
        /// The later name.
        db: PathBuf,
        /// The name it is captured under.
        first: PathBuf,
    },
    /// A database matched later (at a rescan) and is now captured into `set`.
    Matched {
        /// The database.
        db: PathBuf,
        /// Its set folder.
        set: PathBuf,
    },
    /// A database that cannot be captured (reported once; it is tried again at the next scan
    /// only if it changes name).
    Failed {
        /// The database.
        db: PathBuf,
        /// Its set folder.
        set: PathBuf,
        /// Why.
        error: Error,
    },
}

impl Note {
    /// The note as a log line (what `walbundle capture --config` prints).
    pub fn describe(&self) -> String {
        match self {
            Self::SameFile { db, first } => format!(
                "{}: the same database file as {}; captured once, under the first name",
                db.display(),
                first.display()
            ),
            Self::Matched { db, set } => format!(
                "{}: new database matched; capturing into {}",
                db.display(),
                set.display()
            ),
            Self::Failed { db, error, .. } => format!("{}: {error}", db.display()),
        }
    }
}

/// Per-database overrides the config's tables may not set, and what to start from.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Capture options for every database (its `interval`, `max_wal_mib`, `max_bundle_mib` may
    /// override them).
    pub opts: CaptureOptions,
    /// A destination for entries without one (the command line's `--dest`).
    pub dest: Option<PathBuf>,
    /// Allow destinations inside a database's own folder for every entry.
    pub allow_inside_source: bool,
}

/// The config's capture-mode databases, remembered across rescans.
pub struct ConfigSources {
    cfg: Config,
    path: PathBuf,
    defaults: Defaults,
    interval: Duration,
    files: Mutex<HashMap<(u64, u64), PathBuf>>,
    known: Mutex<HashSet<PathBuf>>,
}

/// Capture options with `interval` and the poll it implies.
pub fn options_with(
    base: &CaptureOptions,
    interval: Duration,
    max_wal_mib: u64,
    max_bundle_mib: u64,
) -> CaptureOptions {
    CaptureOptions {
        interval,
        poll: interval
            .min(Duration::from_millis(100))
            .max(Duration::from_millis(5)),
        max_wal_bytes: max_wal_mib.max(1) << 20,
        max_bundle_bytes: max_bundle_mib.max(1) << 20,
        ..base.clone()
    }
}

/// Open `db` and its set under `dest` for capture: locate it, read its header (before any
/// connection to it exists in this process, whose closing would drop SQLite's POSIX locks),
/// refuse a destination inside its folder unless allowed, and open or create the set `name`
/// (default: the file stem).
///
/// # Errors
/// The database cannot be located or is not SQLite, the destination lies inside its folder, or
/// the set backs up another database.
pub fn capture_spec(
    db: &Path,
    dest: &Path,
    name: Option<&str>,
    allow_inside_source: bool,
    opts: CaptureOptions,
) -> Result<CaptureSpec> {
    let src = SourceDb::locate(db)?;
    src.read_header()?;
    if let crate::store::Location::Local(dir) = crate::store::Location::parse(dest)? {
        guard_destination(&src, &dir, allow_inside_source)?;
    }
    let name = name.map_or_else(|| src.default_set_name(), str::to_string);
    let set = BackupSet::open_or_create(dest, &name, &src.identity())?;
    Ok(CaptureSpec { src, set, opts })
}

fn file_key(p: &Path) -> Option<(u64, u64)> {
    crate::sys::file_id(p).ok()
}

impl ConfigSources {
    /// Load the config at `path`.
    ///
    /// # Errors
    /// The config cannot be read, or its `interval` is not a duration.
    pub fn load(path: &Path, defaults: Defaults) -> Result<Self> {
        let cfg = Config::load(path)?;
        let interval = match &cfg.interval {
            Some(s) => duration(s).map_err(|e| Error::usage(e).at(path))?,
            None => defaults.opts.interval,
        };
        Ok(Self {
            cfg,
            path: path.to_path_buf(),
            defaults,
            interval,
            files: Mutex::new(HashMap::new()),
            known: Mutex::new(HashSet::new()),
        })
    }

    /// The config as written.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Specs for the capture-mode databases not seen before, and what else was found. The first
    /// call fails on the first database that cannot be captured (a start-up error the user
    /// should see at once); later calls (`rescan`) report such databases as [`Note::Failed`].
    ///
    /// # Errors
    /// The config's patterns cannot be resolved; on the first call, a database cannot be
    /// captured.
    pub fn scan(&self, first: bool) -> Result<(Vec<CaptureSpec>, Vec<Note>)> {
        let now = self
            .cfg
            .resolve(&self.path, self.defaults.dest.as_deref())?;
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut specs, mut notes) = (Vec::new(), Vec::new());
        for r in now.into_iter().filter(|r| r.mode == Mode::Capture) {
            if !known.insert(r.db.clone()) {
                continue;
            }
            if let Some(k) = file_key(&r.db) {
                if let Some(first_name) = files.get(&k) {
                    notes.push(Note::SameFile {
                        db: r.db.clone(),
                        first: first_name.clone(),
                    });
                    continue;
                }
                files.insert(k, r.db.clone());
            }
            match self.spec(&r) {
                Ok(spec) => {
                    if !first {
                        notes.push(Note::Matched {
                            db: r.db.clone(),
                            set: spec.set.dir().to_path_buf(),
                        });
                    }
                    specs.push(spec);
                }
                Err(e) if first => return Err(e),
                Err(error) => notes.push(Note::Failed {
                    db: r.db.clone(),
                    set: r.set_dir(),
                    error,
                }),
            }
        }
        Ok((specs, notes))
    }

    /// How often to scan again.
    pub fn rescan(&self) -> Duration {
        self.cfg.rescan()
    }

    fn spec(&self, r: &Resolved) -> Result<CaptureSpec> {
        let interval = match &r.entry.interval {
            Some(s) => duration(s).map_err(|e| Error::usage(e).at(&self.path))?,
            None => self.interval,
        };
        let base = &self.defaults.opts;
        let opts = options_with(
            base,
            interval,
            r.entry.max_wal_mib.unwrap_or(base.max_wal_bytes >> 20),
            r.entry
                .max_bundle_mib
                .unwrap_or(base.max_bundle_bytes >> 20),
        );
        capture_spec(
            &r.db,
            &r.dest,
            Some(&r.name),
            r.allow_inside_source || self.defaults.allow_inside_source,
            opts,
        )
    }
}
