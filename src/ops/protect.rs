//! Protect databases from inside an application: what `walbundle capture` does, as a value
//! the application starts, asks for statistics and health, and stops.
//!
//! ```
//! # fn main() -> walbundle::Result<()> {
//! # let tmp = std::env::temp_dir().join(format!("walbundle-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(tmp.join("app")).unwrap();
//! # let db = tmp.join("app").join("app.db");
//! # let backups = tmp.join("backups");
//! // The application's own database, in WAL mode.
//! let app = rusqlite::Connection::open(&db).unwrap();
//! app.pragma_update(None, "journal_mode", "WAL").unwrap();
//! app.execute("CREATE TABLE notes(body TEXT)", []).unwrap();
//!
//! let protector = walbundle::ops::protect::Protector::builder()
//!     .database(&db, &backups)
//!     .interval(std::time::Duration::from_millis(200))
//!     .start()?;
//! app.execute("INSERT INTO notes VALUES ('kept')", []).unwrap();
//! # std::thread::sleep(std::time::Duration::from_millis(700));
//! for row in protector.health() {
//!     println!("{}: capture {}", row.db, row.capture_state);
//! }
//! // Stop: everything committed so far is sealed into the set before this returns.
//! assert!(protector.errors().is_empty(), "{:?}", protector.errors());
//! let stats = protector.stop()?;
//! assert_eq!(stats.len(), 1);
//! assert!(stats[0].1.sealed_txn >= 1);
//!
//! // The set restores to a verified database.
//! let set = walbundle::BackupSet::open(&backups.join("app"))?;
//! let plan = walbundle::replay::plan(&set, &walbundle::replay::Target::Latest)?;
//! let out = tmp.join("restored.db");
//! walbundle::replay::restore(&plan, &walbundle::replay::RestoreOptions {
//!     out: out.clone(),
//!     force: false,
//!     check: walbundle::CheckLevel::Quick,
//! }, &walbundle::NoProgress)?;
//! let restored = rusqlite::Connection::open(&out).unwrap();
//! let body: String = restored.query_row("SELECT body FROM notes", [], |r| r.get(0)).unwrap();
//! assert_eq!(body, "kept");
//! # drop(restored); std::fs::remove_dir_all(&tmp).ok();
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::health::{self, Row};
use super::sources::{ConfigSources, Defaults, Note};
use crate::capture::engine::{CaptureOptions, CaptureStats};
use crate::capture::supervisor::{self, CaptureSpec};
use crate::chain::BackupSet;
use crate::{Error, Result};

/// What to protect and how; [`Self::start`] begins.
#[derive(Debug, Clone)]
pub struct ProtectorBuilder {
    dbs: Vec<(PathBuf, PathBuf, Option<String>)>,
    opts: CaptureOptions,
    threads: usize,
    allow_inside_source: bool,
}

/// Databases under continuous capture on background threads of this process.
pub struct Protector {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<FinalStats>>>,
}

/// Each database's final statistics, by path.
pub type FinalStats = Vec<(String, CaptureStats)>;

#[derive(Default)]
struct Shared {
    stats: Mutex<BTreeMap<String, CaptureStats>>,
    errors: Mutex<BTreeMap<String, String>>,
    /// (database, set folder) of everything captured, growing as a config's patterns match.
    sets: Mutex<Vec<(PathBuf, PathBuf)>>,
}

impl Shared {
    fn error(&self, db: &str, e: &str) {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(db.to_string(), e.to_string());
    }

    fn add(&self, specs: &[CaptureSpec]) {
        self.sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(
                specs
                    .iter()
                    .map(|s| (s.src.path.clone(), s.set.dir().to_path_buf())),
            );
    }

    fn notes(&self, notes: Vec<Note>) {
        for n in notes {
            if let Note::Failed { db, error, .. } = n {
                self.error(&db.display().to_string(), &error.to_string());
            }
        }
    }
}

impl Protector {
    /// Nothing yet: add databases with [`ProtectorBuilder::database`].
    pub fn builder() -> ProtectorBuilder {
        ProtectorBuilder {
            dbs: Vec::new(),
            opts: CaptureOptions::default(),
            threads: 1,
            allow_inside_source: false,
        }
    }

    /// Protect every capture-mode database the TOML config at `path` names (the format
    /// `walbundle capture --config` reads), matching its patterns again every `rescan` so
    /// databases created later join. `defaults` supplies what the config's tables leave open.
    ///
    /// # Errors
    /// The config cannot be read or resolved, or a database it names now cannot be captured.
    pub fn from_config(path: &Path, defaults: Defaults) -> Result<Self> {
        let sources = Arc::new(ConfigSources::load(path, defaults)?);
        let (specs, notes) = sources.scan(true)?;
        let threads = sources.config().threads.unwrap_or(4);
        spawn(specs, threads, Some(sources), notes)
    }

