//! `walbundle capture DB --dest DIR`: continuous capture until SIGTERM/SIGINT, or `--once`.

use std::path::PathBuf;
use std::time::Duration;

use walbundle::capture::engine::{self, CaptureOptions, Event};
use walbundle::capture::supervisor;
use walbundle::{Error, Result};

use crate::cmd::snapshot::require_dest;
use crate::{Common, DestArgs};
use crate::{hook, ui};
use walbundle::ops::config;

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
    /// Once the WAL's committed frames pass this many MiB, help it restart: backfill with
    /// PASSIVE checkpoints of our own and move the read mark onto the fully backfilled WAL
    /// (under writes that never pause for a few milliseconds the WAL grows until they do).
    #[arg(long, default_value_t = 4, value_name = "MIB")]
    pub max_wal_mib: u64,
    /// Seal a bundle early once it holds this many MiB of pages.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub max_bundle_mib: u64,
    /// zstd level for bundles (1 is fastest; 3 stores ~8% less for ~20% more CPU).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// zstd window for bundles, as a power of two (24 = 16 MiB: a whole bundle, so pages that
    /// consecutive transactions rewrite compress against each other; 0: the level's default).
    #[arg(long, default_value_t = 24, value_name = "LOG2")]
    pub window_log: u32,
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
        ..CaptureOptions::default()
    };
    walbundle::ops::sources::options_with(&base, interval, max_wal_mib, max_bundle_mib)
}

fn print_event(json: bool, quiet: bool, db: &str, e: &Event, st: &engine::CaptureStats) {
    if json {
        let mut v = serde_json::to_value(e).unwrap_or_default();
        v["db"] = serde_json::Value::String(db.to_string());
        v["pin_moves"] = st.pin_moves.into();
        v["step_aside_max_us"] = st.step_aside_max_us.into();
        ui::out(&format!("{v}\n"));
        return;
    }
    if !quiet && let Some(line) = e.describe() {
        ui::log(false, &format!("{db}: {line}"));
    }
}

fn run_config(a: &Args, path: &std::path::Path) -> Result<u8> {
    use walbundle::ops::sources::{ConfigSources, Defaults, Note};
    let sources = ConfigSources::load(
        path,
        Defaults {
            opts: options(a, a.interval, a.max_wal_mib, a.max_bundle_mib),
            dest: a.dest.dest.clone(),
            allow_inside_source: a.dest.allow_inside_source,
        },
    )?;
    let cfg = sources.config();
    let on_error_cmd = a.on_error.clone().or_else(|| cfg.on_error.clone());
    let sets: walbundle::ops::health::SetsHandle = std::sync::Arc::default();
    let report = |notes: Vec<Note>| {
        for n in notes {
            match n {
                Note::SameFile { db, first } => ui::log(
                    a.common.quiet,
                    &format!(
                        "{}: the same database file as {}; captured once, under the first name",
                        db.display(),
                        first.display()
                    ),
                ),
                Note::Matched { db, set } => ui::log(
                    a.common.quiet,
                    &format!(
                        "{}: new database matched; capturing into {}",
                        db.display(),
                        set.display()
                    ),
                ),
                Note::Failed { db, set, error } => {
                    eprintln!("walbundle: error: {}: {error}", db.display());
                    hook::on_error(
                        on_error_cmd.as_deref(),
                        "capture",
                        &db.display().to_string(),
                        &set.display().to_string(),
                        &error.to_string(),
                    );
                }
            }
        }
    };
    let remember = |specs: &[supervisor::CaptureSpec]| {
        sets.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(
                specs
                    .iter()
                    .map(|s| (s.src.path.clone(), s.set.dir().to_path_buf())),
            );
    };
    let (specs, notes) = sources.scan(true)?;
    report(notes);
    remember(&specs);
    let find = || -> Vec<supervisor::CaptureSpec> {
        let Ok((specs, notes)) = sources.scan(false) else {
            return Vec::new();
        };
        report(notes);
        remember(&specs);
        specs
    };
    let discover = supervisor::Discover {
        every: sources.rescan(),
        find: &find,
    };
    let threads = a.threads.or(cfg.threads).unwrap_or(4);
    let (json, quiet) = (a.common.json, a.common.quiet);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let metrics = walbundle::ops::health::serve_metrics(
        a.metrics.as_deref(),
        a.metrics_file.as_deref(),
        &sets,
    )?;
    let results = supervisor::run_many(
        specs,
        threads,
        a.once,
        Some(&discover),
        supervisor::stop_on_signals(),
        &|db, e, st| print_event(json, quiet, db, e, st),
        &|db, e| {
            failed.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!("walbundle: error: {db}: {e}");
            let set = sets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .find(|(d, _)| d.display().to_string() == db)
                .map(|(_, s)| s.display().to_string())
                .unwrap_or_default();
            hook::on_error(on_error_cmd.as_deref(), "capture", db, &set, &e.to_string());
        },
    )?;
    drop(metrics);
    if json {
        let all: Vec<_> = results
            .iter()
            .map(|(db, st)| serde_json::json!({ "db": db, "stats": st }))
            .collect();
        ui::out(&format!(
            "{}\n",
            serde_json::json!({ "event": "stopped", "databases": all })
        ));
    }
    Ok(if failed.load(std::sync::atomic::Ordering::SeqCst) {
        2
    } else {
        0
    })
}

pub fn run(a: Args) -> Result<u8> {
    // A few descriptors per database: lift the soft limit to the hard one, as Go programs do.
    if let Err(e) = supervisor::raise_open_files_limit() {
        ui::log(
            a.common.quiet,
            &format!("could not raise the open-files limit: {e}"),
        );
    }
    if let Some(cfg) = a.config.clone() {
        return run_config(&a, &cfg);
    }
    let Some(db) = a.db.clone() else {
        return Err(Error::usage("name a database, or --config FILE"));
    };
    let hook = |e: walbundle::Error, set_dir: &str| {
        hook::on_error(
            a.on_error.as_deref(),
            "capture",
            &db.display().to_string(),
            set_dir,
            &e.to_string(),
        );
        e
    };
    let dest = require_dest(&a.dest).map_err(|e| hook(e, ""))?;
    let opts = options(&a, a.interval, a.max_wal_mib, a.max_bundle_mib);
    let supervisor::CaptureSpec { src, set, opts } = walbundle::ops::sources::capture_spec(
        &db,
        &dest,
        a.dest.name.as_deref(),
        a.dest.allow_inside_source,
        opts,
    )
    .map_err(|e| hook(e, ""))?;
    let set_dir = set.dir().display().to_string();
    let sets = std::sync::Arc::new(std::sync::Mutex::new(vec![(
        src.path.clone(),
        set.dir().to_path_buf(),
    )]));
    let metrics = walbundle::ops::health::serve_metrics(
        a.metrics.as_deref(),
        a.metrics_file.as_deref(),
        &sets,
    )?;
    let (json, quiet) = (a.common.json, a.common.quiet);
    let dbs = src.path.display().to_string();
    let stats = supervisor::run(
        src,
        set,
        opts,
        a.once,
        supervisor::stop_on_signals(),
        |e, st| print_event(json, quiet, &dbs, e, st),
    )
    .map_err(|e| hook(e, &set_dir))?;
    drop(metrics);
    if json {
        ui::out(&format!(
            "{}\n",
            serde_json::json!({ "event": "stopped", "db": dbs, "stats": stats })
        ));
    } else if !quiet {
        ui::log(false, &format!("{dbs}: {}", stats.describe()));
    }
    Ok(0)
}
