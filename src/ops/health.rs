//! Health of protected databases, for `status` and for capture's Prometheus metrics.
//!
//! A database is *healthy* when what protects it is current:
//! - capture mode: a capture process wrote its heartbeat (`SET/.walbundle-capture.json`)
//!   recently, says it is running, and the oldest commit not yet sealed into the set has waited
//!   less than `stale_after`;
//! - snapshot mode: the newest generation is younger than `stale_after`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::capture::heartbeat::{self, Heartbeat};
use crate::{BackupSet, Error, Result};
use serde::Serialize;

use super::config::Mode;

/// Default staleness for capture: the newest commits waited longer than this.
pub const CAPTURE_STALE: Duration = Duration::from_secs(300);
/// Default staleness for snapshots without a schedule interval.
pub const SNAPSHOT_STALE: Duration = Duration::from_secs(25 * 3600);

/// The newest generation of a set.
#[derive(Debug, Clone, Serialize)]
pub struct GenInfo {
    /// Chain.
    pub chain_id: String,
    /// Sequence in the chain.
    pub seq: u64,
    /// Its transaction.
    pub txn: u64,
    /// Its state time.
    pub time: String,
}

/// One database's health.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Database path (from the config or the set record).
    pub db: String,
    /// Set folder.
    pub set: String,
    /// "capture" or "snapshot".
    pub mode: Mode,
    /// No problems.
    pub ok: bool,
    /// Capture's own state ("running", "stopped", "failing"), or "none".
    pub capture_state: String,
    /// Newest transaction in the set.
    pub last_txn: Option<u64>,
    /// When it was captured (RFC 3339).
    pub last_time: Option<String>,
    /// Seconds the oldest unsealed commit has waited (capture mode).
    pub lag_s: Option<f64>,
    /// Size of the database's WAL file now.
    pub wal_bytes: Option<u64>,
    /// Bundles capture sealed that wait on this machine for an object store that does not
    /// answer (capture mode; a restore cannot reach their transactions until they are in the
    /// set).
    pub unpublished: Option<u64>,
    /// Newest generation.
    pub last_generation: Option<GenInfo>,
    /// Restorable range (first, last txn) across chains.
    pub restorable: Option<(u64, u64)>,
    /// The last error capture reported.
    pub last_error: Option<String>,
    /// Why it is not ok.
    pub problems: Vec<String>,
    /// From the heartbeat (this capture run).
    #[serde(skip)]
    pub hb: Option<Heartbeat>,
}

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

fn time_of(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn ago(us: i64) -> String {
    let s = ((now_us() - us).max(0) / 1_000_000) as u64;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{:.1} h ago", s as f64 / 3600.0),
    }
}

