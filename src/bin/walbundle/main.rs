//! The `walbundle` command. Each verb lives in `cmd/`, parses nothing itself and calls the
//! library; this file owns exit codes and how errors are printed.
//!
//! Exit codes: 0 success; 1 `verify` found problems, or `restore --until-break` restored less
//! than asked; 2 the command could not do its job (bad
//! input, refused, I/O failure). Errors go to stderr as one line naming the file, what went wrong
//! and what to do; with `--json`, stdout also carries `{"ok": false, "error": {...}}`.

mod cmd;
mod events;
mod hook;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Incremental, verifiable backups of live SQLite databases.
///
/// A backup set (one per database, at DEST/<name>) holds chains: a verified, page-exact full
/// snapshot (a generation) and the WAL bundles captured after it. `snapshot` and `capture` write
/// sets; `list`, `verify` and `restore` read them; `compact` folds old history into new
/// generations; `status` and `schedule` keep many databases protected (see `--config`).
#[derive(Debug, Parser)]
#[command(
    name = "walbundle",
    version,
    long_version = LONG_VERSION,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take one verified full snapshot of a live database now, as a new generation.
    Snapshot(cmd::snapshot::Args),
    /// Capture continuously: a generation if none is usable, then WAL bundles, until stopped.
    Capture(cmd::capture::Args),
    /// Show a set's generations, sizes and restorable points.
    List(cmd::list::Args),
    /// Prove a set intact and restorable (exit 0 clean, 1 problems found, 2 could not run).
    Verify(cmd::verify::Args),
    /// Rebuild a database from a set, verify it, and publish it atomically at --out.
    Restore(cmd::restore::Args),
    /// Replay older history into a new verified generation (offline), then apply retention.
    Compact(cmd::compact::Args),
    /// Is every database's protection current? (exit 0 healthy, 1 stale or failing)
    Status(cmd::status::Args),
    /// Install, list or remove schedules (systemd user units, crontab, launchd).
    Schedule(cmd::schedule::Args),
    /// Run the whole job end to end on a demo database (created if missing): write, snapshot,
    /// list, verify, restore, compare.
    Demo(cmd::demo::Args),
    /// Print the man page or shell completions (for packagers).
    Generate(cmd::generate::Args),
}

/// `--version`: the tool's version and the on-disk format versions it reads and writes.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nformat: reads and writes version 1 of the set record (walbundle-set), the generation \
     manifest (walbundle-generation) and the generation image, versions 1 and 2 of the WAL \
     bundle (.wbb); spec: format/README.md"
);

/// SQLite check on a materialised image.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Check {
    /// `PRAGMA integrity_check`.
    Full,
    /// `PRAGMA quick_check` (faster on large databases).
    Quick,
}

impl From<Check> for walbundle::CheckLevel {
    fn from(c: Check) -> Self {
        match c {
            Check::Full => Self::Full,
            Check::Quick => Self::Quick,
        }
    }
}

/// Options every command shares.
#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// Print a machine-readable JSON report on stdout (and no progress bar).
    #[arg(long)]
    json: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

/// `--config` for commands that take a set's path: only the object-store settings are used.
#[derive(Debug, Clone, clap::Args)]
struct StoreConfig {
    /// Reach s3:// sets with the object-store settings of this config (its `[s3]` table and
    /// each database's `s3`), over the AWS_* environment.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl StoreConfig {
    /// Register the config's object-store settings.
    fn apply(&self) -> walbundle::Result<()> {
        if let Some(p) = &self.config {
            walbundle::ops::config::Config::load(p)?;
        }
        Ok(())
    }
}

/// Where a set lives: a destination folder and the set name.
#[derive(Debug, Clone, clap::Args)]
struct DestArgs {
    /// Destination holding one backup set per database: a folder, or s3://BUCKET/PREFIX (an
    /// S3-compatible store; endpoint and credentials from the AWS_* environment, or a
    /// config's `[s3]` settings).
    #[arg(long, env = "WALBUNDLE_DEST", value_name = "DIR|URL")]
    dest: Option<PathBuf>,
    /// Set name (default: the database file's stem, e.g. `app` for app.db).
    #[arg(long)]
    name: Option<String>,
    /// Allow a destination inside the database's own folder (a backup there dies with the data).
    #[arg(long)]
    allow_inside_source: bool,
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // NO_COLOR (no-color.org): any non-empty value turns colour off, whatever the terminal.
    let mut command = Cli::command();
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        command = command.color(clap::ColorChoice::Never);
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let (json, result) = match cli.command {
        Command::Snapshot(a) => (a.common.json, cmd::snapshot::run(a)),
        Command::Capture(a) => (a.common.json, cmd::capture::run(a)),
        Command::List(a) => (a.common.json, cmd::list::run(a)),
        Command::Verify(a) => (a.common.json, cmd::verify::run(a)),
        Command::Restore(a) => (a.common.json, cmd::restore::run(a)),
        Command::Compact(a) => (a.common.json, cmd::compact::run(a)),
        Command::Status(a) => (a.common.json, cmd::status::run(a)),
        Command::Schedule(a) => (
            match &a.action {
                cmd::schedule::Action::Install(i) => i.common.json,
                cmd::schedule::Action::List(l) => l.common.json,
                cmd::schedule::Action::Remove(r) => r.common.json,
            },
            cmd::schedule::run(a),
        ),
        Command::Demo(a) => (false, cmd::demo::run(a)),
        Command::Generate(a) => (false, cmd::generate::run(&a)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            ui::print_error(&e, json);
            ExitCode::from(2)
        }
    }
}
