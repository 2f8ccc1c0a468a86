//! The capture review of 2026-12 (`shared/reviews/capture-review-2026-12.md`), one test per
//! finding that a test can settle (the others are argued in `format/README.md` §15):
//! - finding 1: a committed frame with a zeroed header was accepted and emitted without proof;
//! - findings 5 and 6: after the application's TRUNCATE, a single-connection application (which
//!   reuses the wal-index salts) and an idle TRUNCATE each produced a false gap;
//! - finding 8: resuming at frame 0 after a page-size change failed instead of starting a chain;
//! - an application in exclusive locking mode got an unexplained "database is locked";
//! - a symlink naming a database already being captured reopened it (a descriptor closed in the
//!   process drops SQLite's locks).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::rig::{Rig, has_generation, stop_capture};
use crate::support::*;

fn sidecar(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", p.display()))
}

fn chains(set: &Path) -> Vec<serde_json::Value> {
    wb(["list", s(set), "--json"]).json()["chains"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn oracle(run: &Rig) {
    run.verify_deep("full");
    let points: Vec<(usize, u64)> = run.listing().0.iter().map(|b| (0, b.2)).collect();
    run.check_restores(&points, run.committed());
}

/// Finding 1. Capture is frozen (SIGSTOP) while the application commits; a committed frame's
/// header is then zeroed on disk (as a reused frame slot would look). Capture must not emit it:
/// it starts a new chain from a snapshot, with the reason recorded, and every restore is exact.
#[test]
fn a_zeroed_committed_frame_is_never_trusted() {
    let run = Rig::new(300);
    let cap = run.start_capture(&[]);
    run.wait_first_generation();
    run.write(&["--txns", "50", "--rate", "400", "--autocheckpoint", "0"]);
    std::thread::sleep(Duration::from_millis(500));
    let pid = cap.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    run.write(&["--txns", "120", "--rate", "2000", "--autocheckpoint", "0"]);
    let wal = sidecar(&run.db, "-wal");
    let frames = (std::fs::metadata(&wal).unwrap().len() - 32) / (4096 + 24);
    let k = frames - 10;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
        f.write_all_at(&[0u8; 16], 32 + (k - 1) * (4096 + 24) + 8)
            .unwrap();
    }
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut found = false;
    for _ in 0..200 {
        if chains(&run.set()).iter().any(|c| {
            c["reason"]
                .as_str()
                .is_some_and(|r| r.contains("zeroed header"))
        }) {
            found = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        found,
        "no chain names the zeroed frame {k}: {:?}\n{}",
        chains(&run.set()),
        run.capture_log()
    );
    run.write(&["--txns", "60", "--rate", "400"]);
    std::thread::sleep(Duration::from_millis(600));
    let mut cap = cap;
    stop_capture(&mut cap);
    oracle(&run);
}

/// A transaction of the application's own long-lived connection (the one that also runs its
/// checkpoints), logged like `writer.py`.
fn app_txn(c: &rusqlite::Connection, log: &Path, n: usize) {
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    for _ in 0..n {
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        let next: i64 = c
            .query_row("SELECT coalesce(max(txn_id),0)+1 FROM txlog", [], |r| {
                r.get(0)
            })
            .unwrap();
        c.execute(
            "INSERT INTO items(txn_id, v) VALUES(?1, randomblob(900))",
            [next],
        )
        .unwrap();
        c.execute("INSERT INTO txlog VALUES(?1, 0)", [next])
            .unwrap();
        c.execute_batch("COMMIT").unwrap();
        writeln!(out, "{next}\t0").unwrap();
    }
}

/// Findings 5 and 6. The application's one connection checkpoints with TRUNCATE (so its next
/// commit writes a WAL header with the wal-index's salts, and the wal-index's stale running
/// checksum is no seed), sometimes right before capture starts, sometimes while capture sits
/// idle for longer than its old cut interval: exactly one chain, no false gap.
#[test]
fn truncate_checkpoints_of_a_single_connection_app_keep_one_chain() {
    let mut run = Rig::new(200);
    run.holder = None;
    let app = rusqlite::Connection::open(&run.db).unwrap();
    app.busy_timeout(Duration::from_secs(5)).unwrap();
    let ck = |c: &rusqlite::Connection| {
        let busy: i64 = c
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0, "the application's TRUNCATE checkpoint was refused");
    };
    app_txn(&app, &run.log, 20);
    ck(&app);
    let cap = run.start_capture(&[]);
    run.wait_first_generation();
    for round in 0..4 {
        app_txn(&app, &run.log, 15);
        ck(&app);
        // Idle for longer than the interval, with the WAL truncated to nothing.
        std::thread::sleep(Duration::from_millis(if round % 2 == 0 {
            1300
        } else {
            200
        }));
    }
    app_txn(&app, &run.log, 10);
    std::thread::sleep(Duration::from_millis(600));
    let mut cap = cap;
    stop_capture(&mut cap);
    let cs = chains(&run.set());
    assert_eq!(
        cs.len(),
        1,
        "a TRUNCATE by a single-connection app must not start chains: {:?}\n{}",
        cs.iter().map(|c| c["reason"].clone()).collect::<Vec<_>>(),
        run.capture_log()
    );
    run.holder = Some(app);
    oracle(&run);
}

/// Finding 8. Between two captures the application leaves WAL mode, changes the page size,
/// VACUUMs and returns to WAL: the next capture starts a new chain whose reason names the page
/// size, and restores the new layout exactly.
#[test]
fn resume_after_a_page_size_change_starts_a_new_chain() {
    let mut run = Rig::new(200);
    wb(["capture", s(&run.db), "--dest", s(&run.dest), "--once"]).ok();
    run.holder = None;
    let c = rusqlite::Connection::open(&run.db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=DELETE; PRAGMA page_size=8192; VACUUM; PRAGMA journal_mode=WAL;",
    )
    .unwrap();
    let ps: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert_eq!(ps, 8192);
    run.holder = Some(c);
    wb(["capture", s(&run.db), "--dest", s(&run.dest), "--once"]).ok();
    let cs = chains(&run.set());
    assert_eq!(cs.len(), 2, "{cs:?}");
    // (Chains made within one second list in id order, not necessarily in time order.)
    assert!(
        cs.iter().any(|c| c["reason"]
            .as_str()
            .is_some_and(|r| r.contains("page size"))),
        "no chain names the page size: {:?}",
        cs.iter().map(|c| c["reason"].clone()).collect::<Vec<_>>()
    );
    run.write(&["--txns", "40"]);
    wb(["capture", s(&run.db), "--dest", s(&run.dest), "--once"]).ok();
    oracle(&run);
}

/// An application in `locking_mode=EXCLUSIVE` keeps every other reader out: walbundle says so,
/// naming the mode, instead of a bare "database is locked" (exit 2, nothing published).
#[test]
fn an_exclusive_locking_mode_app_gets_a_clear_error() {
    let mut run = Rig::new(100);
    run.holder = None;
    let c = rusqlite::Connection::open(&run.db).unwrap();
    c.execute_batch(
        "PRAGMA locking_mode=EXCLUSIVE; BEGIN IMMEDIATE; INSERT INTO txlog VALUES(1, 0); COMMIT;",
    )
    .unwrap();
    let o = wb([
        "snapshot",
        s(&run.db),
        "--dest",
        s(&run.dest),
        "--busy-timeout",
        "0.5",
    ]);
    o.code(2).stderr_has("locking_mode=EXCLUSIVE");
    assert!(!has_generation(&run.set()));
    drop(c);
}

/// A config names the database twice — by its path and through a symlink: it is captured once
/// (a second capturer would open and close a descriptor of its own on the file and drop the
/// first one's SQLite locks), and the set restores every transaction.
#[test]
fn a_symlink_to_a_database_already_captured_is_captured_once() {
    let run = Rig::new(200);
    let link = run.t.mkdir("links").join("alias.db");
    std::os::unix::fs::symlink(&run.db, &link).unwrap();
    let mut cap = run.start_config_capture(&[&run.db, &link], "rescan = \"300ms\"");
    run.write(&["--txns", "300", "--rate", "500"]);
    std::thread::sleep(Duration::from_millis(900));
    stop_capture(&mut cap);
    let log = run.capture_log();
    assert!(log.contains("same database file"), "log:\n{log}");
    assert!(
        !run.dest.join("alias").exists(),
        "the symlink got a set of its own"
    );
    oracle(&run);
}