    /// The newest statistics of each database (as of its last event: a bundle sealed, a chain
    /// started), by database path.
    pub fn stats(&self) -> BTreeMap<String, CaptureStats> {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last error of each database that failed (capture retries it with backoff).
    pub fn errors(&self) -> BTreeMap<String, String> {
        self.shared
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Each database's health, as `walbundle status` judges a capture (heartbeat fresh, no
    /// failure, oldest unsealed commit younger than five minutes).
    pub fn health(&self) -> Vec<Row> {
        self.shared
            .sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(db, set)| {
                health::row(
                    Some(db),
                    set,
                    Some(super::config::Mode::Capture),
                    None,
                    false,
                )
            })
            .collect()
    }

    /// Seal everything committed so far, stop, and return each database's final statistics.
    ///
    /// # Errors
    /// If the capture threads could not run.
    pub fn stop(mut self) -> Result<FinalStats> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::new(
                crate::ErrorKind::Io,
                "a capture thread panicked; the sets hold what was sealed before it",
            )),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Protector {
    /// Dropping stops capture as [`Protector::stop`] does (its result is lost).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl ProtectorBuilder {
    /// Protect the WAL database `db` in the set `DEST/<file stem>` under `dest`.
    #[must_use]
    pub fn database(mut self, db: impl AsRef<Path>, dest: impl AsRef<Path>) -> Self {
        self.dbs
            .push((db.as_ref().to_path_buf(), dest.as_ref().to_path_buf(), None));
        self
    }

    /// As [`Self::database`], with the set named `name`.
    #[must_use]
    pub fn database_named(
        mut self,
        db: impl AsRef<Path>,
        dest: impl AsRef<Path>,
        name: &str,
    ) -> Self {
        self.dbs.push((
            db.as_ref().to_path_buf(),
            dest.as_ref().to_path_buf(),
            Some(name.to_string()),
        ));
        self
    }

    /// The longest a commit waits to be sealed into a bundle (default 1 s).
    #[must_use]
    pub fn interval(mut self, d: Duration) -> Self {
        self.opts.interval = d;
        self
    }

    /// Every capture option at once.
    #[must_use]
    pub fn options(mut self, opts: CaptureOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Capture threads for all databases (default 1; each thread serves its share in turn).
    #[must_use]
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Allow a destination inside a database's own folder (refused by default: a backup there
    /// dies with the data).
    #[must_use]
    pub fn allow_inside_source(mut self, yes: bool) -> Self {
        self.allow_inside_source = yes;
        self
    }

    /// Open every database and set (creating sets as needed, refusing a set another writer
    /// holds), then capture on background threads. The first snapshot of a new set is taken
    /// there; a database that fails later is retried with backoff and named in
    /// [`Protector::errors`].
    ///
    /// # Errors
    /// A database that cannot be located or is not a SQLite file, a destination inside its
    /// folder, a set that backs up another database or is held by another writer.
    pub fn start(self) -> Result<Protector> {
        let mut specs = Vec::new();
        for (db, dest, name) in &self.dbs {
            let spec = super::sources::capture_spec(
                db,
                dest,
                name.as_deref(),
                self.allow_inside_source,
                self.opts.clone(),
            )?;
            // Fail now if another writer holds the set; capture takes the lock itself.
            BackupSet::open(spec.set.dir())?.lock_writer()?;
            specs.push(spec);
        }
        spawn(specs, self.threads, None, Vec::new())
    }
}

/// Capture `specs` (and, with `sources`, what its rescans find) on a background thread.
fn spawn(
    specs: Vec<CaptureSpec>,
    threads: usize,
    sources: Option<Arc<ConfigSources>>,
    notes: Vec<Note>,
) -> Result<Protector> {
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared::default());
    shared.add(&specs);
    shared.notes(notes);
    let thread = {
        let (stop, shared) = (Arc::clone(&stop), Arc::clone(&shared));
        std::thread::Builder::new()
            .name("walbundle-capture".into())
            .spawn(move || {
                let find = || -> Vec<CaptureSpec> {
                    let Some(src) = &sources else {
                        return Vec::new();
                    };
                    match src.scan(false) {
                        Ok((specs, notes)) => {
                            shared.add(&specs);
                            shared.notes(notes);
                            specs
                        }
                        Err(e) => {
                            shared.error("config", &e.to_string());
                            Vec::new()
                        }
                    }
                };
                let discover = sources.as_ref().map(|s| supervisor::Discover {
                    every: s.rescan(),
                    find: &find,
                });
                supervisor::run_many(
                    specs,
                    threads,
                    false,
                    discover.as_ref(),
                    &stop,
                    &|db, _, st| {
                        shared
                            .stats
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(db.to_string(), st.clone());
                    },
                    &|db, e| shared.error(db, &e.to_string()),
                )
            })
            .map_err(|e| Error::io(Path::new("walbundle-capture"), "starting a thread", e))?
    };
    Ok(Protector {
        stop,
        shared,
        thread: Some(thread),
    })
}
