//! One database, one verified snapshot now, then optional retention: what `walbundle snapshot`
//! does for each database, as one library call.

use std::path::Path;

use serde::Serialize;

use crate::capture::snapshot::{SnapshotOptions, SnapshotReport, snapshot};
use crate::compact::retention::{self, RetentionPolicy, Retire};
use crate::progress::{Progress, human_bytes};
use crate::sqlite::source::{SourceDb, guard_destination};
use crate::{BackupSet, Result};

/// Where and how to snapshot one database.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// The set name (default: the database file's stem).
    pub name: Option<String>,
    /// Allow a destination inside the database's own folder (refused by default: a backup there
    /// dies with the data).
    pub allow_inside_source: bool,
    /// How to snapshot.
    pub snapshot: SnapshotOptions,
    /// Retention after the snapshot (nothing retired when empty).
    pub retention: RetentionPolicy,
}

/// What [`snapshot_database`] did.
#[derive(Debug, Serialize)]
pub struct BackupReport {
    /// The new generation.
    pub snapshot: SnapshotReport,
    /// Chains retention retired.
    pub retired: Vec<Retire>,
}

impl BackupReport {
    /// The report in a few lines (what `walbundle snapshot` prints).
    pub fn describe(&self) -> String {
        let (r, m) = (&self.snapshot, &self.snapshot.manifest);
        let pct = if m.image.raw_size > 0 {
            100.0 * m.image.size as f64 / m.image.raw_size as f64
        } else {
            0.0
        };
        let mut s = format!(
            "generation {}\n  txn {}, {} pages x {} B = {}, stored {} ({pct:.0}%)\n  \
             read {} ms (no lock taken), verified in {} ms ({} check)\n",
            r.generation_dir.display(),
            m.txn,
            m.page_count,
            m.page_size,
            human_bytes(m.image.raw_size),
            human_bytes(m.image.size),
            r.read_ms,
            r.verify_ms,
            m.check,
        );
        for x in &self.retired {
            s.push_str(&format!(
                "retired chain {} ({}): {}\n",
                x.chain_id, x.state_time, x.reason
            ));
        }
        s
    }
}

/// Snapshot the database `db` into its set under `dest` (created if needed, its writer lock
/// held meanwhile), then apply retention under the maintenance lock.
///
/// # Errors
/// The database cannot be located or read, the destination lies inside its folder, the set
/// backs up another database or is held by another writer, or the snapshot fails its checks.
pub fn snapshot_database(
    db: &Path,
    dest: &Path,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    let src = SourceDb::locate(db)?;
    if let crate::store::Location::Local(dir) = crate::store::Location::parse(dest)? {
        guard_destination(&src, &dir, opts.allow_inside_source)?;
    }
    src.read_header()?;
    let name = opts.name.clone().unwrap_or_else(|| src.default_set_name());
    let mut set = BackupSet::open_or_create(dest, &name, &src.identity())?;
    set.lock_writer()?;
    let report = snapshot(&set, &src, &opts.snapshot, progress)?;
    let retired = if opts.retention.is_empty() {
        Vec::new()
    } else {
        set.lock_maintenance()?;
        let retired = retention::plan(&set.inventory()?, &opts.retention, jiff::Timestamp::now());
        retention::apply(&set, &retired)?;
        retired
    };
    Ok(BackupReport {
        snapshot: report,
        retired,
    })
}
