//! The `--config` file shared by `capture`, `snapshot`, `compact`, `status` and `schedule`:
//! many databases (paths or glob patterns) with their destination, mode and retention.
//!
//! ```toml
//! dest = "~/backups"            # default destination for every database
//! interval = "1s"               # capture: the longest a commit waits to be sealed
//! rescan = "30s"                # capture: how often glob patterns are matched again
//! stale_after = "5m"            # status: how old the newest capture may be
//! on_error = "notify-send walbundle \"$WALBUNDLE_ERROR\""
//!
//! [[database]]
//! path = "~/.app/global.db"
//! name = "global"               # set name (default: the file stem)
//!
//! [[database]]
//! path = "~/projects/*/.app/project.db"   # a pattern: * and ? within one path component
//! name = "project-{1}"          # {1}: what the first wildcard component matched
//! mode = "snapshot"             # or "capture" (the default; on Windows "snapshot" is)
//! every = "1h"                  # snapshot mode: how often the schedule snapshots
//! keep = 24                     # snapshot retention
//! retain_days = 7
//!
//! [s3]                          # settings for every s3:// destination below (each field
//! endpoint = "https://<account>.r2.cloudflarestorage.com"   # wins over the AWS environment)
//! region = "auto"
//! profile = "backups"           # keys from ~/.aws/credentials [backups]
//!
//! [[database]]
//! path = "~/srv/orders.db"
//! dest = "s3://orders-backups/prod"
//! s3 = { endpoint = "https://s3.eu-west-1.amazonaws.com", region = "eu-west-1" }
//! ```
//!
//! The `s3` settings (see [`crate::store::S3Settings`]) are registered for their destination
//! when the config is loaded, so every command given `--config` reaches each bucket as the
//! config says.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Error, Result};

/// How a database is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Mode {
    /// Continuous capture (`capture --config`).
    Capture,
    /// Periodic snapshots (`snapshot --config`, from a schedule).
    Snapshot,
}

impl Mode {
    /// A database's mode when its entry names none: capture, except on Windows, where capture
    /// is not available and snapshots are the way.
    pub const PLATFORM_DEFAULT: Mode = if cfg!(windows) {
        Mode::Snapshot
    } else {
        Mode::Capture
    };

    /// [`Mode::PLATFORM_DEFAULT`] as its command-line name.
    pub const PLATFORM_DEFAULT_NAME: &str = if cfg!(windows) { "snapshot" } else { "capture" };
}

/// The file as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Default destination.
    pub dest: Option<PathBuf>,
    /// Capture threads for the whole run.
    pub threads: Option<usize>,
    /// Default capture interval.
    pub interval: Option<String>,
    /// How often glob patterns are matched again while capturing (default 30s).
    pub rescan: Option<String>,
    /// Default staleness threshold for `status`.
    pub stale_after: Option<String>,
    /// Command run (by `sh -c`) on every failure.
    pub on_error: Option<String>,
    /// Allow destinations inside source folders.
    pub allow_inside_source: Option<bool>,
    /// Object-store settings for every `s3://` destination of the file.
    pub s3: Option<crate::store::S3Settings>,
    /// The databases.
    #[serde(default)]
    pub database: Vec<DbEntry>,
}

/// One `[[database]]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbEntry {
    /// A path, or a pattern with `*`/`?` in some components.
    pub path: PathBuf,
    /// Set name; `{1}`, `{2}`... stand for what the wildcard components matched.
    pub name: Option<String>,
    /// Destination.
    pub dest: Option<PathBuf>,
    /// Capture or snapshot.
    pub mode: Option<Mode>,
    /// Capture interval.
    pub interval: Option<String>,
    /// Snapshot mode: how often.
    pub every: Option<String>,
    /// Snapshot retention: keep N newest.
    pub keep: Option<u64>,
    /// Retention in days (snapshot and compaction).
    pub retain_days: Option<u64>,
    /// Capture: WAL bound.
    pub max_wal_mib: Option<u64>,
    /// Capture: bundle bound.
    pub max_bundle_mib: Option<u64>,
    /// Allow a destination inside the source folder.
    pub allow_inside_source: Option<bool>,
    /// Staleness threshold for `status`.
    pub stale_after: Option<String>,
    /// Object-store settings for this database's destination (over the file's `[s3]`).
    pub s3: Option<crate::store::S3Settings>,
}

