//! Helpers shared by the integration tests: the real `walbundle` binary, a real writer process
//! (tests/support/writer.py, Python's own SQLite), and the oracle that checks a restored
//! database holds exactly a contiguous prefix of committed transactions.
#![allow(dead_code)]

pub mod rig;
pub mod s3;
pub mod synth;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sha2::{Digest, Sha256};

/// A temporary folder removed at the end of the test.
pub struct Tmp {
    pub dir: tempfile::TempDir,
}

impl Tmp {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("wbtest-")
                .tempdir()
                .expect("tempdir"),
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// Create `rel` as a folder and return it.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

/// A test that panics leaves the processes it started running (`Child` is not killed on drop):
/// a temporary folder kills, when it goes, every process whose command line names a path inside
/// it — the test's captures, writers, compactions and object-store servers, whoever started
/// them — before the folder is removed. Nothing else is touched: the folder's name is unique.
impl Drop for Tmp {
    fn drop(&mut self) {
        kill_processes_naming(self.dir.path());
    }
}

/// SIGKILL every process (but this one) whose command line names a path inside `dir`. (A killed
/// child of ours stays a zombie, holding nothing but its process id, until the test program
/// exits.)
pub fn kill_processes_naming(dir: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    // With the separator: another folder's name may start with this one's.
    let mut needle = dir.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let me = std::process::id();
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.windows(needle.len()).any(|w| w == needle.as_slice()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// What a walbundle run printed and returned.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn code(&self, c: i32) -> &Self {
        assert_eq!(
            self.code, c,
            "expected exit {c}\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn stderr_has(&self, s: &str) -> &Self {
        assert!(
            self.stderr.contains(s),
            "stderr lacks {s:?}:\n{}",
            self.stderr
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_walbundle")
}

/// Run walbundle with `args` (WALBUNDLE_DEST cleared unless given in `env`).
pub fn wb<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    wb_env(args, &[])
}

pub fn wb_env<I, S>(args: I, env: &[(&str, &str)]) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(bin());
    c.args(args).env_remove("WALBUNDLE_DEST");
    for (k, v) in env {
        c.env(k, v);
    }
    run(c)
}

pub fn run(mut c: Command) -> Out {
    let o = c.stdin(Stdio::null()).output().expect("spawn");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

pub fn is_root() -> bool {
    // SAFETY-free check: root owns /proc/self if we are root.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Run walbundle as an unprivileged user (nobody) when we are root, so permissions bite.
/// Returns None (and says why) if that is not possible.
pub fn wb_unprivileged(args: &[&OsStr]) -> Option<Out> {
    if !is_root() {
        let mut c = Command::new(bin());
        c.args(args).env_remove("WALBUNDLE_DEST");
        return Some(run(c));
    }
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()])
        .args(args)
        .env_remove("WALBUNDLE_DEST")
        .current_dir("/");
    let o = run(c);
    if o.stderr.contains("setpriv:") {
        eprintln!("NOTE: cannot drop privileges with setpriv: {}", o.stderr);
        return None;
    }
    Some(o)
}

/// Make `path` and every ancestor traversable/readable by others (for unprivileged runs).
pub fn open_up(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut p = Some(path);
    while let Some(d) = p {
        if d == Path::new("/") || d.as_os_str().is_empty() {
            break;
        }
        if let Ok(md) = std::fs::metadata(d) {
            let mode = md.permissions().mode();
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o755));
        }
        p = d.parent();
    }
}

fn writer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/writer.py")
}

/// The writer process, with `args`.
pub fn writer(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(writer_script()).args(args);
    c
}

/// Create a database with the writer's schema and `rows` rows.
pub fn init_db(db: &Path, rows: u32, page_size: u32, journal: &str) {
    let st = writer(&[
        "--db",
        db.to_str().expect("utf8"),
        "--init",
        "--rows",
        &rows.to_string(),
        "--page-size",
        &page_size.to_string(),
        "--journal",
        journal,
    ])
    .status()
    .expect("python3");
    assert!(st.success(), "writer --init failed");
}

