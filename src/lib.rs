//! walbundle backs up live SQLite databases incrementally and verifiably.
//!
//! The pipeline, one module per stage:
//! - [`capture`] reads the live source: page-exact snapshots tied to a WAL position.
//! - [`bundle`] turns pages into bytes and back (images, checksums); no I/O of its own.
//! - [`chain`] lays artifacts out in a backup set, lists them, verifies them, retires them.
//! - [`replay`] stages a generation into a database, proves it, and publishes it atomically.
//! - [`store`] is the one seam through which bytes reach a destination.
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
pub mod error;
#[doc(hidden)]
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
pub mod progress;
pub mod replay;
pub mod store;
mod sys;

pub use capture::snapshot::{SnapshotOptions, SnapshotReport};
pub use capture::source::SourceDb;
pub use chain::BackupSet;
pub use error::{Error, ErrorKind, Result};
pub use progress::{NoProgress, Progress};
pub use replay::CheckLevel;
