//! Schedules that keep a config's databases protected without a human: systemd user units, a
//! tagged crontab entry, a launchd agent, or a Windows Task Scheduler task, running `walbundle
//! capture`/`snapshot`/`compact` for a config. Install is idempotent on the name; remove leaves
//! nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use super::config::{Config, Mode};
use crate::{Error, Result};

/// Where a schedule lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// systemd if its user manager answers, else cron.
    Auto,
    /// systemd user units.
    Systemd,
    /// The user's crontab.
    Cron,
    /// A launchd agent (macOS).
    Launchd,
    /// A Windows Task Scheduler task `\walbundle\NAME` (snapshot mode), registered with
    /// `schtasks /Create /XML`.
    #[serde(rename = "task-scheduler")]
    TaskScheduler,
}

/// What to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Schedule name (letters, digits, `-`, `_`): units are `walbundle-NAME.*`.
    pub name: String,
    /// The config file the schedule runs (its absolute path is recorded).
    pub config: PathBuf,
    /// Capture (continuous, plus hourly compaction) or snapshot (periodic snapshot + compaction).
    pub mode: Mode,
    /// Snapshot mode: how often.
    pub every: Duration,
    /// Where the schedule lives.
    pub backend: Backend,
    /// Units (or the launchd plist, or the task XML) go into this folder instead of the user's
    /// default.
    pub unit_dir: Option<PathBuf>,
    /// Write the files only: do not call systemctl/launchctl/schtasks.
    pub no_start: bool,
    /// The walbundle executable the schedule runs (absolute).
    pub exe: PathBuf,
}

/// What [`install`] did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// The schedule's name.
    pub name: String,
    /// The backend used (never `Auto`).
    pub backend: Backend,
    /// The config's absolute path.
    pub config: String,
    /// Databases of the config in the schedule's mode.
    pub databases_in_mode: usize,
    /// Unit or plist files written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Crontab lines installed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub crontab_lines: Vec<String>,
    /// Whether anything changed (false: it was installed exactly so already).
    pub changed: bool,
    /// Things the user should know (lingering off, no database in this mode yet).
    pub warnings: Vec<String>,
}

impl InstallReport {
    /// The report as one line (what `walbundle schedule install` prints).
    pub fn describe(&self) -> String {
        let what = if self.files.is_empty() {
            &self.crontab_lines
        } else {
            &self.files
        };
        let backend = serde_json::to_value(self.backend)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        format!(
            "schedule {} installed ({backend}): {}",
            self.name,
            what.join(", ")
        )
    }
}

const TAG: &str = "# walbundle:";

/// The running walbundle executable, absolute (what a schedule records and runs).
///
/// # Errors
/// `Io` if the OS cannot say where it is.
pub fn this_executable() -> Result<PathBuf> {
    std::env::current_exe()
        .and_then(|p| crate::sys::canonicalize(&p))
        .map_err(|e| Error::io(Path::new("walbundle"), "locating this executable", e))
}