/// Start the writer in the background.
pub fn spawn_writer(db: &Path, log: &Path, extra: &[&str]) -> Child {
    let mut args = vec![
        "--db",
        db.to_str().expect("utf8"),
        "--log",
        log.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    writer(&args)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn writer")
}

/// Transaction ids the writer logged as committed.
pub fn committed(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').next()?.parse().ok())
        .collect()
}

/// The oracle: integrity_check ok and txlog exactly 1..k; returns k.
pub fn check_prefix(db: &Path) -> u64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open restored");
    let ic: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(ic, "ok", "integrity_check of {}", db.display());
    let ids: Vec<u64> = c
        .prepare("SELECT txn_id FROM txlog ORDER BY txn_id")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<i64>, _>>()
        })
        .expect("txlog")
        .into_iter()
        .map(|v| v as u64)
        .collect();
    let expect: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(
        ids,
        expect,
        "txlog of {} is not a contiguous prefix",
        db.display()
    );
    ids.len() as u64
}

pub fn sha_file(p: &Path) -> String {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    format!("{:x}", Sha256::digest(&b))
}

/// Every generation folder of a set, oldest chain first.
pub fn generation_dirs(set: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut chains: Vec<PathBuf> = std::fs::read_dir(set)
        .expect("set")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    chains.sort();
    for c in chains {
        let mut gens: Vec<PathBuf> = std::fs::read_dir(&c)
            .expect("chain")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("gen-"))
            .collect();
        gens.sort();
        out.extend(gens);
    }
    out
}

/// Every file under `dir` (recursive), sorted.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(all_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Flip one bit at `at` (negative: from the end) in file `p`.
pub fn flip_bit(p: &Path, at: i64) {
    let mut b = std::fs::read(p).expect("read");
    let i = if at < 0 {
        (b.len() as i64 + at) as usize
    } else {
        at as usize
    };
    b[i] ^= 0x10;
    std::fs::write(p, b).expect("write");
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Start `walbundle compact SET --force` with aggressive retention (nothing kept beyond the
/// newest generation and a 1 s window), told to stop at the named pause point `point` ("" for
/// none) and to say so by creating `pause_file` (see src/fault/mod.rs).
pub fn spawn_compact_paused(set: &Path, point: &str, pause_file: &Path) -> Child {
    let _ = std::fs::remove_file(pause_file);
    Command::new(bin())
        .args(["compact", s(set), "--check", "quick"])
        .args(COMPACT_ALL)
        .env("WALBUNDLE_PAUSE_AT", point)
        .env("WALBUNDLE_PAUSE_FILE", pause_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn compact")
}

/// `compact` options that build a generation whenever a bundle follows the newest one and
/// retire everything older than a second that the newest generation does not need.
pub const COMPACT_ALL: [&str; 7] = [
    "--force",
    "--retain-days",
    "0",
    "--min-window",
    "1s",
    "--keep-generations",
    "1",
];

/// Wait up to `secs` seconds until `f` holds, or fail naming `what`.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(secs) {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// Wait up to `limit` until `c` reaches its pause point (true) or exits or time is up (false).
pub fn wait_for_pause(c: &mut Child, pause_file: &Path, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if pause_file.exists() {
            return true;
        }
        if c.try_wait().expect("try_wait").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    pause_file.exists()
}

/// The application's own `PRAGMA wal_checkpoint(MODE)` on `c`: (busy flag, time of the last
/// attempt, attempts). A checkpoint refused at once (within 20 ms) found the checkpoint lock
/// taken — SQLite gives a second checkpointer BUSY immediately, and the application's own
/// auto-checkpoints take that lock after commits, with or without walbundle — so it is tried
/// again every 20 ms for up to half a second (the brief's bar for the application's own
/// checkpoint beside capture), as applications do; one that waited is never retried. (Five
/// tries, 100 ms, were too few on a loaded machine: a checkpoint that fsyncs holds the lock
/// longer there, and the torture run's RESTART was refused five times in a row.)
pub fn app_checkpoint(c: &rusqlite::Connection, mode: &str) -> (i64, std::time::Duration, u32) {
    let first = std::time::Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let t0 = std::time::Instant::now();
        let busy: i64 = c
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(0))
            .unwrap();
        let took = t0.elapsed();
        if busy == 0
            || took >= std::time::Duration::from_millis(20)
            || first.elapsed() >= std::time::Duration::from_millis(500)
        {
            return (busy, took, attempts);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
