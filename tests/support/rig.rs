//! A live source under test: a WAL database written by real writer processes, with the
//! application's own long-lived connection, and the `walbundle capture` processes started
//! against it (their stderr collected in one log). Shared by the capture tests and the torture
//! suite.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Tmp, bin, check_prefix, committed, generation_dirs, init_db, s, sha_file, wb, writer};

/// A bundle in a listing: (chain index, first txn, last txn).
pub type BundleSpan = (usize, u64, u64);

pub struct Rig {
    pub t: Tmp,
    pub db: PathBuf,
    pub dest: PathBuf,
    /// The log of [`Rig::write`].
    pub log: PathBuf,
    /// The logs of writers started with [`Rig::spawn_writer`].
    pub logs: Vec<PathBuf>,
    /// The application's long-lived connection. Besides being realistic, it keeps the wal-index
    /// alive: a first connection on a database nobody has open runs WAL recovery, and SQLite
    /// 3.40 (the writer's) can leave a committed frame with a zeroed header that recovery stops
    /// at, dropping every later commit and corrupting the source (walbundle's copy survives;
    /// see `scan` in capture/engine.rs).
    pub holder: Option<rusqlite::Connection>,
}

impl Rig {
    /// A new WAL database of `rows` rows, held open by the application.
    pub fn new(rows: u32) -> Self {
        let t = Tmp::new();
        let db = t.mkdir("src").join("app.db");
        let dest = t.mkdir("dest");
        let log = t.path("commits.tsv");
        init_db(&db, rows, 4096, "wal");
        let mut r = Self {
            t,
            db,
            dest,
            log,
            logs: Vec::new(),
            holder: None,
        };
        r.hold();
        r
    }

