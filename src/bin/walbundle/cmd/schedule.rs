//! `walbundle schedule install|list|remove`: keep a config's databases protected without a
//! terminal — systemd user units where the user manager runs, a tagged crontab entry
//! otherwise, a launchd agent on macOS, a Task Scheduler task on Windows.

use std::path::PathBuf;
use std::time::Duration;

use walbundle::Result;
use walbundle::ops::config::{self, Mode};
use walbundle::ops::schedule::{self as sched, InstallOptions};

use crate::Common;
use crate::ui;

/// Arguments of `schedule`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Install (or update: idempotent on --name) the units or crontab entry for a config.
    #[command(
        after_help = "capture mode: a service running `walbundle capture --config FILE` \
        (restarted on failure), plus a timer running `walbundle compact --config FILE` hourly.\n\
        snapshot mode: a timer running `walbundle snapshot --config FILE` then `walbundle compact \
        --config FILE` every --every.\n\n\
        Backends: systemd (user units in ~/.config/systemd/user, enabled and started; needs the \
        user manager, which ends at logout unless lingering is enabled: `loginctl enable-linger`), \
        cron (crontab lines tagged `# walbundle:NAME`; capture is started every minute under \
        `flock -n`, so it is restarted within a minute after a crash or reboot), launchd (a \
        LaunchAgent plist in ~/Library/LaunchAgents), task-scheduler (Windows, snapshot mode: \
        a task \\walbundle\\NAME registered with `schtasks /Create /XML`, its definition kept in \
        %LOCALAPPDATA%\\walbundle\\tasks, run through walbundle-task.exe so that no console \
        window opens, output appended to %LOCALAPPDATA%\\walbundle\\logs\\NAME.log). auto: \
        task-scheduler on Windows; elsewhere systemd if `systemctl --user` works, else cron."
    )]
    Install(InstallArgs),
    /// List installed schedules (units, crontab entries, agents).
    List(ListArgs),
    /// Stop and remove a schedule; leaves nothing behind.
    Remove(RemoveArgs),
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Schedule name (letters, digits, `-`, `_`): units are `walbundle-NAME.*`.
    #[arg(long)]
    pub name: String,
    /// The config file the schedule runs (its absolute path is recorded).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// capture (continuous, plus hourly compaction) or snapshot (periodic snapshot +
    /// compaction). Default: capture; on Windows snapshot.
    #[arg(long, value_enum, default_value = Mode::PLATFORM_DEFAULT_NAME)]
    pub mode: Mode,
    /// Snapshot mode: how often (e.g. 30m, 1h, 1d).
    #[arg(long, default_value = "1h", value_parser = config::duration)]
    pub every: Duration,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: sched::Backend,
    /// Write units (or the launchd plist, or the task XML) into this folder instead of the
    /// user's default.
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    /// Write the files only: do not call systemctl/launchctl/schtasks.
    #[arg(long)]
    pub no_start: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Look for units in this folder instead of the user's default.
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The schedule's name.
    #[arg(long)]
    pub name: String,
    /// Remove units from this folder instead of the user's default.
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    /// Remove the files only: do not call systemctl/launchctl/schtasks.
    #[arg(long)]
    pub no_start: bool,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(a: Args) -> Result<u8> {
    match a.action {
        Action::Install(i) => install(i),
        Action::List(l) => list(&l),
        Action::Remove(r) => remove(&r),
    }
}

fn install(a: InstallArgs) -> Result<u8> {
    let exe = sched::this_executable()?;
    let r = sched::install(&InstallOptions {
        name: a.name,
        config: a.config,
        mode: a.mode,
        every: a.every,
        backend: a.backend,
        unit_dir: a.unit_dir,
        no_start: a.no_start,
        exe,
    })?;
    if a.common.json {
        ui::json(&serde_json::to_value(&r).unwrap_or_default());
    } else if !a.common.quiet {
        ui::out(&format!("{}\n", r.describe()));
    }
    for w in &r.warnings {
        eprintln!("walbundle: warning: {w}");
    }
    Ok(0)
}

fn list(a: &ListArgs) -> Result<u8> {
    let all = sched::list(a.unit_dir.as_deref());
    if a.common.json {
        ui::json(&serde_json::json!({ "schedules": all }));
    } else if all.is_empty() {
        ui::out("no walbundle schedules installed\n");
    } else {
        for s in &all {
            ui::out(&format!("{}\t{}\t{}\n", s.name, s.backend, s.entry));
        }
    }
    Ok(0)
}

fn remove(a: &RemoveArgs) -> Result<u8> {
    let removed = sched::remove(&a.name, a.unit_dir.as_deref(), a.no_start)?;
    if a.common.json {
        ui::json(&serde_json::json!({ "name": a.name, "removed": removed }));
    } else if !a.common.quiet {
        if removed.is_empty() {
            ui::out(&format!("no schedule named {}\n", a.name));
        } else {
            for r in &removed {
                ui::out(&format!("removed {r}\n"));
            }
        }
    }
    Ok(0)
}
