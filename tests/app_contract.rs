//! The contract with the application (issue 11): walbundle never takes the write lock of a
//! source database, the application's own blocking checkpoints complete beside it, and a
//! database file swapped by rename is followed.
//!
//! The bugs these pin down, each measured before the fix: an application with no busy timeout
//! (SQLite's C default) lost a third of its transactions to `database is locked` because
//! capture's write barrier took the write lock; the application's TRUNCATE/RESTART/FULL
//! checkpoints with a 5 s busy timeout returned busy after 5 s (and stalled its writers) because
//! capture's read mark never moved out of their way; a database renamed over the source was
//! snapshotted from the old inode, or capture died on the vanished WAL.
//!
//! Timing assertions are only "did not wait for the busy timeout": the figures (how fast the
//! checkpoint completes, the worst commit beside it) are printed here and measured against no
//! tool and Litestream in `benches/compare/app_contract.py`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::rig::{Rig, has_generation, stop_capture};
use crate::support::*;

/// The restore oracle over the bundle boundaries, plus the newest state.
fn check_everything(run: &Rig) {
    run.verify_deep("full");
    let mut points: Vec<(usize, u64)> = Vec::new();
    for (_, f, e) in run.listing().0 {
        points.push((0, e));
        if e > f {
            points.push((0, f + (e - f) / 2));
        }
    }
    points.sort_unstable();
    points.dedup();
    run.check_restores(&points, run.committed());
}

/// A writer in this process through rusqlite with `busy_timeout(0)` (rusqlite's own default is
/// 5 s; many C and Go programs have none): `n` transactions, a VACUUM every 400, ALTER/CREATE/
/// DROP TABLE every 300, logging like `writer.py`. Every `database is locked` is collected.
fn rust_writer_no_timeout(db: &Path, log: &Path, n: u64) -> Vec<String> {
    use std::io::Write;
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::ZERO).unwrap();
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut locked = Vec::new();
    let mut next: i64 = c
        .query_row("SELECT coalesce(max(txn_id),0)+1 FROM txlog", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut payload = vec![0u8; 700];
    for i in 1..=n {
        for (k, b) in payload.iter_mut().enumerate() {
            *b = (k as u64 * 31 + i * 7) as u8; // NOTE: truncation intended
        }
        let res = (|| -> rusqlite::Result<()> {
            c.execute_batch("BEGIN IMMEDIATE")?;
            c.execute(
                "INSERT INTO items(txn_id, v) VALUES(?1, ?2)",
                rusqlite::params![next, payload],
            )?;
            c.execute(
                "INSERT INTO txlog VALUES(?1, ?2)",
                rusqlite::params![next, 0.0f64],
            )?;
            c.execute_batch("COMMIT")
        })();
        match res {
            Ok(()) => {
                writeln!(out, "{next}\t0").unwrap();
                next += 1;
            }
            Err(e) => {
                let _ = c.execute_batch("ROLLBACK");
                locked.push(format!("txn {i}: {e}"));
            }
        }
        let ddl = if i % 400 == 0 {
            Some("VACUUM".to_string())
        } else if i % 300 == 0 {
            let k = i / 300;
            Some(format!(
                "ALTER TABLE items ADD COLUMN rs{k} INTEGER; CREATE TABLE rscratch{k}(x); \
                 INSERT INTO rscratch{k} VALUES(randomblob(5000)); DROP TABLE IF EXISTS rscratch{};",
                k - 1
            ))
        } else {
            None
        };
        if let Some(sql) = ddl
            && let Err(e) = c.execute_batch(&sql)
        {
            locked.push(format!("{sql}: {e}"));
        }
    }
    locked
}

/// A writer with no busy timeout — Python's `timeout=0` in another process, then rusqlite's
/// `busy_timeout(0)` in this one — commits thousands of transactions, VACUUMs, ALTERs, creates
/// and drops tables while capture runs, a separate snapshot is taken and the set is compacted:
/// not one `database is locked`, and the set restores every transaction.
#[test]
fn no_busy_timeout_writer_never_sees_locked() {
    let mut run = Rig::new(600);
    let cap = run.start_capture(&[]);
    run.wait_first_generation();
    let py = run.spawn_writer(
        &[
            "--txns",
            "2500",
            "--rate",
            "1200",
            "--busy-timeout-ms",
            "0",
            "--fail-on-locked",
            "--vacuum-every",
            "600",
            "--ddl-every",
            "450",
            "--large-every",
            "120",
        ]
        .map(String::from),
    );
    let snapdest = run.t.mkdir("snapdest");
    let snap = wb([
        "snapshot",
        s(&run.db),
        "--dest",
        s(&snapdest),
        "--check",
        "quick",
    ]);
    snap.ok();
    let compact = wb(["compact", s(&run.set()), "--force"]);
    compact.ok();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the no-busy-timeout Python writer failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let log = run.t.path("commits-rust.tsv");
    run.logs.push(log.clone());
    let db = run.db.clone();
    let set = run.set();
    let side = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        wb(["compact", s(&set), "--force"]).ok();
    });
    let locked = rust_writer_no_timeout(&db, &log, 2000);
    side.join().unwrap();
    assert!(
        locked.is_empty(),
        "{} 'locked' errors with no busy timeout beside walbundle: {:?}",
        locked.len(),
        &locked[..locked.len().min(3)]
    );
    std::thread::sleep(Duration::from_millis(600));
    let mut cap = cap;
    stop_capture(&mut cap);
    check_everything(&run);
}

