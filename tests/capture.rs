//! Continuous capture against a real application process doing everything applications do to
//! their WAL: small and spilling transactions, rollbacks, savepoint rollbacks, its own PASSIVE,
//! FULL, RESTART and TRUNCATE checkpoints, `journal_size_limit`, VACUUM, closing every
//! connection — and `kill -9` of the capturer, twenty times. After each run, every bundle
//! boundary and a sample of transactions restore to a database that passes `integrity_check` and
//! holds exactly a contiguous prefix of committed transactions; the final restore holds every
//! committed transaction and is byte-identical to the source after a full checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

use crate::support::rig::{Rig as Run, has_generation, stop_capture};

fn stop(mut child: Child) {
    stop_capture(&mut child);
}

/// The whole oracle: deep verify, every bundle boundary, sampled transactions, the final state.
fn check_everything(run: &Run) {
    run.verify_deep("full");
    let mut points: Vec<u64> = Vec::new();
    for (_, f, e) in run.listing().0 {
        points.push(e);
        // One transaction inside the bundle too, when it has several.
        if e > f {
            points.push(f + (e - f) / 2);
        }
    }
    points.sort_unstable();
    points.dedup();
    assert!(
        points.len() >= 3,
        "too few bundles to test ({points:?}); capture log:\n{}",
        run.capture_log()
    );
    // One group: the source never goes back here, so the prefix grows across chains too.
    let points: Vec<(usize, u64)> = points.into_iter().map(|t| (0, t)).collect();
    run.check_restores(&points, committed(&run.log).len() as u64);
}

fn scenario(writer_args: &[&str]) {
    let run = Run::new(500);
    let cap = run.start_capture(&[]);
    let mut args = vec!["--txns", "900", "--rate", "400"];
    args.extend_from_slice(writer_args);
    run.write(&args);
    std::thread::sleep(Duration::from_millis(600));
    stop(cap);
    check_everything(&run);
}

#[test]
fn mixed_small_spilling_rollbacks_and_savepoints() {
    scenario(&[
        "--large-every",
        "60",
        "--cache-size",
        "8",
        "--rollback-every",
        "11",
        "--savepoint-every",
        "7",
    ]);
}

#[test]
fn application_passive_checkpoints() {
    scenario(&["--checkpoint-every", "25", "--checkpoint-mode", "PASSIVE"]);
}

#[test]
fn application_full_checkpoints() {
    scenario(&[
        "--checkpoint-every",
        "60",
        "--checkpoint-mode",
        "FULL",
        "--busy-timeout-ms",
        "50",
    ]);
}

#[test]
fn application_restart_checkpoints() {
    scenario(&[
        "--checkpoint-every",
        "60",
        "--checkpoint-mode",
        "RESTART",
        "--busy-timeout-ms",
        "50",
    ]);
}

#[test]
fn application_truncate_checkpoints_and_journal_size_limit() {
    scenario(&[
        "--checkpoint-every",
        "60",
        "--checkpoint-mode",
        "TRUNCATE",
        "--journal-size-limit",
        "65536",
        "--busy-timeout-ms",
        "50",
    ]);
}

#[test]
fn application_vacuums() {
    scenario(&["--vacuum-every", "250", "--large-every", "100"]);
}

#[test]
fn application_closes_all_connections() {
    scenario(&["--reconnect-every", "40", "--autocheckpoint", "50"]);
}

/// The WAL already holds committed frames (autocheckpoint off) when capture first starts.
#[test]
fn starts_on_a_wal_full_of_committed_frames() {
    let run = Run::new(300);
    // The application keeps a connection open (as a live one does), so the writer's close is
    // not the last one and the WAL survives with its committed frames.
    let app = rusqlite::Connection::open(&run.db).unwrap();
    app.query_row("SELECT count(*) FROM items", [], |_| Ok(()))
        .unwrap();
    run.write(&["--txns", "400", "--autocheckpoint", "0"]);
    let wal = std::fs::metadata(sidecar(&run.db, "-wal")).unwrap().len();
    assert!(
        wal > 1 << 20,
        "the WAL should hold the writer's frames ({wal} bytes)"
    );
    let o = wb(["capture", s(&run.db), "--dest", s(&run.dest), "--once"]);
    o.ok();
    let out = run.t.path("r.db");
    wb(["restore", s(&run.set()), "--out", s(&out)]).ok();
    assert_eq!(check_prefix(&out), 400);
    // Then continuous capture picks up from there.
    let cap = run.start_capture(&[]);
    run.write(&["--txns", "300", "--rate", "500"]);
    std::thread::sleep(Duration::from_millis(600));
    stop(cap);
    drop(app);
    check_everything(&run);
}

fn sidecar(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", p.display()))
}