pub fn check_name(n: &str) -> Result<()> {
    if n.is_empty()
        || n.len() > 64
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::usage(format!(
            "schedule name {n:?} must be 1-64 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

fn home() -> PathBuf {
    crate::sys::home_dir().unwrap_or_else(|| PathBuf::from("/"))
}

fn systemd_dir(over: Option<&Path>) -> PathBuf {
    over.map(Path::to_path_buf).unwrap_or_else(|| {
        std::env::var_os("XDG_CONFIG_HOME")
            .map_or_else(|| home().join(".config"), PathBuf::from)
            .join("systemd/user")
    })
}

fn launchd_dir(over: Option<&Path>) -> PathBuf {
    over.map(Path::to_path_buf)
        .unwrap_or_else(|| home().join("Library/LaunchAgents"))
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn systemd_available() -> bool {
    quiet_ok(Command::new("systemctl").args(["--user", "show-environment"]))
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::io(Path::new(what), "running", e))?;
    succeeded(&out, &format!("`{what}` failed"))
}

/// `Ok` if the command behind `out` exited 0; otherwise an error saying `what`, with its stderr.
fn succeeded(out: &std::process::Output, what: &str) -> Result<()> {
    if !out.status.success() {
        return Err(Error::new(
            crate::ErrorKind::Io,
            format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(())
}

/// A shell-safe single-quoted word (with `%`, which cron turns into a newline, escaped).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''").replace('%', "\\%"))
}

/// A systemd ExecStart argument (quoted when it holds spaces or quotes; `%` doubled).
fn sd_quote(s: &str) -> String {
    let s = s.replace('%', "%%");
    if s.contains([' ', '"', '\\', '\'']) {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s
    }
}

fn units(name: &str, exe: &str, cfg: &str, mode: Mode, every: Duration) -> Vec<(String, String)> {
    let doc = "";
    let (e, c) = (sd_quote(exe), sd_quote(cfg));
    let timer = |what: &str, every_s: u64| {
        format!(
            "[Unit]\nDescription=walbundle {what} timer ({name})\n{doc}\n[Timer]\nOnBootSec=2min\n\
             OnUnitActiveSec={every_s}s\nAccuracySec=1min\n\n[Install]\nWantedBy=timers.target\n"
        )
    };
    match mode {
        Mode::Capture => vec![
            (
                format!("walbundle-{name}.service"),
                format!(
                    "[Unit]\nDescription=walbundle continuous capture ({name})\n{doc}\
                     StartLimitIntervalSec=0\n\n[Service]\nType=simple\n\
                     ExecStart={e} capture --config {c}\nRestart=always\nRestartSec=10\n\
                     KillSignal=SIGTERM\nTimeoutStopSec=60\n\n[Install]\nWantedBy=default.target\n"
                ),
            ),
            (
                format!("walbundle-{name}-compact.service"),
                format!(
                    "[Unit]\nDescription=walbundle compaction ({name})\n{doc}\n[Service]\n\
                     Type=oneshot\nExecStart={e} compact --config {c} -q\n"
                ),
            ),
            (
                format!("walbundle-{name}-compact.timer"),
                timer("compaction", 3600),
            ),
        ],
        Mode::Snapshot => vec![
            (
                format!("walbundle-{name}.service"),
                format!(
                    "[Unit]\nDescription=walbundle snapshot and compaction ({name})\n{doc}\n\
                     [Service]\nType=oneshot\nExecStart={e} snapshot --config {c} -q\n\
                     ExecStart={e} compact --config {c} -q\n"
                ),
            ),
            (
                format!("walbundle-{name}.timer"),
                timer("snapshot", every.as_secs().max(60)),
            ),
        ],
    }
}

fn cron_when(every: Duration) -> String {
    let m = (every.as_secs() / 60).max(1);
    if m < 60 {
        format!("*/{m} * * * *")
    } else if m < 1440 {
        format!("0 */{} * * *", (m / 60).clamp(1, 23))
    } else {
        format!("0 3 */{} * *", (m / 1440).clamp(1, 28))
    }
}

fn cron_lines(name: &str, exe: &str, cfg: &str, mode: Mode, every: Duration) -> Vec<String> {
    let log_dir = home().join(".local/state/walbundle");
    let log = sh_quote(&log_dir.join(format!("{name}.log")).display().to_string());
    let (e, c) = (sh_quote(exe), sh_quote(cfg));
    let mk = format!("mkdir -p {} &&", sh_quote(&log_dir.display().to_string()));
    let tag = format!("{TAG}{name}");
    match mode {
        Mode::Capture => {
            let lock = sh_quote(&log_dir.join(format!("{name}.lock")).display().to_string());
            vec![
                format!(
                    "* * * * * {mk} flock -n {lock} {e} capture --config {c} -q >> {log} 2>&1 {tag}"
                ),
                format!("17 * * * * {mk} {e} compact --config {c} -q >> {log} 2>&1 {tag}"),
            ]
        }
        Mode::Snapshot => vec![format!(
            "{} {mk} {e} snapshot --config {c} -q >> {log} 2>&1; {e} compact --config {c} -q >> {log} 2>&1 {tag}",
            cron_when(every)
        )],
    }
}

fn launchd_plist(name: &str, exe: &str, cfg: &str, mode: Mode, every: Duration) -> String {
    let x = xml_escape;
    let (verb, extra) = match mode {
        Mode::Capture => ("capture", "  <key>KeepAlive</key>\n  <true/>\n".to_string()),
        Mode::Snapshot => (
            "snapshot",
            format!(
                "  <key>StartInterval</key>\n  <integer>{}</integer>\n",
                every.as_secs().max(60)
            ),
        ),
    };
    let log = home().join(format!("Library/Logs/walbundle-{name}.log"));
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <plist version=\"1.0\">\n<dict>\n  <key>Label</key>\n  <string>com.walbundle.{name}</string>\n\
         \x20 <key>ProgramArguments</key>\n  <array>\n    <string>{}</string>\n    <string>{verb}</string>\n\
         \x20   <string>--config</string>\n    <string>{}</string>\n  </array>\n\
         \x20 <key>RunAtLoad</key>\n  <true/>\n{extra}\
         \x20 <key>StandardErrorPath</key>\n  <string>{}</string>\n</dict>\n</plist>\n",
        x(exe),
        x(cfg),
        x(&log.display().to_string())
    )
}

fn read_crontab() -> Result<String> {
    let out = Command::new("crontab").arg("-l").output().map_err(|e| {
        Error::io(Path::new("crontab"), "running", e)
            .hint("install cron (Debian: apt-get install cron), or use --backend systemd")
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Ok(String::new()) // "no crontab for USER"
    }
}

fn write_crontab(text: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(Path::new("crontab"), "running", e))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(text.as_bytes())
            .map_err(|e| Error::io(Path::new("crontab"), "writing", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(Path::new("crontab"), "running", e))?;
    succeeded(&out, "crontab refused the new table")
}

fn without_tag(table: &str, name: &str) -> String {
    let tag = format!("{TAG}{name}");
    table
        .lines()
        .filter(|l| !l.trim_end().ends_with(&tag))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn linger_warning() -> Option<String> {
    let user = std::env::var("USER").unwrap_or_default();
    let out = Command::new("loginctl")
        .args(["show-user", &user, "--property=Linger"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout);
            (s.trim() == "Linger=no").then(|| {
                format!(
                    "lingering is disabled for {user}: systemd stops your user units when you log \
                     out. Run `loginctl enable-linger {user}` to keep protection running."
                )
            })
        }
        _ => Some(
            "could not ask loginctl whether your user session outlives logout (under WSL2 and \
             some containers it does not): check that the schedule still runs after logging out"
                .into(),
        ),
    }
}

/// Install (or update) the schedule: idempotent on the name — units of this name that the new
/// set does not include are removed, unchanged files are not rewritten.
///
/// # Errors
/// `Usage` for a bad name; the config cannot be read or its databases resolved (caught at
/// install, not at 3 a.m.); `Io` writing files; a failing systemctl/launchctl/crontab call.
pub fn install(a: &InstallOptions) -> Result<InstallReport> {
    check_name(&a.name)?;
    let cfg_path = crate::sys::canonicalize(&a.config)
        .map_err(|e| Error::io(&a.config, "reading config", e))?;
    let cfg = Config::load(&cfg_path)?;
    // The databases must resolve now (a typo is better caught at install than at 3 a.m.).
    let dbs = cfg.resolve(&cfg_path, None)?;
    let mode_dbs = dbs.iter().filter(|d| d.mode == a.mode).count();
    let (exe, cfgs) = (a.exe.display().to_string(), cfg_path.display().to_string());
    let backend = match a.backend {
        Backend::Auto if cfg!(windows) => Backend::TaskScheduler,
        Backend::Auto if systemd_available() => Backend::Systemd,
        Backend::Auto => Backend::Cron,
        b => b,
    };
    let mut report = InstallReport {
        name: a.name.clone(),
        backend,
        config: cfgs.clone(),
        databases_in_mode: mode_dbs,
        files: Vec::new(),
        crontab_lines: Vec::new(),
        changed: false,
        warnings: Vec::new(),
    };
    let mut warnings = Vec::new();
    match backend {
        Backend::Systemd => {
            let dir = systemd_dir(a.unit_dir.as_deref());
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(&dir, "creating unit folder", e))?;
            // Idempotent: units of this name that the new set does not include are removed.
            let new = units(&a.name, &exe, &cfgs, a.mode, a.every);
            let old = installed_units(&dir, &a.name);
            let mut changed = false;
            for (f, text) in &new {
                let p = dir.join(f);
                if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
                    std::fs::write(&p, text).map_err(|e| Error::io(&p, "writing unit", e))?;
                    changed = true;
                }
            }
            for f in old.iter().filter(|f| !new.iter().any(|(n, _)| n == *f)) {
                if !a.no_start {
                    let _ =
                        quiet_ok(Command::new("systemctl").args(["--user", "disable", "--now", f]));
                }
                let _ = std::fs::remove_file(dir.join(f));
                changed = true;
            }
            if !a.no_start {
                run_checked(
                    Command::new("systemctl").args(["--user", "daemon-reload"]),
                    "systemctl --user daemon-reload",
                )?;
                for (f, _) in new.iter().filter(|(f, _)| {
                    f.ends_with(".timer") || (a.mode == Mode::Capture && !f.contains("-compact"))
                }) {
                    run_checked(
                        Command::new("systemctl").args(["--user", "enable", "--now", f]),
                        &format!("systemctl --user enable --now {f}"),
                    )?;
                    if changed && f.ends_with(".service") {
                        let _ = quiet_ok(Command::new("systemctl").args(["--user", "restart", f]));
                    }
                }
                warnings.extend(linger_warning());
            }
            report.files = new
                .iter()
                .map(|(f, _)| dir.join(f).display().to_string())
                .collect();
            report.changed = changed;
        }
        Backend::Cron => {
            let table = read_crontab()?;
            let mut next = without_tag(&table, &a.name);
            let lines = cron_lines(&a.name, &exe, &cfgs, a.mode, a.every);
            for l in &lines {
                next.push_str(l);
                next.push('\n');
            }
            if next != table {
                write_crontab(&next)?;
            }
            report.crontab_lines = lines;
            report.changed = next != table;
        }
        Backend::Launchd => {
            let dir = launchd_dir(a.unit_dir.as_deref());
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "creating folder", e))?;
            let p = dir.join(format!("com.walbundle.{}.plist", a.name));
            let text = launchd_plist(&a.name, &exe, &cfgs, a.mode, a.every);
            report.changed = std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str());
            std::fs::write(&p, text).map_err(|e| Error::io(&p, "writing plist", e))?;
            if !a.no_start && cfg!(target_os = "macos") {
                let _ = quiet_ok(Command::new("launchctl").arg("unload").arg(&p));
                run_checked(
                    Command::new("launchctl").arg("load").arg(&p),
                    "launchctl load",
                )?;
            }
            report.files = vec![p.display().to_string()];
        }
        Backend::TaskScheduler => {
            if a.mode == Mode::Capture {
                // The same refusal capture itself gives on Windows, at install rather than at
                // every logon.
                crate::capture::engine::refuse_on_windows(&cfg_path).and(Err(Error::refused(
                    "the Task Scheduler backend runs snapshot mode only (continuous capture \
                         is not available on Windows)",
                )
                .at(&cfg_path)
                .hint("pass --mode snapshot --every 15m (or the interval you want)")))?;
            }
            let dir = tasks_dir(a.unit_dir.as_deref());
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "creating folder", e))?;
            let launcher = launcher_beside(&a.exe);
            if cfg!(windows) && !launcher.exists() {
                return Err(Error::refused(
                    "walbundle-task.exe, which the task runs so that no console window opens, \
                     is not beside walbundle.exe",
                )
                .at(&launcher)
                .hint("install both executables of the release into one folder"));
            }
            let p = dir.join(format!("walbundle-{}.xml", a.name));
            let log = log_dir().join(format!("{}.log", a.name));
            let xml = task_xml(
                &a.name,
                &launcher,
                &cfg_path,
                &log,
                a.every,
                jiff::Zoned::now(),
            );
            // The start boundary is the install time: compare without it.
            let old = std::fs::read(&p).ok().and_then(|b| utf16_text(&b));
            report.changed = old.as_deref().map(without_start) != Some(without_start(&xml));
            if report.changed {
                std::fs::write(&p, utf16_with_bom(&xml))
                    .map_err(|e| Error::io(&p, "writing task XML", e))?;
            }
            if !a.no_start {
                let tn = task_name(&a.name);
                run_checked(
                    Command::new("schtasks")
                        .args(["/Create", "/TN", &tn, "/XML"])
                        .arg(&p)
                        .arg("/F"),
                    &format!("schtasks /Create /TN {tn} /XML … /F"),
                )?;
            }
            report.files = vec![p.display().to_string()];
            warnings.push(format!(
                "the task runs while you are logged on; its output goes to {}",
                log.display()
            ));
        }
        Backend::Auto => unreachable!("resolved above"),
    }
    if mode_dbs == 0 {
        warnings.push(format!(
            "the config names no {} database (yet): the schedule will have nothing to do until one appears",
            if a.mode == Mode::Capture { "capture-mode" } else { "snapshot-mode" }
        ));
    }
    report.warnings = warnings;
    Ok(report)
}

