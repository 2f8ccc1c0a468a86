//! `walbundle status [SET | --config FILE]`: is every database's protection current?
//! Exit 0 all healthy, 1 any stale or failing (each named), 2 could not run.

use std::path::PathBuf;
use std::time::Duration;

use walbundle::{Error, Result};

use crate::Common;
use crate::ui;
use walbundle::ops::config;
use walbundle::ops::health::{self, Row};

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Capture mode (a capture ever ran for the set, or the config says so): \
    healthy while the capture process's heartbeat is fresh, it reports no failure, and the \
    oldest commit not yet sealed into the set has waited less than --stale-after (default 5m). \
    Snapshot mode: the newest generation is younger than --stale-after (default: twice the \
    entry's `every`, else 25h).\n\n\
    Exit status: 0 every database healthy, 1 any stale or failing (named on stderr), 2 could \
    not run. For cron, systemd OnFailure= and monitoring; `--prometheus` prints the same as \
    Prometheus text.\n\n\
    Cheap at thousands of sets: status reads each set's heartbeat, its folder names, its \
    generation manifests and the newest bundle header of each chain (a missing bundle shows as \
    a gap in the names). Damage inside a file is what `walbundle verify` finds."
)]
pub struct Args {
    /// A backup set: DEST/<name>, a folder or s3://BUCKET/PREFIX/<name>.
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    pub set: Option<PathBuf>,
    /// Every database a TOML config names.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How old the protection may be before it is stale (overrides the config's).
    #[arg(long, value_name = "DURATION", value_parser = config::duration)]
    pub stale_after: Option<Duration>,
    /// Print Prometheus text format (for node_exporter's textfile collector).
    #[arg(long)]
    pub prometheus: bool,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(a: Args) -> Result<u8> {
    let rows: Vec<Row> = match (&a.set, &a.config) {
        (Some(set), _) => vec![health::status_of_set(set, a.stale_after)?],
        (None, Some(path)) => health::status_of_config(path, a.stale_after)?,
        (None, None) => return Err(Error::usage("name a set, or --config FILE")),
    };
    let bad = rows.iter().filter(|r| !r.ok).count();
    if a.prometheus {
        ui::out(&health::prometheus(&rows));
    } else if a.common.json {
        ui::json(&serde_json::json!({ "ok": bad == 0, "databases": rows }));
    } else {
        let mut s = String::new();
        for r in &rows {
            s.push_str(&format!(
                "{} {}  ({:?}, set {})\n",
                if r.ok { "ok   " } else { "STALE" },
                r.db,
                r.mode,
                r.set
            ));
            let mut facts = Vec::new();
            if let Some(t) = r.last_txn {
                facts.push(format!(
                    "last txn {t} at {}",
                    r.last_time.as_deref().unwrap_or("?")
                ));
            }
            if let Some(l) = r.lag_s {
                facts.push(format!("lag {l:.1} s"));
            }
            if let Some(n) = r.unpublished.filter(|&n| n > 0) {
                facts.push(format!("{n} bundle(s) waiting for the store"));
            }
            if let Some(w) = r.wal_bytes {
                facts.push(format!("WAL {}", ui::bytes(w)));
            }
            if let Some(g) = &r.last_generation {
                facts.push(format!(
                    "generation {} at txn {} ({})",
                    g.seq, g.txn, g.time
                ));
            }
            if let Some((lo, hi)) = r.restorable {
                facts.push(format!("restorable txn {lo}..={hi}"));
            }
            facts.push(format!("capture {}", r.capture_state));
            s.push_str(&format!("      {}\n", facts.join("; ")));
            if let Some(e) = &r.last_error {
                s.push_str(&format!("      last error: {e}\n"));
            }
        }
        if !a.common.quiet {
            ui::out(&s);
        }
    }
    for r in rows.iter().filter(|r| !r.ok) {
        eprintln!("walbundle: stale: {}: {}", r.db, r.problems.join("; "));
    }
    Ok(u8::from(bad > 0))
}