/// Capture (with `args` besides the database and destination) beside a writer committing
/// `txns` transactions of 2 rows of 100 – 4,096 bytes at `rate` a second; once the writer is
/// done and capture has had 1.5 s more: the rig, the capture process (still running) and the
/// largest size the WAL reached in each of its cycles ([`watch_wal`]).
fn writes_beside_capture(
    args: &[&str],
    txns: u32,
    rate: u32,
) -> (Rig, std::process::Child, Vec<u64>) {
    let mut run = Rig::new(400);
    let log = run.t.path("capture.log");
    let mut cmd = vec!["capture", s(&run.db), "--dest", s(&run.dest)];
    cmd.extend_from_slice(args);
    let cap = crate::support::rig::spawn_logged(&cmd, &[], &log);
    run.wait_first_generation();
    let wal = run.db.with_extension("db-wal");
    let (txns, rate) = (txns.to_string(), rate.to_string());
    let mut w = run.spawn_writer(
        &[
            "--txns",
            &txns,
            "--rate",
            &rate,
            "--rows-per-txn",
            "2",
            "--min-blob",
            "100",
            "--max-blob",
            "4096",
        ]
        .map(String::from),
    );
    let cycles = watch_wal(&wal, &mut w);
    std::thread::sleep(Duration::from_millis(1500));
    (run, cap, cycles)
}

