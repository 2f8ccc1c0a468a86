//! `walbundle compact SET`: a new verified generation from an older one plus its bundles, when a
//! trigger fires (or with --force), then retention.

use std::path::PathBuf;

use walbundle::compact::{CompactOptions, CompactPolicy, compact};
use walbundle::replay::plan::parse_duration;
use walbundle::{BackupSet, Result};

use crate::{Check, Common};
use crate::{hook, ui};

/// Arguments of `compact`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Offline: reads only the set, never the live database, and runs \
    beside a capture of the same set. A new generation sits at the newest bundle of the newest \
    chain; it is replayed, checked by SQLite, encoded, decoded again and compared before it \
    appears in one rename. Later restores start from it.\n\n\
    Triggers (any one fires; default policy): the bundles since the newest generation reach \
    --trigger-bytes-pct of its image size (so a restore of a recent point costs at most about \
    twice a full generation), or --trigger-bundles, or the generation is older than \
    --trigger-age. --force compacts whenever any bundle follows the newest generation.\n\n\
    Retention (after compaction; a generation stays if any rule keeps it): every point of the \
    last --retain-days days stays restorable, and never less than --min-window; the \
    --keep-generations newest generations stay with everything after the oldest of them. Older \
    generations and the bundles they supersede are retired oldest first, and whole chains \
    whose every point is outside the window. Only this set's own files are deleted, and only \
    after the replacement is published.\n\n\
    Examples:\n    walbundle compact /mnt/backup/app\n    \
    walbundle compact /mnt/backup/app --dry-run\n    \
    walbundle compact /mnt/backup/app --force --retain-days 30 --keep-generations 3"
)]
pub struct Args {
    /// The backup set: DEST/<name>, a folder or s3://BUCKET/PREFIX/<name>.
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    pub set: Option<PathBuf>,
    /// Compact every set of the databases a TOML config names (their `retain_days` applies
    /// unless --retain-days is given); one failure does not stop the others (exit 2 if any).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run this shell command when compaction fails (environment: WALBUNDLE_DB, WALBUNDLE_SET,
    /// WALBUNDLE_COMMAND, WALBUNDLE_ERROR).
    #[arg(long, value_name = "CMD")]
    pub on_error: Option<String>,
    /// Build a generation now if any bundle follows the newest one, whatever the triggers say.
    #[arg(long)]
    pub force: bool,
    /// Say what would be created and retired; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Trigger: bundles since the newest generation reach this % of its compressed image.
    #[arg(long, default_value_t = 100, value_name = "PCT")]
    pub trigger_bytes_pct: u64,
    /// Trigger: this many bundles since the newest generation.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub trigger_bundles: u64,
    /// Trigger: the newest generation is older than this (30m, 24h, 7d).
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub trigger_age: String,
    /// Keep every point of the last D days restorable [default: 7].
    #[arg(long, value_name = "D")]
    pub retain_days: Option<u64>,
    /// Keep at least the N newest generations (and everything after the oldest of them).
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_generations: u64,
    /// Never retire history younger than this, whatever --retain-days says.
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub min_window: String,
    /// SQLite check of the new generation before it is published.
    #[arg(long, value_enum, default_value = "full")]
    pub check: Check,
    /// zstd level of the new image (1 fastest, 19 smallest; 2 by default, as for snapshots).
    #[arg(long, default_value_t = walbundle::bundle::image::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// zstd compression threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(a: Args) -> Result<u8> {
    let Some(path) = a.config.clone() else {
        let set = a.set.clone().unwrap_or_default();
        let days = a.retain_days.unwrap_or(7);
        one(&a, &set, days).inspect_err(|e| {
            let set = set.display().to_string();
            hook::on_error(a.on_error.as_deref(), "compact", "", &set, &e.to_string());
        })?;
        return Ok(0);
    };
    hook::each_database(&path, None, "compact", &a.on_error, a.common.json, |r| {
        let set = r.set_dir();
        if !BackupSet::exists(&set)? {
            return Ok(()); // nothing backed up yet
        }
        one(&a, &set, a.retain_days.or(r.entry.retain_days).unwrap_or(7))
    })
}

fn one(a: &Args, set_dir: &std::path::Path, retain_days: u64) -> Result<()> {
    let mut set = BackupSet::open(set_dir)?;
    let opts = CompactOptions {
        policy: CompactPolicy {
            force: a.force,
            trigger_bytes_pct: a.trigger_bytes_pct,
            trigger_bundles: a.trigger_bundles.max(1),
            trigger_age_secs: parse_duration(&a.trigger_age)?,
            retain_days,
            keep_generations: usize::try_from(a.keep_generations).unwrap_or(usize::MAX),
            min_window_secs: parse_duration(&a.min_window)?,
        },
        dry_run: a.dry_run,
        check: a.check.into(),
        level: a.level,
        workers: a.threads,
        now: None,
    };
    let bar = ui::Bar::new(!a.common.json && !a.common.quiet);
    let r = compact(&mut set, &opts, &bar)?;
    if a.common.json {
        ui::json(&serde_json::json!({ "ok": true, "compact": r }));
    } else if !a.common.quiet {
        ui::out(&r.describe());
    }
    Ok(())
}