/// Health of the set at `set_dir` protecting `db`. `mode` None: capture if a capture ever wrote
/// a heartbeat there, else snapshot. `full`: read the set's summary (names, generation
/// manifests, the newest bundle header of each chain: [`BackupSet::summary`]) for the newest
/// point and restorable range; without it only the heartbeat is read.
pub fn row(
    db: Option<&Path>,
    set_dir: &Path,
    mode: Option<Mode>,
    stale_after: Option<Duration>,
    full: bool,
) -> Row {
    let hb = heartbeat::read(set_dir);
    let mode = mode.unwrap_or(if hb.is_some() {
        Mode::Capture
    } else {
        Mode::Snapshot
    });
    let mut r = Row {
        db: db.map(|p| p.display().to_string()).unwrap_or_default(),
        set: set_dir.display().to_string(),
        mode,
        ok: true,
        capture_state: hb
            .as_ref()
            .map_or_else(|| "none".into(), |h| h.state.clone()),
        last_txn: None,
        last_time: None,
        lag_s: None,
        wal_bytes: None,
        unpublished: hb.as_ref().map(|h| h.unpublished),
        last_generation: None,
        restorable: None,
        last_error: hb
            .as_ref()
            .filter(|h| !h.last_error.is_empty())
            .map(|h| h.last_error.clone()),
        problems: Vec::new(),
        hb: hb.clone(),
    };
    let mut newest_us: Option<i64> = None;
    if full {
        match BackupSet::open(set_dir).and_then(|s| {
            let sum = s.summary()?;
            Ok((s, sum))
        }) {
            Err(e) => r.problems.push(format!("the set cannot be read: {e}")),
            Ok((set, sum)) => {
                if r.db.is_empty() {
                    r.db = set.record().source.path.clone();
                }
                if let Some(g) = &sum.newest_generation {
                    r.last_generation = Some(GenInfo {
                        chain_id: g.chain_id.clone(),
                        seq: g.seq,
                        txn: g.txn,
                        time: g.state_time.clone(),
                    });
                }
                r.restorable = sum.restorable;
                r.last_txn = sum.restorable.map(|(_, hi)| hi);
                newest_us = sum.newest_time_us.filter(|&t| t > 0);
                if !sum.broken.is_empty() {
                    r.problems.push(format!(
                        "a chain is broken ({}): run `walbundle verify`",
                        sum.broken.join("; ")
                    ));
                }
                if r.restorable.is_none() {
                    r.problems.push("the set holds no restorable point".into());
                }
            }
        }
    }
    if let Some(h) = &hb {
        if newest_us.is_none() && h.last_seal_us > 0 {
            newest_us = Some(h.last_seal_us);
        }
        if r.last_txn.is_none() && h.sealed_txn > 0 {
            r.last_txn = Some(h.sealed_txn);
        }
        if r.db.is_empty() {
            r.db = h.db.clone();
        }
    }
    r.last_time = newest_us.map(time_of);
    if !r.db.is_empty() {
        r.wal_bytes = std::fs::metadata(format!("{}-wal", r.db))
            .ok()
            .map(|m| m.len());
    }
    match mode {
        Mode::Capture => {
            let stale = stale_after.unwrap_or(CAPTURE_STALE);
            match &hb {
                None => r
                    .problems
                    .push("no capture has run for this set (no heartbeat)".into()),
                Some(h) => {
                    let lag = h.lag_s(now_us());
                    r.lag_s = Some(lag);
                    let beat_limit = stale
                        .min(Duration::from_secs(60))
                        .max(crate::capture::engine::HEARTBEAT_IDLE * 3)
                        .as_micros() as i64;
                    match h.state.as_str() {
                        "failing" => r.problems.push(format!(
                            "capture is failing ({}): {}",
                            ago(h.last_error_us),
                            h.last_error
                        )),
                        "stopped" => r.problems.push(format!(
                            "capture is not running (it stopped {})",
                            ago(h.at_us)
                        )),
                        _ if now_us() - h.at_us > beat_limit => r.problems.push(format!(
                            "capture is not running: its last heartbeat was {} (pid {} on {})",
                            ago(h.at_us),
                            h.pid,
                            h.host
                        )),
                        _ => {}
                    }
                    if lag > stale.as_secs_f64() {
                        let waiting = if h.unpublished > 0 {
                            format!(
                                "; {} sealed bundle(s) wait on this machine for the store",
                                h.unpublished
                            )
                        } else {
                            String::new()
                        };
                        r.problems.push(format!(
                            "the oldest commit not yet in the set has waited {lag:.0} s (limit {} \
                             s){waiting}",
                            stale.as_secs()
                        ));
                    }
                }
            }
        }
        Mode::Snapshot => {
            let stale = stale_after.unwrap_or(SNAPSHOT_STALE);
            match r.last_generation.as_ref().and_then(|g| {
                g.time
                    .parse::<jiff::Timestamp>()
                    .ok()
                    .map(jiff::Timestamp::as_microsecond)
            }) {
                None if full => r.problems.push("the set holds no generation".into()),
                None => {}
                Some(t) if now_us() - t > stale.as_micros() as i64 => r.problems.push(format!(
                    "the newest generation is from {} (limit {} s)",
                    ago(t),
                    stale.as_secs()
                )),
                Some(_) => {}
            }
        }
    }
    r.ok = r.problems.is_empty();
    r
}

/// Health of the set at `set` (a `DEST/<name>` folder), as `walbundle status SET` reports it.
///
/// # Errors
/// `Usage` if the folder is not a backup set.
pub fn status_of_set(set: &Path, stale_after: Option<Duration>) -> Result<Row> {
    match BackupSet::exists(set) {
        Ok(true) => {}
        Ok(false) => return Err(Error::usage("is not a walbundle backup set").at(set)),
        // An object store that does not answer: what capture's heartbeat on this machine says
        // (bundles waiting for the store among it) still tells the user where they stand, and
        // the row names the store's failure as a problem.
        Err(e) if e.kind() == crate::error::ErrorKind::Io && !crate::chain::is_local(set) => {}
        Err(e) => return Err(e),
    }
    Ok(row(None, set, None, stale_after, true))
}