    /// (Re)open the application's long-lived connection.
    pub fn hold(&mut self) {
        let c = rusqlite::Connection::open(&self.db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.query_row("SELECT count(*) FROM items", [], |_| Ok(()))
            .unwrap();
        self.holder = Some(c);
    }

    pub fn set(&self) -> PathBuf {
        self.dest.join("app")
    }

    /// Start a capture (200 ms interval) with `extra` arguments and `env`, without waiting.
    pub fn spawn_capture(&self, extra: &[&str], env: &[(&str, String)]) -> Child {
        let mut args = vec![
            "capture",
            s(&self.db),
            "--dest",
            s(&self.dest),
            "--interval",
            "200ms",
        ];
        args.extend_from_slice(extra);
        let log = self.t.path("capture.log");
        let child = spawn_logged(&args, env, &log);
        remember_log(&child, log);
        child
    }

    /// Start `capture --config` on a config naming `paths` (200 ms interval, `extra` TOML
    /// lines first), its stderr in the capture log, and wait for the first generation.
    pub fn start_config_capture(&self, paths: &[&std::path::Path], extra: &str) -> Child {
        let cfg = self.t.path("walbundle.toml");
        let mut toml = format!(
            "dest = \"{}\"\ninterval = \"200ms\"\n{extra}\n",
            s(&self.dest)
        );
        for p in paths {
            toml.push_str(&format!("\n[[database]]\npath = \"{}\"\n", s(p)));
        }
        std::fs::write(&cfg, toml).unwrap();
        let c = Command::new(bin())
            .args(["capture", "--config", s(&cfg)])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.t.path("capture.log")).unwrap())
            .spawn()
            .unwrap();
        self.wait_first_generation();
        c
    }

    /// Start a capture and give it up to 10 s to make its first chain.
    pub fn start_capture(&self, extra: &[&str]) -> Child {
        let child = self.spawn_capture(extra, &[]);
        for _ in 0..200 {
            if has_generation(&self.set()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Wait for the set's first generation, or fail with the capture log.
    pub fn wait_first_generation(&self) {
        for _ in 0..300 {
            if has_generation(&self.set()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("capture made no generation; log:\n{}", self.capture_log());
    }

    /// Run a writer to completion, logging into [`Rig::log`].
    pub fn write(&self, args: &[&str]) {
        let mut a = vec!["--db", s(&self.db), "--log", s(&self.log)];
        a.extend_from_slice(args);
        let st = writer(&a).status().expect("writer");
        assert!(st.success(), "writer failed");
    }

    /// Start a writer with a log of its own (added to [`Rig::logs`]).
    pub fn spawn_writer(&mut self, args: &[String]) -> Child {
        let log = self.t.path(&format!("commits-{}.tsv", self.logs.len()));
        self.logs.push(log.clone());
        let mut a = vec!["--db", s(&self.db), "--log", s(&log)];
        a.extend(args.iter().map(String::as_str));
        writer(&a).spawn().expect("spawn writer")
    }

    /// Transactions every writer logged as committed.
    pub fn committed(&self) -> u64 {
        std::iter::once(&self.log)
            .chain(&self.logs)
            .map(|l| committed(l).len() as u64)
            .sum()
    }

    pub fn capture_log(&self) -> String {
        std::fs::read_to_string(self.t.path("capture.log")).unwrap_or_default()
    }

    /// `verify --deep --check CHECK` of the set, which must be clean.
    pub fn verify_deep(&self, check: &str) {
        let v = wb(["verify", s(&self.set()), "--deep", "--check", check]);
        assert_eq!(
            v.code,
            0,
            "verify --deep:\n{}\n{}\ncapture log:\n{}",
            v.stdout,
            v.stderr,
            self.capture_log()
        );
    }

    /// Every bundle of the set as (chain index, first txn, last txn), and the restorable
    /// ranges (first txn, last txn), from `list --json`.
    pub fn listing(&self) -> (Vec<BundleSpan>, Vec<(u64, u64)>) {
        let l = wb(["list", s(&self.set()), "--json"]).json();
        let mut bundles = Vec::new();
        for (ci, c) in l["chains"].as_array().unwrap().iter().enumerate() {
            for b in c["bundles"].as_array().unwrap() {
                bundles.push((
                    ci,
                    b["first_txn"].as_u64().unwrap(),
                    b["last_txn"].as_u64().unwrap(),
                ));
            }
        }
        let ranges = l["restorable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["first_txn"].as_u64().unwrap(),
                    r["last_txn"].as_u64().unwrap(),
                )
            })
            .collect();
        (bundles, ranges)
    }

    /// The restore oracle: each of `points` (group, txn), in order, restores to a database that
    /// passes `integrity_check` and holds a contiguous committed prefix that does not shrink
    /// within a group; the newest restore holds exactly `expected` transactions and, after a
    /// full checkpoint of the source, is byte-identical to it. Returns the restores checked.
    pub fn check_restores(&self, points: &[(usize, u64)], expected: u64) -> u64 {
        let set = self.set();
        let mut last = (usize::MAX, 0);
        for &(group, txn) in points {
            if group != last.0 {
                last = (group, 0);
            }
            let out = self.t.path(&format!("at-{txn}.db"));
            wb([
                "restore",
                s(&set),
                "--out",
                s(&out),
                "--txn",
                &txn.to_string(),
                "--check",
                "quick",
            ])
            .ok();
            let k = check_prefix(&out);
            assert!(
                k >= last.1,
                "restored prefix went backwards at txn {txn}: {k} < {}",
                last.1
            );
            last.1 = k;
            std::fs::remove_file(&out).unwrap();
        }
        let out = self.t.path("final.db");
        let _ = std::fs::remove_file(&out);
        wb(["restore", s(&set), "--out", s(&out)]).ok();
        let k = check_prefix(&out);
        assert_eq!(
            k,
            expected,
            "the newest restore holds {k} transactions, expected {expected}; capture log:\n{}",
            self.capture_log()
        );
        let fresh;
        let c = match &self.holder {
            Some(c) => c,
            None => {
                fresh = rusqlite::Connection::open(&self.db).unwrap();
                fresh.busy_timeout(Duration::from_secs(10)).unwrap();
                &fresh
            }
        };
        let busy: i64 = c
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0, "could not checkpoint the source");
        assert_eq!(
            sha_file(&out),
            sha_file(&self.db),
            "the newest restore is not byte-identical to the source"
        );
        points.len() as u64 + 1
    }
}

/// True once the set at `set` holds a generation.
pub fn has_generation(set: &std::path::Path) -> bool {
    set.is_dir() && !generation_dirs(set).is_empty()
}

/// SIGTERM `c` and collect its exit status and output.
pub fn terminate(c: Child) -> std::process::Output {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    c.wait_with_output().expect("wait")
}

/// Where each capture child started by a rig writes its stderr, so a failure can show it.
static LOGS: std::sync::Mutex<Vec<(u32, std::path::PathBuf)>> = std::sync::Mutex::new(Vec::new());

fn remember_log(c: &Child, log: std::path::PathBuf) {
    LOGS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((c.id(), log));
}

/// SIGTERM a capture and require a clean exit (showing its log if it has one).
pub fn stop_capture(c: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let st = c.wait().expect("wait capture");
    let log = LOGS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .rev()
        .find(|(pid, _)| *pid == c.id())
        .and_then(|(_, p)| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    assert!(
        st.success(),
        "capture did not exit cleanly on SIGTERM: {st:?}\ncapture log:\n{log}"
    );
}

/// Start walbundle with `args` and the environment `env` in the background (no
/// `WALBUNDLE_DEST` from the caller's), its stderr appended to `log`.
pub fn spawn_logged(args: &[&str], env: &[(&str, String)], log: &std::path::Path) -> Child {
    let mut c = Command::new(bin());
    c.args(args)
        .env_remove("WALBUNDLE_DEST")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        );
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().expect("spawn walbundle");
    remember_log(&child, log.to_path_buf());
    child
}
