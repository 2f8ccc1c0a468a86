//! `walbundle restore SET --out PATH`: plan, stage beside PATH, verify, publish atomically.

use std::path::PathBuf;

use walbundle::replay::{self, CheckLevel, RestoreOptions, Target};
use walbundle::{BackupSet, Result};

use crate::Common;
use crate::ui;

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The database is written to a temporary file beside PATH, its hashes and \
    state checksum are checked while it is written, SQLite checks it, and only then is it renamed \
    to PATH. An existing PATH (or PATH-wal / PATH-shm) is refused unless --force, which moves the \
    old files aside (kept, named in the output) — and never while a process has them open."
)]
pub struct Args {
    /// The backup set: DEST/<name>, a folder or s3://BUCKET/PREFIX/<name>.
    pub set: PathBuf,
    /// Where to create the restored database.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Replace an existing PATH, moving it and its -wal/-shm aside (never deleted).
    #[arg(long)]
    pub force: bool,
    /// SQLite check of the restored database before it is published.
    #[arg(long, value_enum, default_value = "full")]
    pub check: CheckLevel,
    /// Restore the last transaction captured at or before TIME: RFC 3339 (any offset, any
    /// fraction of a second) or relative to now (-30s, -10m, -2h, -1d).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub at: Option<String>,
    /// Restore the state after transaction N (a point `walbundle list` shows) instead of the newest.
    #[arg(long, value_name = "N")]
    pub txn: Option<u64>,
    /// If the chain is broken before the target, restore up to the last verified point before
    /// the first bad link instead of refusing; says so on stderr and exits 1.
    #[arg(long)]
    pub until_break: bool,
    /// Print the plan (what would be replayed) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub store: crate::StoreConfig,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(a: Args) -> Result<u8> {
    a.store.apply()?;
    let set = BackupSet::open(&a.set)?;
    let target = match (&a.at, a.txn) {
        (Some(_), Some(_)) => return Err(walbundle::Error::usage("give --at or --txn, not both")),
        (Some(t), None) => Target::Time(replay::parse_time(t)?),
        (None, Some(n)) => Target::Txn(n),
        (None, None) => Target::Latest,
    };
    let waiting = set.spooled();
    if let (false, Some(spool)) = (waiting.is_empty(), set.spool())
        && !a.common.quiet
    {
        eprintln!(
            "walbundle: note: {} bundle(s) sealed on this host still wait for the store (in {}); \
             this restore cannot reach their transactions until a capture publishes them",
            waiting.len(),
            spool.root().display()
        );
    }
    let plan = replay::plan::plan_with(&set, &target, a.until_break)?;
    if a.dry_run {
        if a.common.json {
            ui::json(&serde_json::json!({ "ok": true, "dry_run": true, "plan": plan }));
        } else {
            ui::out(&plan.describe(&a.out));
        }
        return Ok(0);
    }
    let opts = RestoreOptions {
        out: a.out.clone(),
        force: a.force,
        check: a.check,
    };
    let bar = ui::Bar::new(!a.common.json && !a.common.quiet);
    let (plan, r) = replay::restore_until_break(plan, &opts, a.until_break, &bar)?;
    if let Some(why) = &plan.partial {
        eprintln!(
            "walbundle: PARTIAL RESTORE (--until-break): {} holds txn {} only, the last verified point \
             before the first bad link: {why}",
            r.out.display(),
            r.reached.txn
        );
    }
    let code = u8::from(plan.partial.is_some());
    if a.common.json {
        ui::json(&serde_json::json!({ "ok": code == 0, "partial": plan.partial, "restore": r }));
    } else if !a.common.quiet {
        let mut s = format!(
            "restored {} ({}): txn {} at {} (chain {}, generation {} + {} bundle(s), {} txn(s) replayed); \
             state checksum {}, {} check passed\n",
            r.out.display(),
            ui::bytes(r.bytes),
            r.reached.txn,
            r.reached.time,
            plan.chain_id,
            plan.generation_seq,
            r.reached.bundles_applied,
            r.reached.txns_applied,
            r.state_checksum,
            r.check.as_str()
        );
        for m in &r.moved_aside {
            s.push_str(&format!("moved aside (kept): {}\n", m.display()));
        }
        ui::out(&s);
    }
    Ok(code)
}