/// Health of every database the config at `path` names, as `walbundle status --config`
/// reports it. Staleness: `stale_after` if given, else the entry's `stale_after`, the config's,
/// or twice the entry's snapshot `every`; a database whose set does not exist yet is a problem.
///
/// # Errors
/// The config cannot be read or resolved.
pub fn status_of_config(path: &Path, stale_after: Option<Duration>) -> Result<Vec<Row>> {
    use super::config::{Config, duration};
    let cfg = Config::load(path)?;
    let default = cfg.stale_after.as_deref().and_then(|s| duration(s).ok());
    Ok(cfg
        .resolve(path, None)?
        .iter()
        .map(|r| {
            let parse = |s: Option<&str>| s.and_then(|s| duration(s).ok());
            let stale = stale_after
                .or_else(|| parse(r.entry.stale_after.as_deref()))
                .or(default)
                .or_else(|| parse(r.entry.every.as_deref()).map(|d| d * 2));
            let set = r.set_dir();
            let exists = BackupSet::exists(&set);
            if matches!(exists, Ok(true)) {
                row(Some(&r.db), &set, Some(r.mode), stale, true)
            } else {
                let mut row = row(Some(&r.db), &set, Some(r.mode), stale, false);
                row.problems = vec![match exists {
                    Err(e) => format!("the set cannot be read: {e}"),
                    _ => "not backed up yet: its set does not exist".into(),
                }];
                row.ok = false;
                row
            }
        })
        .collect())
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Rows in Prometheus text exposition format.
pub fn prometheus(rows: &[Row]) -> String {
    let metric =
        |out: &mut String, name: &str, kind: &str, help: &str, f: &dyn Fn(&Row) -> Option<f64>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for r in rows {
                if let Some(v) = f(r) {
                    out.push_str(&format!(
                        "{name}{{db=\"{}\",set=\"{}\"}} {v}\n",
                        esc(&r.db),
                        esc(&r.set)
                    ));
                }
            }
        };
    let mut s = String::new();
    metric(
        &mut s,
        "walbundle_healthy",
        "gauge",
        "1 if the database's protection is current, else 0.",
        &|r| Some(f64::from(u8::from(r.ok))),
    );
    metric(
        &mut s,
        "walbundle_capture_running",
        "gauge",
        "1 if a capture heartbeat says running.",
        &|r| {
            r.hb.as_ref()
                .map(|h| f64::from(u8::from(h.state == "running")))
        },
    );
    metric(
        &mut s,
        "walbundle_heartbeat_timestamp_seconds",
        "gauge",
        "When capture last wrote its heartbeat.",
        &|r| r.hb.as_ref().map(|h| h.at_us as f64 / 1e6),
    );
    metric(
        &mut s,
        "walbundle_last_txn",
        "gauge",
        "Newest transaction number sealed into the set.",
        &|r| r.last_txn.map(|t| t as f64),
    );
    metric(
        &mut s,
        "walbundle_last_seal_timestamp_seconds",
        "gauge",
        "When capture last sealed a bundle.",
        &|r| {
            r.hb.as_ref()
                .filter(|h| h.last_seal_us > 0)
                .map(|h| h.last_seal_us as f64 / 1e6)
        },
    );
    metric(
        &mut s,
        "walbundle_lag_seconds",
        "gauge",
        "How long the oldest commit not yet in the set has waited.",
        &|r| r.lag_s,
    );
    metric(
        &mut s,
        "walbundle_wal_bytes",
        "gauge",
        "Size of the database's WAL file.",
        &|r| r.wal_bytes.map(|b| b as f64),
    );
    metric(
        &mut s,
        "walbundle_bundles_total",
        "counter",
        "Bundles sealed by this capture process.",
        &|r| r.hb.as_ref().map(|h| h.bundles as f64),
    );
    metric(
        &mut s,
        "walbundle_bundle_bytes_total",
        "counter",
        "Bytes of bundles sealed by this capture process.",
        &|r| r.hb.as_ref().map(|h| h.bundle_bytes as f64),
    );
    metric(
        &mut s,
        "walbundle_unpublished_bundles",
        "gauge",
        "Bundles sealed on this machine that the object store has not taken yet.",
        &|r| r.hb.as_ref().map(|h| h.unpublished as f64),
    );
    metric(
        &mut s,
        "walbundle_txns_total",
        "counter",
        "Transactions captured by this capture process.",
        &|r| r.hb.as_ref().map(|h| h.txns as f64),
    );
    metric(
        &mut s,
        "walbundle_errors_total",
        "counter",
        "Capture failures recorded in the heartbeat.",
        &|r| r.hb.as_ref().map(|h| h.errors as f64),
    );
    metric(
        &mut s,
        "walbundle_step_aside_max_seconds",
        "gauge",
        "Longest time capture took to step out of the way of the application's own blocking checkpoint this run (walbundle never holds writers).",
        &|r| r.hb.as_ref().map(|h| h.step_aside_max_us as f64 / 1e6),
    );
    // Requests to the set's store by kind, one metric with a `kind` label.
    let name = "walbundle_store_requests_total";
    s.push_str(&format!(
        "# HELP {name} Requests this capture process sent to the set's store (object stores bill per request).\n# TYPE {name} counter\n"
    ));
    for r in rows {
        let Some(q) = r.hb.as_ref().map(|h| h.requests) else {
            continue;
        };
        for (kind, n) in [
            ("put", q.put),
            ("get", q.get),
            ("list", q.list),
            ("head", q.head),
            ("delete", q.delete),
        ] {
            s.push_str(&format!(
                "{name}{{db=\"{}\",set=\"{}\",kind=\"{kind}\"}} {n}\n",
                esc(&r.db),
                esc(&r.set)
            ));
        }
    }
    s
}

