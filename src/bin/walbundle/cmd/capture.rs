//! `walbundle capture DB --dest DIR`: continuous capture until SIGTERM/SIGINT, or `--once`.

use std::path::PathBuf;
use std::time::Duration;

use walbundle::capture::engine::{self, CaptureOptions, Event};
use walbundle::capture::source::guard_destination;
use walbundle::{BackupSet, Error, Result, SourceDb};

use crate::cmd::snapshot::require_dest;
use crate::ui;
use crate::{Common, DestArgs};

/// Arguments of `capture`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Runs beside the application. Starts a new chain with a full snapshot when \
    the set has none it can continue (the reason is recorded and shown by `list`), then seals every \
    committed transaction into a bundle within --interval. SIGTERM/SIGINT seal what is committed and \
    exit 0.\n\nwalbundle writes nothing to the database. It holds a read transaction (so the WAL \
    cannot restart over frames it has not captured), takes a write barrier for well under a \
    millisecond when it moves that read mark, and runs PASSIVE checkpoints so the WAL stays \
    bounded; it never runs RESTART or TRUNCATE checkpoints."
)]
pub struct Args {
    /// The SQLite database to capture (must be in WAL mode).
    pub db: PathBuf,
    #[command(flatten)]
    pub dest: DestArgs,
    /// Capture what is committed now, seal it, and exit (for cron-style use).
    #[arg(long)]
    pub once: bool,
    /// Seal a bundle at least this often while transactions arrive (e.g. 1s, 250ms, 10ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Cut a window that lets the WAL restart once it grows past this many MiB.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    pub max_wal_mib: u64,
    /// Seal a bundle early once it holds this many MiB of pages.
    #[arg(long, default_value_t = 32, value_name = "MIB")]
    pub max_bundle_mib: u64,
    /// zstd level for bundles (1 is fastest; 3 stores ~8% less for ~20% more CPU).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// zstd window for bundles, as a power of two (24 = 16 MiB: a whole bundle, so pages that
    /// consecutive transactions rewrite compress against each other; 0: the level's default).
    #[arg(long, default_value_t = 24, value_name = "LOG2")]
    pub window_log: u32,
    #[command(flatten)]
    pub common: Common,
}

/// Parse `1s`, `250ms`, `2m`, or plain seconds (`0.5`).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("cannot read duration {s:?} (try 1s, 250ms, 2m)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

pub fn run(a: Args) -> Result<u8> {
    let dest = require_dest(&a.dest)?;
    let src = SourceDb::locate(&a.db)?;
    guard_destination(&src, &dest, a.dest.allow_inside_source)?;
    let name = a
        .dest
        .name
        .clone()
        .unwrap_or_else(|| src.default_set_name());
    let set = BackupSet::open_or_create(&dest, &name, &src.identity())?;
    let opts = CaptureOptions {
        interval: a.interval,
        poll: a
            .interval
            .min(Duration::from_millis(100))
            .max(Duration::from_millis(5)),
        max_wal_bytes: a.max_wal_mib.max(1) << 20,
        max_bundle_bytes: a.max_bundle_mib.max(1) << 20,
        level: a.level,
        window_log: a.window_log,
        ..CaptureOptions::default()
    };
    let (json, quiet) = (a.common.json, a.common.quiet);
    let db = src.path.display().to_string();
    let stats = engine::run(src, set, opts, a.once, |e, st| {
        if json {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["db"] = serde_json::Value::String(db.clone());
            v["barrier_max_us"] = st.barrier_max_us.into();
            ui::out(&format!("{v}\n"));
            return;
        }
        if quiet {
            return;
        }
        match e {
            Event::ChainStarted {
                chain_id,
                reason,
                txn,
            } => {
                ui::log(
                    false,
                    &format!(
                        "{db}: new chain {chain_id} from a full snapshot (txn {txn}): {reason}"
                    ),
                );
            }
            Event::Resumed {
                chain_id,
                next_seq,
                txn,
            } => {
                ui::log(
                    false,
                    &format!(
                        "{db}: continuing chain {chain_id} at bundle {next_seq} (after txn {txn})"
                    ),
                );
            }
            Event::Bundle {
                seq, txns, bytes, ..
            } => {
                ui::log(
                    false,
                    &format!(
                        "{db}: bundle {seq}: txn {}..={} ({}), writer barrier max {:.2} ms",
                        txns.0,
                        txns.1,
                        ui::bytes(*bytes),
                        st.barrier_max_us as f64 / 1000.0
                    ),
                );
            }
            Event::WalRestarted { .. } => {}
        }
    })
    .map_err(|e: Error| e)?;
    if json {
        ui::out(&format!(
            "{}\n",
            serde_json::json!({ "event": "stopped", "db": db, "stats": stats })
        ));
    } else if !quiet {
        ui::log(
            false,
            &format!(
                "{db}: stopped: {} bundle(s), {} txn(s), {} written; writer barrier max {:.2} ms, mean {:.3} ms over {}",
                stats.bundles,
                stats.txns,
                ui::bytes(stats.bundle_bytes),
                stats.barrier_max_us as f64 / 1000.0,
                stats.barrier_total_us as f64 / 1000.0 / stats.barriers.max(1) as f64,
                stats.barriers
            ),
        );
    }
    Ok(0)
}
