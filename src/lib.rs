//! walbundle backs up live SQLite databases incrementally and verifiably.
//!
//! The modules follow the data, in layers; each uses only its own layer and those below it
//! (`tests/layers.rs` fails on an edge that climbs, or on a cycle):
//!
//! 1. [`sqlite`] — what walbundle knows about SQLite's own files: the WAL and wal-index formats,
//!    sidecars, opening a source, reading pages, probing locks.
//! 2. [`bundle`] — the format's bytes, pure encode and decode: WAL bundles, images, the state
//!    checksum, manifests and the set record.
//! 3. [`store`] — the one seam through which bytes reach a destination: the [`store::Store`]
//!    trait (put-if-absent, get, ranged get, list by prefix, delete), a local folder and an
//!    S3-compatible object store behind it.
//! 4. [`chain`] — backup sets: their layout, what they hold ([`BackupSet::inventory`]), and a
//!    cheap summary for monitoring ([`BackupSet::summary`]).
//! 5. The stages: [`capture`] reads the live source (snapshots, and WAL bundles in
//!    checkpoint-controlled windows); [`replay`] stages a generation and its bundles into a
//!    database, proves it and publishes it atomically; [`verify`] checks a set, replaying with
//!    `deep`; [`compact`] folds history into new generations and retires what no restore
//!    point needs.
//!
//! 6. [`ops`] — operations over many databases: the config file, status and metrics,
//!    schedules, and [`ops::protect::Protector`], capture embedded in an application.
//!
//! Beside them: [`error`] (one error type, each message naming the file and what to do),
//! [`progress`], and the test seams in `fault`.
//!
//! ```no_run
//! use walbundle::{BackupSet, NoProgress, SnapshotOptions, SourceDb};
//! # fn main() -> walbundle::Result<()> {
//! let src = SourceDb::locate("app.db".as_ref())?;
//! let mut set = BackupSet::open_or_create("/backups".as_ref(), "app", &src.identity())?;
//! set.lock_writer()?;
//! let report = walbundle::capture::snapshot::snapshot(&set, &src, &SnapshotOptions::default(), &NoProgress)?;
//! println!("generation {} at txn {}", report.generation_dir.display(), report.manifest.txn);
//! # Ok(()) }
//! ```

pub mod bundle;
pub mod capture;
pub mod chain;
pub mod compact;
pub mod error;
#[doc(hidden)]
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
pub mod ops;
pub mod progress;
pub mod replay;
pub mod sqlite;
pub mod store;
mod sys;
pub mod verify;

pub use capture::snapshot::{SnapshotOptions, SnapshotReport};
pub use chain::BackupSet;
pub use error::{Error, ErrorKind, Result};
pub use progress::{NoProgress, Progress};
pub use replay::CheckLevel;
pub use sqlite::source::SourceDb;