/// Shared list of (database, set folder) a capture run covers (it grows as patterns match).
pub type Sets = Mutex<Vec<(PathBuf, PathBuf)>>;

/// [`Sets`] shared with the metrics threads.
pub type SetsHandle = Arc<Sets>;

fn render(sets: &Sets) -> String {
    let list = sets
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let rows: Vec<Row> = list
        .iter()
        .map(|(db, set)| row(Some(db), set, Some(Mode::Capture), None, false))
        .collect();
    prometheus(&rows)
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.walbundle-tmp",
        path.file_name()
            .map_or_else(|| "metrics".into(), |n| n.to_string_lossy().into_owned())
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Serve metrics on loopback `addr` and/or write them to `file` every 5 s, for the databases in
/// `shared` (which the caller may extend), from background threads that live as long as the
/// process. The file is written once more when the returned guard drops.
///
/// # Errors
/// `Usage` for an address that is not loopback; `Io` if it cannot be bound.
pub fn serve_metrics(
    addr: Option<&str>,
    file: Option<&Path>,
    shared: &Arc<Sets>,
) -> Result<Option<MetricsGuard>> {
    if addr.is_none() && file.is_none() {
        return Ok(None);
    }
    let shared = Arc::clone(shared);
    if let Some(addr) = addr {
        let sa: std::net::SocketAddr = addr.parse().map_err(|_| {
            Error::usage(format!(
                "--metrics {addr:?} is not an address such as 127.0.0.1:9717"
            ))
        })?;
        if !sa.ip().is_loopback() {
            return Err(Error::usage(format!(
                "--metrics {addr} is not a loopback address; metrics are served on loopback only"
            ))
            .hint("use 127.0.0.1:PORT or [::1]:PORT, and a local agent or proxy to export them"));
        }
        let listener = std::net::TcpListener::bind(sa)
            .map_err(|e| Error::io(Path::new(addr), "listening for --metrics", e))?;
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                let body = render(&shared);
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    }
    if let Some(f) = file {
        let f = f.to_path_buf();
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            loop {
                if let Err(e) = write_atomic(&f, &render(&shared)) {
                    eprintln!("walbundle: warning: {}: writing metrics: {e}", f.display());
                }
                std::thread::sleep(Duration::from_secs(5));
            }
        });
    }
    Ok(Some(MetricsGuard {
        shared,
        file: file.map(Path::to_path_buf),
    }))
}

/// Writes the metrics file a last time when capture ends.
pub struct MetricsGuard {
    shared: Arc<Sets>,
    file: Option<PathBuf>,
}

impl Drop for MetricsGuard {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = write_atomic(f, &render(&self.shared));
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn label_values_are_escaped_in_the_text_format() {
        let db = Path::new("/data/a \"quoted\" \\ name\nnext.db");
        let r = row(
            Some(db),
            Path::new("/nonexistent/set"),
            Some(Mode::Capture),
            None,
            false,
        );
        let text = prometheus(&[r]);
        let line = text
            .lines()
            .find(|l| l.starts_with("walbundle_healthy{"))
            .expect("a healthy line");
        assert_eq!(
            line,
            "walbundle_healthy{db=\"/data/a \\\"quoted\\\" \\\\ name\\nnext.db\",set=\"/nonexistent/set\"} 0"
        );
        assert!(text.contains("# TYPE walbundle_healthy gauge"));
    }
}
