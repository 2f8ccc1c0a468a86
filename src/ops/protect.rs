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
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::health::{self, Row, SetsHandle};
use super::sources::{ConfigSources, Defaults, Note};
use crate::capture::engine::{CaptureOptions, CaptureStats, Event};
use crate::capture::supervisor::{self, CaptureSpec};
use crate::chain::BackupSet;
use crate::{Error, Result};

/// What a running [`Protector`] tells the application as it happens, on its capture threads.
/// Every method has an empty default: implement what you log or act on.
pub trait Observer: Send + Sync {
    /// A capture event of `db` (a chain started, a bundle sealed, stopped), with the
    /// database's statistics after it. [`Event::describe`] gives the CLI's log line.
    fn event(&self, db: &str, event: &Event, stats: &CaptureStats) {
        let _ = (db, event, stats);
    }
    /// Capture of `db` into the set folder `set` failed; it is retried with backoff.
    fn error(&self, db: &str, set: &Path, error: &Error) {
        let _ = (db, set, error);
    }
    /// What a look at the config found besides databases to capture (a second name of one
    /// file, a database that matched later, one that cannot be captured).
    fn note(&self, note: &Note) {
        let _ = note;
    }
}

struct Silent;
impl Observer for Silent {}

/// What to protect and how; [`Self::start`] begins.
#[derive(Clone)]
pub struct ProtectorBuilder {
    dbs: Vec<(PathBuf, PathBuf, Option<String>)>,
    config: Option<(PathBuf, Defaults)>,
    opts: CaptureOptions,
    threads: Option<usize>,
    allow_inside_source: bool,
    once: bool,
    fail_fast: bool,
    stop: Stop,
    observer: Arc<dyn Observer>,
    on_error: Option<String>,
    metrics: (Option<String>, Option<PathBuf>),
}

/// The flag that ends a run: the protector's own, or the process's signal flag.
#[derive(Clone)]
enum Stop {
    Own(Arc<AtomicBool>),
    Signals(&'static AtomicBool),
}

impl Stop {
    fn flag(&self) -> &AtomicBool {
        match self {
            Self::Own(f) => f,
            Self::Signals(f) => f,
        }
    }
}

/// Databases under continuous capture on background threads of this process.
pub struct Protector {
    stop: Stop,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<FinalStats>>>,
    /// The metrics endpoint and file writer, if asked for; they end with the run.
    metrics: Option<health::MetricsGuard>,
}

/// Each database's final statistics, by path.
pub type FinalStats = Vec<(String, CaptureStats)>;

struct Shared {
    stats: std::sync::Mutex<BTreeMap<String, CaptureStats>>,
    errors: std::sync::Mutex<BTreeMap<String, String>>,
    /// (database, set folder) of everything captured, growing as a config's patterns match.
    sets: SetsHandle,
    observer: Arc<dyn Observer>,
    /// With `fail_fast`: the first failure, which ends the run.
    fatal: Option<std::sync::Mutex<Option<Error>>>,
    /// The user's command run at every failure.
    on_error: Option<String>,
}

impl Shared {
    fn set_of(&self, db: &str) -> PathBuf {
        self.sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(d, _)| d.display().to_string() == db)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    /// Remember `db`'s failure `e` (its set at `set`) and run the `on_error` hook.
    fn record(&self, db: &str, set: &Path, e: &Error) {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(db.to_string(), e.to_string());
        let set = set.display().to_string();
        super::hook::on_error(
            self.on_error.as_deref(),
            "capture",
            db,
            &set,
            &e.to_string(),
        );
    }

    fn error(&self, db: &str, e: Error) {
        let set = self.set_of(db);
        self.record(db, &set, &e);
        self.observer.error(db, &set, &e);
        if let Some(fatal) = &self.fatal {
            fatal
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(e);
        }
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
            if let Note::Failed { db, set, error } = &n {
                self.record(&db.display().to_string(), set, error);
            }
            self.observer.note(&n);
        }
    }
}

