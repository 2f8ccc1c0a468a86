//! Capture within bounded resources (issue 12, in part).
//!
//! The bug: capture held every page of a transaction in memory until its record was written,
//! so one VACUUM of a ~600 MB database peaked at 432 MB RSS, and a multi-GB one would exhaust a
//! small machine. Now the pages stream into the bundle in a second pass over the frames.
//! `WALBUNDLE_BIG_TXN_MB` sets the database size (default 256; 3000 for the multi-GB case).

use std::time::Duration;

use crate::support::rig::{Rig, stop_capture};
use crate::support::*;

/// Peak resident memory (VmHWM) of a live process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn one_huge_transaction_is_captured_in_flat_memory() {
    let mb: u64 = std::env::var("WALBUNDLE_BIG_TXN_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let run = Rig::new(10);
    {
        let c = run.holder.as_ref().unwrap();
        c.execute_batch("BEGIN").unwrap();
        for _ in 0..mb {
            c.execute(
                "INSERT INTO items(txn_id, v) VALUES(0, randomblob(1000000))",
                [],
            )
            .unwrap();
        }
        c.execute_batch("COMMIT; DELETE FROM items WHERE id % 5 = 0;")
            .unwrap();
        let busy: i64 = c
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0);
    }
    let mut cap = run.spawn_capture(&[], &[]);
    // A multi-GB snapshot (read, compress, verify) takes a while.
    for _ in 0..1800 {
        if crate::support::rig::has_generation(&run.set()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    run.wait_first_generation();
    let base = peak_rss(cap.id());
    // The application's VACUUM: one transaction rewriting the whole database, spilling to the
    // WAL long before it commits.
    let vac = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); \
             c.execute('PRAGMA cache_size=-4000'); c.execute('PRAGMA wal_autocheckpoint=0'); \
             c.execute('VACUUM')",
            s(&run.db),
        ])
        .status()
        .unwrap();
    assert!(vac.success());
    let wal = std::fs::metadata(format!("{}-wal", run.db.display())).map_or(0, |m| m.len());
    assert!(
        wal > mb * 600_000,
        "the VACUUM should be one WAL transaction of most of the database ({wal} bytes)"
    );
    // Wait until it is sealed (a bundle holding the VACUUM), probing the peak meanwhile.
    let mut sealed = false;
    for _ in 0..1800 {
        let l = wb(["list", s(&run.set()), "--json"]).json();
        let big = l["chains"].as_array().into_iter().flatten().any(|c| {
            c["bundles"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["bytes"].as_u64().unwrap_or(0) > mb * 300_000)
        });
        if big {
            sealed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = peak_rss(cap.id());
    assert!(
        sealed,
        "the VACUUM was not sealed; log:\n{}",
        run.capture_log()
    );
    run.write(&["--txns", "20"]);
    std::thread::sleep(Duration::from_millis(600));
    stop_capture(&mut cap);
    let pages = wal / 4120;
    eprintln!(
        "VACUUM of {wal} bytes ({pages} pages): capture peak RSS {} MB (after its snapshot {} MB)",
        peak >> 20,
        base >> 20
    );
    // The bound the issue sets: 64 MiB plus a small per-page index (the open transaction's
    // page map: pgno, frame and a term, well under 64 bytes a page).
    assert!(
        peak < (64 << 20) + pages * 64,
        "capture peaked at {} MB for a {} MB transaction",
        peak >> 20,
        wal >> 20
    );
    run.verify_deep("quick");
    run.check_restores(&[], run.committed());
}