/// Sample the WAL every 10 ms until the writer `w` exits (it must succeed): the largest size
/// the WAL file reached in each cycle (its salts mark a restart), oldest first.
fn watch_wal(wal: &Path, w: &mut std::process::Child) -> Vec<u64> {
    let (mut cycles, mut salts) = (vec![0u64], wal_salts(wal));
    while w.try_wait().unwrap().is_none() {
        let now = wal_salts(wal);
        if now.is_some() && now != salts {
            cycles.push(0);
            salts = now;
        }
        let len = std::fs::metadata(wal).map_or(0, |m| m.len());
        let last = cycles.last_mut().unwrap();
        *last = (*last).max(len);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(w.wait().unwrap().success(), "the writer failed");
    cycles
}

/// A slow writer beside capture (10 commits a second, about 150 KB of WAL a second): its WAL
/// restarts near `--max-wal-mib` (1 here), not at the 4x a young cycle may reach. Capture lets
/// a cycle younger than 5 s grow to 4x (fewer restarts under fast writes); a slow writer's
/// cycle passes 5 s before it passes the bound, so with many slowly written databases each
/// keeps a WAL of the bound's size, not four times it. Were the 4x applied always, this WAL
/// would first restart after about 27 s.
#[test]
fn a_slow_writers_wal_restarts_at_the_bound() {
    let (run, mut cap, cycles) = writes_beside_capture(&["--max-wal-mib", "1"], 300, 10);
    stop_capture(&mut cap);
    eprintln!("a slow writer beside capture: WAL cycles peaked at {cycles:?} bytes");
    // Complete cycles: the first one began before the writer, the last one is cut short.
    let done = &cycles[1..cycles.len().saturating_sub(1).max(1)];
    assert!(
        cycles.len() >= 3 && !done.is_empty(),
        "the WAL restarted {} times in 30 s of 10 commits/s (cycles peaked at {cycles:?}); \
         capture log:\n{}",
        cycles.len() - 1,
        run.capture_log()
    );
    let mut sorted = done.to_vec();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    assert!(
        median < 5 << 19,
        "the WAL's cycles peaked at {cycles:?} bytes: past 2.5 MiB, a 1 MiB bound was let grow \
         as if the writer were fast; capture log:\n{}",
        run.capture_log()
    );
    check_everything(&run);
}

/// The WAL's salts (bytes 16..24 of its header), or none while it is missing or short.
fn wal_salts(wal: &Path) -> Option<[u8; 8]> {
    use std::io::Read;
    let mut h = [0u8; 32];
    std::fs::File::open(wal).ok()?.read_exact(&mut h).ok()?;
    h[16..24].try_into().ok()
}

/// Steady writes beside capture at its default settings (a 1 s interval, a 4 MiB bound, cycles
/// of at least 5 s below 16 MiB): an application committing 200 transactions a second, a few
/// pages each, never pauses long enough for one try a second to restart the WAL, and before
/// this was fixed its WAL restarted once in 4,000 – 6,000 commits and grew to 70 – 100 MB (with
/// no tool it stays at 4 MB). Now the WAL restarts again and again (about every 5 s: 6 – 8 times
/// in 6,000 commits on a quiet machine, peaking at 12 – 20 MB), and every restart is followed
/// within one chain. The peak is printed, not asserted: how often a commit lands during
/// capture's few-millisecond try depends on the machine's load.
#[test]
fn the_wal_stays_bounded_under_steady_writes() {
    let (run, mut cap, cycles) = writes_beside_capture(&[], 6000, 200);
    let (peak, restarts) = (cycles.iter().copied().max().unwrap_or(0), cycles.len() - 1);
    stop_capture(&mut cap);
    // 6,000 commits of 2 rows of up to 4 KiB write about 90 MB of WAL frames.
    eprintln!(
        "steady writes beside capture: the WAL peaked at {peak} bytes, {restarts} restarts seen"
    );
    assert!(
        restarts >= 3,
        "the WAL restarted {restarts} times and peaked at {peak} bytes under 200 commits/s; \
         capture log:\n{}",
        run.capture_log()
    );
    let (bundles, _) = run.listing();
    assert!(
        bundles.iter().all(|b| b.0 == 0),
        "a WAL restart was not followed (a new chain started); capture log:\n{}",
        run.capture_log()
    );
    check_everything(&run);
}

/// The application's TRUNCATE, RESTART and FULL checkpoints with an ordinary 5 s busy timeout,
/// beside an idle capture and then beside a busy one (a writer at 300 txn/s), while another
/// connection commits every 10 ms: each checkpoint completes (busy = 0) without waiting for
/// its busy timeout, and the committing connection never gets `database is locked`.
#[test]
fn application_blocking_checkpoints_complete_beside_capture() {
    let mut run = Rig::new(400);
    let cap = run.start_capture(&[]);
    run.wait_first_generation();
    run.write(&["--txns", "200", "--rate", "500"]);
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(Mutex::new((Duration::ZERO, Vec::<String>::new())));
    let committer = {
        let (db, stop, worst) = (run.db.clone(), stop.clone(), worst.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            c.execute_batch("CREATE TABLE IF NOT EXISTS beats(t REAL)")
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = c.execute("INSERT INTO beats VALUES(1.0)", []);
                let d = t0.elapsed();
                let mut w = worst.lock().unwrap();
                w.0 = w.0.max(d);
                if let Err(e) = r {
                    w.1.push(e.to_string());
                }
                drop(w);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let ck = rusqlite::Connection::open(&run.db).unwrap();
    ck.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut results = Vec::new();
    for phase in ["idle", "busy"] {
        let busy_writer = (phase == "busy")
            .then(|| run.spawn_writer(&["--duration", "8", "--rate", "300"].map(String::from)));
        for mode in ["TRUNCATE", "RESTART", "FULL", "TRUNCATE"] {
            std::thread::sleep(Duration::from_millis(1500));
            let (busy, took, attempts) = app_checkpoint(&ck, mode);
            results.push(format!(
                "{phase} {mode}: busy={busy} {took:.2?} ({attempts} tries)"
            ));
            assert_eq!(
                busy,
                0,
                "{phase} capture: the application's {mode} checkpoint returned busy after {took:?}; \
                 capture log:\n{}",
                run.capture_log()
            );
            assert!(
                took < Duration::from_secs(4),
                "{phase} capture: the application's {mode} checkpoint waited {took:?} for capture"
            );
        }
        if let Some(w) = busy_writer {
            assert!(w.wait_with_output().unwrap().status.success());
        }
    }
    stop.store(true, Ordering::Relaxed);
    committer.join().unwrap();
    let (w, errs) = worst.lock().unwrap().clone();
    eprintln!("app checkpoints beside capture: {results:?}; worst 10 ms-committer commit {w:?}");
    assert!(
        errs.is_empty(),
        "the committing connection failed: {errs:?}"
    );
    assert!(
        w < Duration::from_secs(4),
        "a commit beside the checkpoints waited {w:?}"
    );
    std::thread::sleep(Duration::from_millis(600));
    let mut cap = cap;
    stop_capture(&mut cap);
    drop(ck);
    check_everything(&run);
}

/// Wait until the set at `set` has a chain whose recorded reason contains `what`.
fn wait_chain_reason(set: &Path, what: &str, log: &dyn Fn() -> String) -> serde_json::Value {
    for _ in 0..300 {
        if has_generation(set) {
            let l = wb(["list", s(set), "--json"]).json();
            if let Some(c) = l["chains"].as_array().and_then(|cs| {
                cs.iter()
                    .find(|c| c["reason"].as_str().is_some_and(|r| r.contains(what)))
            }) {
                return c.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "no chain with a reason naming '{what}' in {}: {}\ncapture log:\n{}",
        set.display(),
        wb(["list", s(set)]).stdout,
        log()
    );
}

/// How the application swaps its database file.
#[derive(Clone, Copy, Debug)]
enum Swap {
    /// Closes, deletes `-wal` and `-shm`, renames the new file over (the careful way).
    SidecarsRemoved,
    /// Closes and renames the new file over, leaving whatever sidecars exist.
    SidecarsKept,
}

/// Rename a different database over the source while capture runs (single-database or config
/// mode): capture starts a new chain whose reason names the replacement, never snapshots the
/// old inode, and the newest restore equals the new file — which the application then writes.
fn swap_case(swap: Swap, config: bool) {
    let mut run = Rig::new(300);
    let mut cap = if config {
        run.start_config_capture(&[&run.db], "")
    } else {
        run.start_capture(&[])
    };
    run.write(&["--txns", "150", "--rate", "600"]);
    // The replacement: a different database, made elsewhere.
    let other = run.t.mkdir("elsewhere").join("new.db");
    init_db(&other, 120, 4096, "wal");
    run.holder = None; // the application closes its connection
    std::thread::sleep(Duration::from_millis(300));
    let side = |suffix: &str| std::path::PathBuf::from(format!("{}{suffix}", run.db.display()));
    if matches!(swap, Swap::SidecarsRemoved) {
        let _ = std::fs::remove_file(side("-wal"));
        let _ = std::fs::remove_file(side("-shm"));
    }
    std::fs::rename(&other, &run.db).unwrap();
    let log = || run.capture_log();
    let chain = wait_chain_reason(&run.set(), "replaced", &log);
    // The new chain's base is the new file (its 120 rows, no transactions yet), not the old one.
    assert_eq!(chain["bundles"].as_array().map_or(0, Vec::len), 0);
    // The application reopens and writes the new file.
    let new_log = run.t.path("commits-new.tsv");
    let w = writer(&[
        "--db",
        s(&run.db),
        "--log",
        s(&new_log),
        "--txns",
        "200",
        "--rate",
        "600",
    ])
    .status()
    .unwrap();
    assert!(w.success());
    std::thread::sleep(Duration::from_millis(700));
    stop_capture(&mut cap);
    let l = wb(["list", s(&run.set()), "--json"]).json();
    let chains = l["chains"].as_array().unwrap();
    assert!(
        chains.iter().all(|c| c["broken"].is_null()),
        "a broken chain after the swap: {l}"
    );
    let out = run.t.path("newest.db");
    wb(["restore", s(&run.set()), "--out", s(&out)]).ok();
    assert_eq!(
        check_prefix(&out),
        committed(&new_log).len() as u64,
        "{swap:?} config={config}: the newest restore is not the new file; capture log:\n{}",
        run.capture_log()
    );
    let c = rusqlite::Connection::open(&run.db).unwrap();
    let rows: i64 = c
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .unwrap();
    let busy: i64 = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0);
    drop(c);
    assert_eq!(
        sha_file(&out),
        sha_file(&run.db),
        "{swap:?}: the newest restore is not byte-identical to the new file ({rows} rows)"
    );
    // The application's view of the new file is intact (no old WAL frames applied to it).
    assert_eq!(check_prefix(&run.db), committed(&new_log).len() as u64);
    wb(["verify", s(&run.set()), "--deep"]).ok();
}

#[test]
fn database_renamed_over_with_sidecars_removed() {
    swap_case(Swap::SidecarsRemoved, false);
}

#[test]
fn database_renamed_over_with_sidecars_kept() {
    swap_case(Swap::SidecarsKept, false);
}

#[test]
fn database_renamed_over_in_config_mode() {
    swap_case(Swap::SidecarsRemoved, true);
    swap_case(Swap::SidecarsKept, true);
}