/// `kill -9` of the capturer twenty times while the application keeps writing: every committed
/// transaction ends up in the set, and every chain split is recorded with its reason.
#[test]
fn kill_nine_twenty_times() {
    let run = Run::new(500);
    let stop_file = run.t.path("stop-writer");
    let mut writer = {
        let mut a = vec![
            "--db",
            s(&run.db),
            "--log",
            s(&run.log),
            "--duration",
            "60",
            "--rate",
            "300",
        ];
        a.extend_from_slice(&["--large-every", "80", "--stop-file", s(&stop_file)]);
        crate::support::writer(&a)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20 {
        let mut cap = run.start_capture(&[]);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 500));
        cap.kill().unwrap(); // SIGKILL
        cap.wait().unwrap();
        assert!(
            writer.try_wait().unwrap().is_none(),
            "the writer stopped early"
        );
    }
    // Stop the writer between transactions, so its log holds exactly what it committed.
    std::fs::write(&stop_file, b"").unwrap();
    assert!(writer.wait().unwrap().success());
    // One last, clean run captures everything committed.
    let cap = run.start_capture(&[]);
    std::thread::sleep(Duration::from_millis(800));
    stop(cap);
    let l = wb(["list", s(&run.set()), "--json"]).json();
    let chains = l["chains"].as_array().unwrap();
    for c in chains {
        assert!(
            c["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "a chain without a recorded reason: {c}"
        );
        assert!(c["broken"].is_null(), "a broken chain: {c}");
    }
    eprintln!(
        "kill -9 x20: {} chain(s); reasons: {:?}",
        chains.len(),
        chains
            .iter()
            .map(|c| c["reason"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect::<String>())
            .collect::<Vec<_>>()
    );
    check_everything(&run);
}

/// One process captures a global database and two project databases named in a TOML config;
/// each set ends up holding every transaction its writer committed.
#[test]
fn config_captures_many_databases_in_one_process() {
    let t = Tmp::new();
    let dest = t.mkdir("backups");
    let global = t.mkdir("home").join("global.db");
    let pa = t.mkdir("projects/a/.app").join("project.db");
    let pb = t.mkdir("projects/b/.app").join("project.db");
    for db in [&global, &pa, &pb] {
        init_db(db, 200, 4096, "wal");
    }
    let cfg = t.path("walbundle.toml");
    std::fs::write(
        &cfg,
        format!(
            "dest = \"{}\"\nthreads = 2\ninterval = \"200ms\"\n\n[[database]]\npath = \"{}\"\n\n\
             [[database]]\npath = \"{}\"\nname = \"project-a\"\n\n[[database]]\npath = \"{}\"\nname = \"project-b\"\ninterval = \"500ms\"\n",
            s(&dest),
            s(&global),
            s(&pa),
            s(&pb)
        ),
    )
    .unwrap();
    let cap = Command::new(bin())
        .args(["capture", "--config", s(&cfg)])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(t.path("cap.log")).unwrap())
        .spawn()
        .unwrap();
    for set in ["global", "project-a", "project-b"] {
        for _ in 0..200 {
            if has_generation(&dest.join(set)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let logs = [t.path("a.tsv"), t.path("b.tsv"), t.path("g.tsv")];
    let writers: Vec<_> = [(&pa, &logs[0]), (&pb, &logs[1]), (&global, &logs[2])]
        .iter()
        .map(|(db, log)| {
            crate::support::writer(&[
                "--db",
                s(db),
                "--log",
                s(log),
                "--txns",
                "300",
                "--rate",
                "300",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    for mut w in writers {
        assert!(w.wait().unwrap().success());
    }
    std::thread::sleep(Duration::from_millis(800));
    stop(cap);
    let log = std::fs::read_to_string(t.path("cap.log")).unwrap();
    for (set, commits) in [
        ("project-a", &logs[0]),
        ("project-b", &logs[1]),
        ("global", &logs[2]),
    ] {
        let set = dest.join(set);
        wb(["verify", s(&set), "--deep"]).ok();
        let out = t.path(&format!(
            "{}.db",
            set.file_name().unwrap().to_string_lossy()
        ));
        wb(["restore", s(&set), "--out", s(&out)]).ok();
        assert_eq!(
            check_prefix(&out),
            committed(commits).len() as u64,
            "{}: capture log:\n{log}",
            set.display()
        );
    }
    // The same config with --once captures what is there and exits.
    wb(["capture", "--config", s(&cfg), "--once"]).ok();
}

/// The application's own TRUNCATE checkpoint (with a long busy timeout) completes while capture
/// runs: capture sees the write lock held with nothing committing and moves its read mark
/// without the barrier, instead of stalling the checkpoint — and the application's writers
/// behind it — for the whole busy timeout. Nothing is lost across the WAL restart that follows.
#[test]
fn application_truncate_checkpoint_completes_beside_capture() {
    let run = Run::new(300);
    let cap = run.start_capture(&[]);
    run.write(&["--txns", "200", "--rate", "400"]);
    let app = rusqlite::Connection::open(&run.db).unwrap();
    app.busy_timeout(Duration::from_secs(60)).unwrap();
    for round in 0..3 {
        // A checkpoint refused at once found the checkpoint lock taken (walbundle's own PASSIVE
        // checkpoint, or any other checkpointer): retried as applications do (`app_checkpoint`).
        let (busy, took, attempts) = app_checkpoint(&app, "TRUNCATE");
        assert_eq!(
            busy, 0,
            "round {round}: the checkpoint did not complete beside capture ({attempts} attempts, last {took:?})"
        );
        let wal = std::fs::metadata(sidecar(&run.db, "-wal")).map_or(0, |m| m.len());
        assert_eq!(wal, 0, "round {round}: TRUNCATE left {wal} bytes of WAL");
        run.write(&["--txns", "100", "--rate", "400"]);
    }
    std::thread::sleep(Duration::from_millis(600));
    stop(cap);
    drop(app);
    check_everything(&run);
}

/// A set captured first as version 1 bundles (`--bundle-format 1`, what walbundle 0.1 wrote)
/// and then, in the same chain, as version 2 (reference pages), under a writer that updates half
/// the rows it touches:
/// `verify --deep` replays it, every sampled point restores to a committed prefix, the newest
/// restore holds every commit and is byte-identical to the source, and both versions are there.
#[test]
fn mixed_bundle_formats_in_one_chain_restore_exactly() {
    let r = Run::new(300);
    let mut cap = r.start_capture(&["--bundle-format", "1"]);
    r.wait_first_generation();
    r.write(&["--txns", "300", "--rate", "0", "--compressible", "0.5"]);
    std::thread::sleep(Duration::from_millis(600));
    stop_capture(&mut cap);
    let mut cap = r.start_capture(&[]);
    r.write(&["--txns", "300", "--rate", "0", "--compressible", "0.5"]);
    std::thread::sleep(Duration::from_millis(600));
    stop_capture(&mut cap);
    let mut versions = std::collections::BTreeSet::new();
    let mut chains = 0;
    for c in std::fs::read_dir(r.set()).unwrap().flatten() {
        if !c.path().is_dir() {
            continue;
        }
        chains += 1;
        for b in std::fs::read_dir(c.path()).unwrap().flatten() {
            if b.file_name().to_string_lossy().ends_with(".wbb") {
                versions.insert(std::fs::read(b.path()).unwrap()[8]);
            }
        }
    }
    assert_eq!(chains, 1, "the second capture resumed the chain");
    assert_eq!(
        versions,
        [1u8, 2].into(),
        "both bundle versions in the chain"
    );
    r.verify_deep("quick");
    let (bundles, _) = r.listing();
    let points: Vec<(usize, u64)> = bundles.iter().map(|&(c, _, last)| (c, last)).collect();
    r.check_restores(&points, r.committed());
}

/// After the application restarts its WAL (TRUNCATE checkpoints), the bundles of the new WAL
/// cycle still carry reference pages: the earlier versions of the pages they rewrite then live
/// only in the database file, which capture reads raw and checks against the state checksum.
/// Every point restores, and the newest restore is byte-identical to the source.
#[test]
fn bundles_after_a_wal_restart_refer_to_the_database_file() {
    let r = Run::new(300);
    let mut cap = r.start_capture(&[]);
    r.wait_first_generation();
    r.write(&[
        "--txns",
        "600",
        "--rate",
        "300",
        "--checkpoint-every",
        "40",
        "--checkpoint-mode",
        "TRUNCATE",
    ]);
    std::thread::sleep(Duration::from_millis(600));
    stop_capture(&mut cap);
    // (first frame, reference pages) of every bundle.
    let mut bundles = Vec::new();
    for c in std::fs::read_dir(r.set()).unwrap().flatten() {
        if !c.path().is_dir() {
            continue;
        }
        for b in std::fs::read_dir(c.path()).unwrap().flatten() {
            if b.file_name().to_string_lossy().ends_with(".wbb") {
                let bun = walbundle::bundle::wbb::read_bundle(&b.path()).unwrap();
                bundles.push((bun.header.first_frame, bun.refs.len()));
            }
        }
    }
    let fresh: Vec<usize> = bundles
        .iter()
        .filter(|(first, _)| *first == 1)
        .map(|&(_, refs)| refs)
        .collect();
    assert!(
        fresh.len() >= 3 && fresh.iter().filter(|&&n| n > 0).count() * 2 >= fresh.len(),
        "bundles starting a WAL cycle, reference pages of each: {fresh:?}; capture log:\n{}",
        r.capture_log()
    );
    check_everything(&r);
}