// ---- Windows Task Scheduler ----------------------------------------------------------------

/// The task's full name: a `walbundle` folder in the Task Scheduler library.
fn task_name(name: &str) -> String {
    format!(r"\walbundle\{name}")
}

/// Where the task definitions are kept (what `schedule list` reads: Task Scheduler's own
/// query is not needed, and not available under Wine): `%LOCALAPPDATA%\walbundle\tasks`.
fn tasks_dir(over: Option<&Path>) -> PathBuf {
    over.map(Path::to_path_buf)
        .unwrap_or_else(|| local_app_data().join("walbundle").join("tasks"))
}

/// `%LOCALAPPDATA%\walbundle\logs`, where the scheduled runs write.
fn log_dir() -> PathBuf {
    local_app_data().join("walbundle").join("logs")
}

fn local_app_data() -> PathBuf {
    crate::sys::local_app_data().unwrap_or_else(|| home().join(".local/state"))
}

fn launcher_beside(exe: &Path) -> PathBuf {
    let name = if cfg!(windows) {
        "walbundle-task.exe"
    } else {
        "walbundle-task"
    };
    exe.with_file_name(name)
}

/// One argument of a Windows command line, quoted the way `CommandLineToArgvW` (and Rust's,
/// and the C runtime's) parsing reads it back.
fn win_quote(s: &str) -> String {
    if !s.is_empty() && !s.contains([' ', '\t', '"']) {
        return s.to_string();
    }
    let mut out = String::from("\"");
    let mut backslashes = 0;
    for c in s.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            c => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// ISO 8601 duration of at least a minute, in minutes (`PT15M`).
fn iso_minutes(every: Duration) -> String {
    format!("PT{}M", (every.as_secs() / 60).clamp(1, 31 * 24 * 60))
}

/// The task definition (elements in the schema's order: triggers are a sequence): a time
/// trigger repeating every `every` from `now` (missed runs are
/// started when the machine is back), two actions — snapshot, then compaction — each through
/// the launcher (no console window, output appended to `log`), one instance at a time, a
/// four-hour limit per run, and the user's own rights while logged on (README "Windows").
fn task_xml(
    name: &str,
    launcher: &Path,
    cfg: &Path,
    log: &Path,
    every: Duration,
    now: jiff::Zoned,
) -> String {
    let start = now.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let action = |verb: &str| {
        let args = [
            "--log".to_string(),
            log.display().to_string(),
            verb.to_string(),
            "--config".to_string(),
            cfg.display().to_string(),
            "-q".to_string(),
        ];
        let line: Vec<String> = args.iter().map(|a| win_quote(a)).collect();
        format!(
            "    <Exec>\n      <Command>{}</Command>\n      <Arguments>{}</Arguments>\n    </Exec>\n",
            xml_escape(&win_quote(&launcher.display().to_string())),
            xml_escape(&line.join(" "))
        )
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-16\"?>\n\
         <Task version=\"1.2\" xmlns=\"http://schemas.microsoft.com/windows/2004/02/mit/task\">\n\
         \x20 <RegistrationInfo>\n\
         \x20   <Description>walbundle snapshot and compaction ({name}) for {}</Description>\n\
         \x20   <URI>{}</URI>\n\
         \x20 </RegistrationInfo>\n\
         \x20 <Triggers>\n\
         \x20   <TimeTrigger>\n\
         \x20     <Enabled>true</Enabled>\n\
         \x20     <StartBoundary>{start}</StartBoundary>\n\
         \x20     <Repetition>\n\
         \x20       <Interval>{}</Interval>\n\
         \x20       <StopAtDurationEnd>false</StopAtDurationEnd>\n\
         \x20     </Repetition>\n\
         \x20   </TimeTrigger>\n\
         \x20 </Triggers>\n\
         \x20 <Principals>\n\
         \x20   <Principal id=\"Author\">\n\
         \x20     <LogonType>InteractiveToken</LogonType>\n\
         \x20     <RunLevel>LeastPrivilege</RunLevel>\n\
         \x20   </Principal>\n\
         \x20 </Principals>\n\
         \x20 <Settings>\n\
         \x20   <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>\n\
         \x20   <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>\n\
         \x20   <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>\n\
         \x20   <StartWhenAvailable>true</StartWhenAvailable>\n\
         \x20   <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>\n\
         \x20   <ExecutionTimeLimit>PT4H</ExecutionTimeLimit>\n\
         \x20   <Enabled>true</Enabled>\n\
         \x20   <Hidden>false</Hidden>\n\
         \x20   <RestartOnFailure>\n\
         \x20     <Interval>PT5M</Interval>\n\
         \x20     <Count>3</Count>\n\
         \x20   </RestartOnFailure>\n\
         \x20 </Settings>\n\
         \x20 <Actions Context=\"Author\">\n{}{}\
         \x20 </Actions>\n\
         </Task>\n",
        xml_escape(&cfg.display().to_string()),
        xml_escape(&task_name(name)),
        iso_minutes(every),
        action("snapshot"),
        action("compact"),
    )
}

/// The definition without its `StartBoundary` line (which is the install time).
fn without_start(xml: &str) -> String {
    xml.lines()
        .filter(|l| !l.trim_start().starts_with("<StartBoundary>"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// UTF-16LE with a byte-order mark: the encoding `schtasks /XML` reads.
fn utf16_with_bom(s: &str) -> Vec<u8> {
    let mut b = vec![0xFF, 0xFE];
    for u in s.encode_utf16() {
        b.extend_from_slice(&u.to_le_bytes());
    }
    b
}

fn utf16_text(b: &[u8]) -> Option<String> {
    let body = b.strip_prefix(&[0xFF, 0xFE])?;
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

fn installed_tasks(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let f = e.file_name().to_string_lossy().into_owned();
                    let n = f
                        .strip_prefix("walbundle-")?
                        .strip_suffix(".xml")?
                        .to_string();
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn installed_units(dir: &Path, name: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| {
                    let stem = f.trim_end_matches(".service").trim_end_matches(".timer");
                    (f.ends_with(".service") || f.ends_with(".timer"))
                        && (stem == format!("walbundle-{name}")
                            || stem == format!("walbundle-{name}-compact"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn all_schedules(unit_dir: Option<&Path>) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    let dir = systemd_dir(unit_dir);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| {
                f.starts_with("walbundle-") && (f.ends_with(".service") || f.ends_with(".timer"))
            })
            .collect();
        names.sort();
        for f in names {
            let stem = f.trim_end_matches(".service").trim_end_matches(".timer");
            let n = stem
                .trim_start_matches("walbundle-")
                .trim_end_matches("-compact");
            out.push((n.to_string(), "systemd", dir.join(&f).display().to_string()));
        }
    }
    if let Ok(t) = read_crontab() {
        for l in t.lines() {
            if let Some(i) = l.rfind(TAG) {
                out.push((l[i + TAG.len()..].trim().to_string(), "cron", l.to_string()));
            }
        }
    }
    let td = tasks_dir(unit_dir);
    if cfg!(windows) || unit_dir.is_some() {
        for (n, p) in installed_tasks(&td) {
            out.push((n, "task-scheduler", p.display().to_string()));
        }
    }
    let ld = launchd_dir(None);
    if let Ok(rd) = std::fs::read_dir(&ld) {
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = f
                .strip_prefix("com.walbundle.")
                .and_then(|x| x.strip_suffix(".plist"))
            {
                out.push((n.to_string(), "launchd", ld.join(&f).display().to_string()));
            }
        }
    }
    out
}

/// One installed schedule entry: a unit file, a crontab line or a launchd agent.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// The schedule's name.
    pub name: String,
    /// `systemd`, `cron`, `launchd` or `task-scheduler`.
    pub backend: &'static str,
    /// The unit or plist file, or the crontab line.
    pub entry: String,
}

/// Every walbundle schedule installed for this user (systemd units in `unit_dir` or the user's
/// default folder, tagged crontab lines, launchd agents).
pub fn list(unit_dir: Option<&Path>) -> Vec<Schedule> {
    all_schedules(unit_dir)
        .into_iter()
        .map(|(name, backend, entry)| Schedule {
            name,
            backend,
            entry,
        })
        .collect()
}

/// Stop and remove the schedule `name` from every backend; returns what was removed (empty:
/// there was none). `no_start`: remove the files only, without calling systemctl/launchctl.
///
/// # Errors
/// `Usage` for a bad name; `Io` if a file cannot be removed or the crontab rewritten.
pub fn remove(name: &str, unit_dir: Option<&Path>, no_start: bool) -> Result<Vec<String>> {
    check_name(name)?;
    let mut removed = Vec::new();
    let dir = systemd_dir(unit_dir);
    let units = installed_units(&dir, name);
    if !units.is_empty() {
        if !no_start {
            for f in &units {
                let _ = quiet_ok(Command::new("systemctl").args(["--user", "disable", "--now", f]));
            }
        }
        for f in &units {
            let p = dir.join(f);
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, "removing unit", e))?;
            removed.push(p.display().to_string());
        }
        if !no_start {
            let _ = quiet_ok(Command::new("systemctl").args(["--user", "daemon-reload"]));
        }
    }
    if let Ok(t) = read_crontab()
        && t.contains(&format!("{TAG}{}", name))
    {
        let next = without_tag(&t, name);
        if next.trim().is_empty() {
            // Nothing else was in it: remove the table rather than leave an empty one.
            run_checked(Command::new("crontab").arg("-r"), "crontab -r")?;
        } else {
            write_crontab(&next)?;
        }
        removed.push(format!("crontab entries tagged {TAG}{}", name));
    }
    let task = tasks_dir(unit_dir).join(format!("walbundle-{name}.xml"));
    if task.exists() {
        if !no_start {
            let tn = task_name(name);
            run_checked(
                Command::new("schtasks").args(["/Delete", "/TN", &tn, "/F"]),
                &format!("schtasks /Delete /TN {tn} /F"),
            )?;
        }
        std::fs::remove_file(&task).map_err(|e| Error::io(&task, "removing", e))?;
        removed.push(task.display().to_string());
    }
    let plist = launchd_dir(unit_dir).join(format!("com.walbundle.{}.plist", name));
    if plist.exists() {
        if !no_start && cfg!(target_os = "macos") {
            let _ = quiet_ok(Command::new("launchctl").arg("unload").arg(&plist));
        }
        std::fs::remove_file(&plist).map_err(|e| Error::io(&plist, "removing", e))?;
        removed.push(plist.display().to_string());
    }
    Ok(removed)
}