/// One database after patterns are matched.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The database file.
    pub db: PathBuf,
    /// Set name.
    pub name: String,
    /// Destination folder.
    pub dest: PathBuf,
    /// Mode.
    pub mode: Mode,
    /// The table it came from.
    pub entry: DbEntry,
    /// Allow a destination inside the source folder.
    pub allow_inside_source: bool,
}

impl Resolved {
    /// The set folder.
    pub fn set_dir(&self) -> PathBuf {
        crate::chain::set_dir(&self.dest, &self.name)
    }
}

/// `~/x` → `$HOME/x` (Windows: `%USERPROFILE%\x` when `HOME` is unset).
pub fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), crate::sys::home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => p.to_path_buf(),
    }
}

/// Parse a duration: `250ms`, `30s`, `10m`, `2h`, `7d`, or plain seconds.
pub fn duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = s.strip_suffix('d') {
        (n, 86_400.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("cannot read duration {s:?} (try 250ms, 30s, 10m, 2h, 7d)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

impl Config {
    /// Read and parse `path`.
    ///
    /// # Errors
    /// `Io` if unreadable, `Usage` naming the problem if not valid.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path, "reading config", e))?;
        let cfg: Config = toml::from_str(&text)
            .map_err(|e| Error::usage(format!("config is not valid: {e}")).at(path))?;
        if cfg.database.is_empty() {
            return Err(Error::usage("config names no [[database]]").at(path));
        }
        for d in &cfg.database {
            for s in [&d.interval, &d.every, &d.stale_after]
                .into_iter()
                .flatten()
            {
                duration(s).map_err(|e| Error::usage(e).at(path))?;
            }
        }
        for s in [&cfg.interval, &cfg.rescan, &cfg.stale_after]
            .into_iter()
            .flatten()
        {
            duration(s).map_err(|e| Error::usage(e).at(path))?;
        }
        cfg.register_stores(None).map_err(|e| e.at(path))?;
        Ok(cfg)
    }

    /// Register the `s3` settings of every object-store destination (with `cli_dest` for
    /// entries that have none of their own) so that opening a set there uses them.
    ///
    /// # Errors
    /// `Usage` for `s3` settings on a destination that is not `s3://`, a half-given key pair,
    /// or two entries that give one destination different settings.
    pub fn register_stores(&self, cli_dest: Option<&Path>) -> Result<()> {
        use crate::store::{Location, S3Settings};
        let top = self.s3.clone().unwrap_or_default();
        // The file's own destination with `[s3]`, then each entry's with its settings over it.
        let entries = std::iter::once((None, self.dest.as_deref(), top.clone())).chain(
            self.database.iter().map(|d| {
                let own = d.s3.clone().unwrap_or_default();
                (
                    Some(d),
                    d.dest.as_deref().or(self.dest.as_deref()),
                    own.over(&top),
                )
            }),
        );
        let mut seen: Vec<(String, S3Settings)> = Vec::new();
        for (entry, dest, settings) in entries {
            settings.check()?;
            // An entry that gives s3 settings must have an s3:// destination to use them.
            let owner = entry.filter(|d| d.s3.is_some());
            let dest = dest.or(cli_dest);
            let loc = dest.map(Location::parse).transpose()?;
            let url = match (&loc, dest, owner) {
                (Some(l @ Location::S3 { .. }), _, _) => l.display(),
                (None, _, Some(d)) => {
                    return Err(Error::usage(format!(
                        "database {} has s3 settings but no destination",
                        d.path.display()
                    )));
                }
                (Some(_), Some(dest), Some(d)) => {
                    return Err(Error::usage(format!(
                        "database {} has s3 settings, but its destination {} is not s3://",
                        d.path.display(),
                        dest.display()
                    )));
                }
                _ => continue,
            };
            #[cfg(feature = "s3")]
            crate::store::s3::S3Config::resolve(&settings)?;
            if let Some((_, other)) = seen.iter().find(|(u, _)| *u == url) {
                if *other != settings {
                    return Err(Error::usage(format!(
                        "two entries give the destination {url} different s3 settings"
                    ))
                    .hint("give each its own dest prefix (s3://bucket/a, s3://bucket/b)"));
                }
                continue;
            }
            if !settings.is_empty() {
                crate::store::settings::configure(&url, settings.clone());
            }
            seen.push((url, settings));
        }
        Ok(())
    }

    /// How often patterns are matched again while capturing.
    pub fn rescan(&self) -> Duration {
        self.rescan
            .as_deref()
            .and_then(|s| duration(s).ok())
            .unwrap_or(Duration::from_secs(30))
    }

    /// Match every entry now: the databases that exist. A literal path that does not exist is
    /// an error; a pattern may match nothing (yet).
    ///
    /// # Errors
    /// `Usage` for an entry without a destination, a name clash, or a missing literal path.
    pub fn resolve(&self, path: &Path, cli_dest: Option<&Path>) -> Result<Vec<Resolved>> {
        if cli_dest.is_some() {
            self.register_stores(cli_dest).map_err(|e| e.at(path))?;
        }
        let mut out = Vec::new();
        let mut names = std::collections::HashSet::new();
        for d in &self.database {
            let dest = d
                .dest
                .as_deref()
                .or(self.dest.as_deref())
                .or(cli_dest)
                .map(expand_home)
                .ok_or_else(|| {
                    Error::usage(format!("database {} has no destination", d.path.display()))
                        .at(path)
                        .hint("set `dest` at the top of the config or in its [[database]] table")
                })?;
            let pattern = expand_home(&d.path);
            let matches = if is_pattern(&pattern) {
                glob(&pattern)
            } else {
                if !pattern.exists() {
                    return Err(Error::usage(format!(
                        "database {} does not exist",
                        pattern.display()
                    ))
                    .at(path)
                    .hint("fix the path, or use a pattern (with *) for databases that may appear later"));
                }
                vec![(pattern.clone(), Vec::new())]
            };
            for (db, caps) in matches {
                let stem = db
                    .file_stem()
                    .map_or_else(|| "db".into(), |s| s.to_string_lossy().into_owned());
                let name = match &d.name {
                    Some(n) => {
                        let mut n = n.clone();
                        for (i, c) in caps.iter().enumerate() {
                            n = n.replace(&format!("{{{}}}", i + 1), c);
                        }
                        n
                    }
                    None if caps.is_empty() => stem,
                    None => format!("{stem}-{}", caps.join("-")),
                };
                // Windows and macOS file systems ignore case: `App` and `app` are one folder.
                let key = if cfg!(any(windows, target_os = "macos")) {
                    name.to_lowercase()
                } else {
                    name.clone()
                };
                if !names.insert((dest.clone(), key)) {
                    return Err(Error::usage(format!(
                        "two databases would share the set {} ({}): give the entry a `name` \
                         with {{1}} for the matched part",
                        dest.join(&name).display(),
                        db.display()
                    ))
                    .at(path));
                }
                out.push(Resolved {
                    db,
                    name,
                    dest: dest.clone(),
                    mode: d.mode.unwrap_or(Mode::PLATFORM_DEFAULT),
                    entry: d.clone(),
                    allow_inside_source: d
                        .allow_inside_source
                        .or(self.allow_inside_source)
                        .unwrap_or(false),
                });
            }
        }
        Ok(out)
    }
}

fn is_pattern(p: &Path) -> bool {
    p.to_string_lossy().contains(['*', '?'])
}

/// Files matching `pattern` (`*` and `?` within single components), with what each wildcard
/// component matched, sorted.
pub fn glob(pattern: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let mut acc: Vec<(PathBuf, Vec<String>)> = vec![(PathBuf::new(), Vec::new())];
    let comps: Vec<_> = pattern.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let s = c.as_os_str().to_string_lossy().into_owned();
        let mut next = Vec::new();
        for (base, caps) in acc {
            if !s.contains(['*', '?']) {
                let p = base.join(c.as_os_str());
                if (last && p.is_file()) || (!last && p.is_dir()) {
                    next.push((p, caps));
                }
                continue;
            }
            let Ok(rd) = std::fs::read_dir(if base.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &base
            }) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && !s.starts_with('.') {
                    continue;
                }
                if !wildcard(s.as_bytes(), name.as_bytes()) {
                    continue;
                }
                let p = base.join(&name);
                if (last && p.is_file()) || (!last && p.is_dir()) {
                    let mut c2 = caps.clone();
                    c2.push(name);
                    next.push((p, c2));
                }
            }
        }
        acc = next;
    }
    acc.sort();
    acc
}

fn wildcard(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => wildcard(&p[1..], s) || (!s.is_empty() && wildcard(p, &s[1..])),
        (Some(b'?'), Some(_)) => wildcard(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => wildcard(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards() {
        assert!(wildcard(b"*.db", b"app.db"));
        assert!(wildcard(b"a?c", b"abc"));
        assert!(!wildcard(b"a?c", b"ac"));
        assert!(wildcard(b"*", b""));
        assert!(!wildcard(b"*.db", b"app.db-wal"));
    }
}
