//! `walbundle capture DB --dest DIR`: continuous capture until SIGTERM/SIGINT, or `--once`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use walbundle::capture::engine::CaptureOptions;
use walbundle::capture::supervisor;
use walbundle::{Error, Result};

use crate::cmd::snapshot::require_dest;
use crate::events::CaptureLog;
use crate::{Common, DestArgs};
use crate::{hook, ui};
use walbundle::ops::config;
use walbundle::ops::protect::Protector;
use walbundle::ops::sources::Defaults;

/// Arguments of `capture`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Runs beside the application. Starts a new chain with a full snapshot when \
    the set has none it can continue (the reason is recorded and shown by `list`), then seals every \
    committed transaction into a bundle within --interval. SIGTERM/SIGINT seal what is committed and \
    exit 0.\n\nwalbundle writes nothing to the database and never takes its write lock, so an \
    application with no busy timeout never sees `database is locked` because of it. It holds a \
    read transaction (so the WAL cannot restart over frames it has not captured), moves that \
    read mark to the newest commit every poll, steps out of the way of the application's own \
    FULL/RESTART/TRUNCATE checkpoints within a poll, and runs PASSIVE checkpoints only when \
    the WAL passes --max-wal-mib; it never runs RESTART or TRUNCATE checkpoints."
)]
pub struct Args {
    /// The SQLite database to capture (must be in WAL mode).
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    pub db: Option<PathBuf>,
    /// Capture every capture-mode database a TOML file names (paths or patterns, matched again
    /// every `rescan`), in one process; see the README for the format.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// With --config: capture at most this many databases at once per thread pool (default:
    /// the config's `threads`, else 4).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub dest: DestArgs,
    /// Capture what is committed now, seal it, and exit (for cron-style use).
    #[arg(long)]
    pub once: bool,
    /// The longest a committed transaction waits before it is sealed into a bundle in the set
    /// (e.g. 1s, 250ms, 10ms).
    #[arg(long, default_value = "1s", value_parser = config::duration)]
    pub interval: Duration,
    /// Once the WAL's committed frames pass this many MiB, help it restart: every poll, move
    /// the read mark to the newest commit, flush the WAL and the database, backfill the rest
    /// with a PASSIVE checkpoint of our own and move the mark onto the fully backfilled WAL if
    /// nothing was committed meanwhile (under writes that never pause for a few milliseconds
    /// the WAL grows until they do; walbundle never takes the write lock). A WAL cycle younger
    /// than 5 s may grow to 4x this first: under fast writes the WAL restarts about every 5 s
    /// (each restart costs capture two syncs), a slow writer's at this size.
    #[arg(long, default_value_t = 4, value_name = "MIB")]
    pub max_wal_mib: u64,
    /// Seal a bundle early once it holds this many MiB of pages (under a burst: smaller
    /// bundles keep the compression against their reference pages fast and its memory small).
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    pub max_bundle_mib: u64,
    /// zstd level for bundles. With reference pages (format 2) level 1 stores within 1% of
    /// level 3 at half its CPU (a body compressed against its reference pages in memory gets
    /// zstd's level -1 parameters: as small, and faster); with --bundle-format 1, level 3
    /// stores ~8% less than 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// zstd window for bundles, as a power of two (24 = 16 MiB: a whole bundle, so pages that
    /// consecutive transactions rewrite compress against each other; 0: the level's default).
    #[arg(long, default_value_t = 24, value_name = "LOG2")]
    pub window_log: u32,
    /// Bundle format: 2 compresses each bundle against the previous versions of the pages it
    /// rewrites (about 30% smaller on update-heavy workloads); 1 writes bundles that walbundle
    /// 0.1 can read. A set may hold both; every version reads both.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=2), value_name = "N")]
    pub bundle_format: u16,
    /// Run this shell command whenever capture fails for a database (environment:
    /// WALBUNDLE_DB, WALBUNDLE_SET, WALBUNDLE_COMMAND, WALBUNDLE_ERROR).
    #[arg(long, value_name = "CMD")]
    pub on_error: Option<String>,
    /// Serve Prometheus metrics over HTTP on this loopback address (e.g. 127.0.0.1:9717).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Write the same metrics to this file every few seconds (node_exporter's textfile
    /// collector).
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

fn options(a: &Args, interval: Duration, max_wal_mib: u64, max_bundle_mib: u64) -> CaptureOptions {
    let base = CaptureOptions {
        level: a.level,
        window_log: a.window_log,
        reference_pages: a.bundle_format >= 2,
        ..CaptureOptions::default()
    };
    walbundle::ops::sources::options_with(&base, interval, max_wal_mib, max_bundle_mib)
}

pub fn run(a: Args) -> Result<u8> {
    // Windows: refused before anything starts (see `refuse_on_windows` for why).
    if let Some(p) = a.config.as_ref().or(a.db.as_ref()) {
        walbundle::capture::engine::refuse_on_windows(p)?;
    }
    // A few descriptors per database: lift the soft limit to the hard one, as Go programs do.
    if let Err(e) = supervisor::raise_open_files_limit() {
        ui::log(
            a.common.quiet,
            &format!("could not raise the open-files limit: {e}"),
        );
    }
    let cli = Arc::new(CaptureLog::new(
        a.common.json,
        a.common.quiet,
        a.config.is_some(),
    ));
    let opts = options(&a, a.interval, a.max_wal_mib, a.max_bundle_mib);
    let mut b = Protector::builder()
        .once(a.once)
        .stop_on_signals()
        .observer(Arc::clone(&cli) as Arc<dyn walbundle::ops::protect::Observer>)
        .metrics(a.metrics.clone(), a.metrics_file.clone())
        .allow_inside_source(a.dest.allow_inside_source);
    if let Some(cmd) = &a.on_error {
        b = b.on_error(cmd);
    }
    if let Some(n) = a.threads {
        b = b.threads(n);
    }
    b = match (&a.config, &a.db, &a.dest.name) {
        // Many databases: a failing one is retried with backoff (exit 2 at the end).
        (Some(path), _, _) => b.config(
            path,
            Defaults {
                opts,
                dest: a.dest.dest.clone(),
                allow_inside_source: a.dest.allow_inside_source,
            },
        ),
        // One database: its first failure ends the run (exit 2, after the --on-error hook).
        (None, Some(db), name) => {
            let dest = require_dest(&a.dest).inspect_err(|e| {
                let db = db.display().to_string();
                hook::on_error(a.on_error.as_deref(), "capture", &db, "", &e.to_string());
            })?;
            let b = b.options(opts).fail_fast(true);
            match name {
                Some(name) => b.database_named(db, &dest, name),
                None => b.database(db, &dest),
            }
        }
        (None, None, _) => return Err(Error::usage("name a database, or --config FILE")),
    };
    let results = b.start()?.wait()?;
    if a.common.json && a.config.is_some() {
        let all: Vec<_> = results
            .iter()
            .map(|(db, st)| serde_json::json!({ "db": db, "stats": st }))
            .collect();
        let all = serde_json::json!({ "event": "stopped", "databases": all });
        ui::out(&format!("{all}\n"));
    }
    // A failure that did not end the run early (one while stopping: the last bundles could not
    // be published) has not been printed by `main`: say it, never exit 2 in silence.
    for e in cli.unreported() {
        eprintln!("walbundle: error: {e}");
    }
    Ok(if cli.failed() { 2 } else { 0 })
}