impl Protector {
    /// Nothing yet: add databases with [`ProtectorBuilder::database`] or a config with
    /// [`ProtectorBuilder::config`].
    pub fn builder() -> ProtectorBuilder {
        ProtectorBuilder {
            dbs: Vec::new(),
            config: None,
            opts: CaptureOptions::default(),
            threads: None,
            allow_inside_source: false,
            once: false,
            fail_fast: false,
            stop: Stop::Own(Arc::default()),
            observer: Arc::new(Silent),
            on_error: None,
            metrics: (None, None),
        }
    }

    /// Protect every capture-mode database the TOML config at `path` names: shorthand for
    /// `Protector::builder().config(path, defaults).start()`.
    ///
    /// # Errors
    /// The config cannot be read or resolved, or a database it names now cannot be captured.
    pub fn from_config(path: &Path, defaults: Defaults) -> Result<Self> {
        Self::builder().config(path, defaults).start()
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

    /// The (database, set folder) pairs under capture, shared with
    /// [`health::serve_metrics`] (it grows as a config's patterns match).
    pub fn sets(&self) -> SetsHandle {
        Arc::clone(&self.shared.sets)
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
    pub fn stop(self) -> Result<FinalStats> {
        self.stop.flag().store(true, Ordering::SeqCst);
        self.wait()
    }

    /// Wait until capture ends by itself (after one pass with [`ProtectorBuilder::once`], or
    /// when the signal flag of [`ProtectorBuilder::stop_on_signals`] is set) and return each
    /// database's final statistics.
    ///
    /// # Errors
    /// If the capture threads could not run.
    pub fn wait(mut self) -> Result<FinalStats> {
        let ran = self.thread.take().map(JoinHandle::join);
        drop(self.metrics.take());
        let fatal = self
            .shared
            .fatal
            .as_ref()
            .and_then(|f| f.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(e) = fatal {
            return Err(e);
        }
        match ran {
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
        self.stop.flag().store(true, Ordering::SeqCst);
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

    /// Also protect every capture-mode database the TOML config at `path` names (the format
    /// `walbundle capture --config` reads), matching its patterns again every `rescan` so
    /// databases created later join. `defaults` supplies what the config's tables leave open;
    /// the config's `threads` applies unless [`Self::threads`] is given.
    #[must_use]
    pub fn config(mut self, path: impl AsRef<Path>, defaults: Defaults) -> Self {
        self.config = Some((path.as_ref().to_path_buf(), defaults));
        self
    }

    /// The longest a commit waits to be sealed into a bundle (default 1 s).
    #[must_use]
    pub fn interval(mut self, d: Duration) -> Self {
        self.opts.interval = d;
        self
    }

    /// Every capture option at once (for databases added with [`Self::database`]).
    #[must_use]
    pub fn options(mut self, opts: CaptureOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Capture threads for all databases (default 1, or the config's `threads`, else 4, with a
    /// config; each thread serves its share in turn).
    #[must_use]
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
        self
    }

    /// Allow a destination inside a database's own folder (refused by default: a backup there
    /// dies with the data).
    #[must_use]
    pub fn allow_inside_source(mut self, yes: bool) -> Self {
        self.allow_inside_source = yes;
        self
    }

    /// Capture what is committed now, seal it and end (see [`Protector::wait`]).
    #[must_use]
    pub fn once(mut self, yes: bool) -> Self {
        self.once = yes;
        self
    }

    /// End the whole run at the first failure of any database (after sealing what the others
    /// hold) and have [`Protector::wait`] return that error, instead of retrying with backoff:
    /// what `walbundle capture DB` does for its one database.
    #[must_use]
    pub fn fail_fast(mut self, yes: bool) -> Self {
        self.fail_fast = yes;
        self
    }

    /// End the run when the process gets SIGTERM or SIGINT (installs the handlers): what a
    /// program whose main job is capture wants. An application with signal handling of its
    /// own calls [`Protector::stop`] instead.
    #[must_use]
    pub fn stop_on_signals(mut self) -> Self {
        self.stop = Stop::Signals(supervisor::stop_on_signals());
        self
    }

    /// Run this shell command at every failure of a database (environment: `WALBUNDLE_DB`,
    /// `WALBUNDLE_SET`, `WALBUNDLE_COMMAND`, `WALBUNDLE_ERROR`; see [`super::hook`]). Default: a
    /// config's `on_error`, else none.
    #[must_use]
    pub fn on_error(mut self, cmd: impl Into<String>) -> Self {
        self.on_error = Some(cmd.into());
        self
    }

    /// Serve Prometheus metrics of every protected set while the run lasts: over HTTP on the
    /// loopback address `addr` (e.g. `127.0.0.1:9717`), and/or rewritten to `file` every few
    /// seconds (node_exporter's textfile collector).
    #[must_use]
    pub fn metrics(mut self, addr: Option<String>, file: Option<PathBuf>) -> Self {
        self.metrics = (addr, file);
        self
    }

    /// Tell `observer` every event, failure and config note as it happens.
    #[must_use]
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Open every database and set (creating sets as needed, refusing a set another writer
    /// holds), then capture on background threads. The first snapshot of a new set is taken
    /// there; a database that fails later is retried with backoff, told to the observer and
    /// named in [`Protector::errors`].
    ///
    /// # Errors
    /// A database that cannot be located or is not a SQLite file, a destination inside its
    /// folder, a set that backs up another database or is held by another writer; a config
    /// that cannot be read or resolved.
    pub fn start(self) -> Result<Protector> {
        let mut specs = Vec::new();
        for (db, dest, name) in &self.dbs {
            let spec = super::sources::capture_spec(
                db,
                dest,
                name.as_deref(),
                self.allow_inside_source,
                self.opts.clone(),
            )
            // Fail now if another writer holds the set; capture takes the lock itself.
            .and_then(|spec| BackupSet::open(spec.set.dir())?.lock_writer().map(|_| spec));
            match spec {
                Ok(spec) => specs.push(spec),
                Err(e) => {
                    let (db, err) = (db.display().to_string(), e.to_string());
                    super::hook::on_error(self.on_error.as_deref(), "capture", &db, "", &err);
                    return Err(e);
                }
            }
        }
        let config = match &self.config {
            Some((path, defaults)) => Some(ConfigSources::load(path, defaults.clone())?),
            None => None,
        };
        let on_error = self
            .on_error
            .clone()
            .or_else(|| config.as_ref().and_then(|c| c.config().on_error.clone()));
        let shared = Arc::new(Shared {
            stats: std::sync::Mutex::default(),
            errors: std::sync::Mutex::default(),
            sets: Arc::default(),
            observer: Arc::clone(&self.observer),
            fatal: self.fail_fast.then(std::sync::Mutex::default),
            on_error,
        });
        let mut threads = self.threads.unwrap_or(1);
        let sources = match config {
            Some(sources) => {
                let (found, notes) = sources.scan(true)?;
                shared.notes(notes);
                specs.extend(found);
                threads = self.threads.or(sources.config().threads).unwrap_or(4);
                Some(sources)
            }
            None => None,
        };
        shared.add(&specs);
        let (addr, file) = &self.metrics;
        let metrics = health::serve_metrics(addr.as_deref(), file.as_deref(), &shared.sets)?;
        let thread = spawn(
            specs,
            threads,
            sources,
            self.once,
            self.stop.clone(),
            &shared,
        )?;
        Ok(Protector {
            stop: self.stop,
            shared,
            thread: Some(thread),
            metrics,
        })
    }
}

/// Capture `specs` (and, with `sources`, what its rescans find) on a background thread.
fn spawn(
    specs: Vec<CaptureSpec>,
    threads: usize,
    sources: Option<ConfigSources>,
    once: bool,
    stop: Stop,
    shared: &Arc<Shared>,
) -> Result<JoinHandle<Result<FinalStats>>> {
    let shared = Arc::clone(shared);
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
                        shared.error("config", e);
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
                once,
                discover.as_ref(),
                stop.flag(),
                &|db, e, st| {
                    shared
                        .stats
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(db.to_string(), st.clone());
                    shared.observer.event(db, e, st);
                },
                &|db, e| {
                    shared.error(db, e);
                    if shared.fatal.is_some() {
                        stop.flag().store(true, Ordering::SeqCst);
                    }
                },
            )
        })
        .map_err(|e| Error::io(Path::new("walbundle-capture"), "starting a thread", e))
}
