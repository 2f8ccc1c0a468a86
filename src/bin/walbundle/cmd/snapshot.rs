//! `walbundle snapshot DB --dest DIR`: one verified generation now, then optional retention.

use std::path::PathBuf;
use std::time::Duration;

use walbundle::compact::retention::RetentionPolicy;
use walbundle::ops::backup::{BackupOptions, snapshot_database};
use walbundle::{Error, Result, SnapshotOptions};

use crate::{Check, Common, DestArgs};
use crate::{hook, ui};

/// Arguments of `snapshot`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  walbundle snapshot app.db --dest ~/Backups/walbundle\n  \
    walbundle snapshot app.db --dest /mnt/backup --keep 7 --retain-days 30\n\n\
    The set for app.db is DEST/app. The generation appears in one rename, after its image was\n\
    decompressed, hashed and checked by SQLite; a killed snapshot leaves nothing behind."
)]
pub struct Args {
    /// The SQLite database to back up (WAL or rollback-journal mode).
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    pub db: Option<PathBuf>,
    /// Snapshot every database a TOML config names (any mode; see the README), each into its
    /// own set, with the config's retention (`keep`, `retain_days`) unless given here. One
    /// failing database does not stop the others; the exit status is 2 if any failed.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run this shell command when a snapshot fails (environment: WALBUNDLE_DB, WALBUNDLE_SET,
    /// WALBUNDLE_COMMAND, WALBUNDLE_ERROR).
    #[arg(long, value_name = "CMD")]
    pub on_error: Option<String>,
    #[command(flatten)]
    pub dest: DestArgs,
    /// SQLite check of the image before it is published.
    #[arg(long, value_enum, default_value = "full")]
    pub check: Check,
    /// zstd compression level for the image (1 fastest, 19 smallest). The default, 2, stores
    /// within 2% of level 3 at about two thirds of its CPU.
    #[arg(long, default_value_t = walbundle::bundle::image::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// zstd compression threads beside the reading thread (0: compress on the reading thread).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub threads: u32,
    /// Seconds to wait for a read lock (only an application in exclusive locking mode, or
    /// SQLite's own wal-index recovery, makes a reader wait).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub busy_timeout: f64,
    /// Folder for the scratch copy the image is checked in (default: the system temp folder).
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// After the snapshot, keep only the N newest generations (with --retain-days: either rule keeps).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: Option<u64>,
    /// After the snapshot, retire generations older than N days (the newest is always kept).
    #[arg(long, value_name = "N")]
    pub retain_days: Option<u64>,
    #[command(flatten)]
    pub common: Common,
}

/// Resolve the destination (flag or WALBUNDLE_DEST) or explain both ways.
pub fn require_dest(d: &DestArgs) -> Result<PathBuf> {
    d.dest.clone().ok_or_else(|| {
        Error::usage("no destination given")
            .hint("pass --dest DIR or set WALBUNDLE_DEST=DIR; walbundle has no default destination")
    })
}

pub fn run(a: Args) -> Result<u8> {
    let Some(path) = a.config.clone() else {
        let Some(db) = a.db.clone() else {
            return Err(Error::usage("name a database, or --config FILE"));
        };
        let dest = require_dest(&a.dest)?;
        let (name, inside) = (a.dest.name.clone(), a.dest.allow_inside_source);
        one(&a, &db, &dest, name, inside, a.keep, a.retain_days).inspect_err(|e| {
            let db = db.display().to_string();
            hook::on_error(a.on_error.as_deref(), "snapshot", &db, "", &e.to_string());
        })?;
        return Ok(0);
    };
    let dest = a.dest.dest.as_deref();
    hook::each_database(&path, dest, "snapshot", &a.on_error, a.common.json, |r| {
        one(
            &a,
            &r.db,
            &r.dest,
            Some(r.name.clone()),
            r.allow_inside_source || a.dest.allow_inside_source,
            a.keep.or(r.entry.keep),
            a.retain_days.or(r.entry.retain_days),
        )
    })
}

/// Snapshot `db` into its set under `dest`, then retention.
fn one(
    a: &Args,
    db: &std::path::Path,
    dest: &std::path::Path,
    name: Option<String>,
    allow_inside_source: bool,
    keep: Option<u64>,
    retain_days: Option<u64>,
) -> Result<()> {
    let opts = BackupOptions {
        name,
        allow_inside_source,
        snapshot: SnapshotOptions {
            check: a.check.into(),
            level: a.level,
            workers: a.threads,
            busy_timeout: Duration::from_secs_f64(a.busy_timeout.max(0.0)),
            scratch_dir: a.scratch.clone(),
            ..SnapshotOptions::default()
        },
        retention: RetentionPolicy {
            keep: keep.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
            retain_days,
        },
    };
    let bar = ui::Bar::new(!a.common.json && !a.common.quiet);
    let report = snapshot_database(db, dest, &opts, &bar)?;
    if a.common.json {
        ui::json(
            &serde_json::json!({ "ok": true, "snapshot": report.snapshot, "retired": report.retired }),
        );
    } else if !a.common.quiet {
        ui::out(&report.describe());
    }
    Ok(())
}
