//! `walbundle snapshot DB --dest DIR`: one verified generation now, then optional retention.

use std::path::PathBuf;
use std::time::Duration;

use walbundle::compact::retention::RetentionPolicy;
use walbundle::ops::backup::{BackupOptions, BackupReport, snapshot_database};
use walbundle::{Error, Result, SnapshotOptions};

use crate::ui;
use crate::{Check, Common, DestArgs};

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
    /// zstd compression level for the image (1 fastest, 19 smallest).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
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
        let name = a.dest.name.clone();
        return one(
            &a,
            &db,
            &dest,
            name,
            a.dest.allow_inside_source,
            a.keep,
            a.retain_days,
        )
        .inspect_err(|e| {
            crate::hook::on_error(
                a.on_error.as_deref(),
                "snapshot",
                &db.display().to_string(),
                "",
                &e.to_string(),
            );
        });
    };
    let cfg = walbundle::ops::config::Config::load(&path)?;
    let hook = a.on_error.clone().or_else(|| cfg.on_error.clone());
    let mut failed = 0;
    for r in cfg.resolve(&path, a.dest.dest.as_deref())? {
        let res = one(
            &a,
            &r.db,
            &r.dest,
            Some(r.name.clone()),
            r.allow_inside_source || a.dest.allow_inside_source,
            a.keep.or(r.entry.keep),
            a.retain_days.or(r.entry.retain_days),
        );
        if let Err(e) = res {
            failed += 1;
            let msg = e.to_string();
            ui::print_error(&e, a.common.json);
            crate::hook::on_error(
                hook.as_deref(),
                "snapshot",
                &r.db.display().to_string(),
                &r.set_dir().display().to_string(),
                &msg,
            );
        }
    }
    Ok(if failed > 0 { 2 } else { 0 })
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
) -> Result<u8> {
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
    let BackupReport {
        snapshot: report,
        retired,
    } = snapshot_database(db, dest, &opts, &bar)?;
    let m = &report.manifest;
    if a.common.json {
        ui::json(&serde_json::json!({ "ok": true, "snapshot": report, "retired": retired }));
    } else if !a.common.quiet {
        let pct = if m.image.raw_size > 0 {
            100.0 * m.image.size as f64 / m.image.raw_size as f64
        } else {
            0.0
        };
        ui::out(&format!(
            "generation {}\n  txn {}, {} pages x {} B = {}, stored {} ({pct:.0}%)\n  \
             read {} ms (no lock taken), verified in {} ms ({} check)\n",
            report.generation_dir.display(),
            m.txn,
            m.page_count,
            m.page_size,
            ui::bytes(m.image.raw_size),
            ui::bytes(m.image.size),
            report.read_ms,
            report.verify_ms,
            m.check,
        ));
        for r in &retired {
            ui::out(&format!(
                "retired chain {} ({}): {}\n",
                r.chain_id, r.state_time, r.reason
            ));
        }
    }
    Ok(0)
}
