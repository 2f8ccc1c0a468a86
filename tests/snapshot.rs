//! Snapshots of real databases: under a live writer process the restored state must be exactly a
//! committed prefix; with no writer, after a full checkpoint, the restore must be byte-identical
//! to the source file — across page sizes, journal modes, and past 1 GiB where SQLite's
//! lock-byte page exists (it is never written, and `sqlite_dbpage` skips it).

use std::ffi::OsStr;

use crate::support::*;

#[test]
fn snapshot_under_live_writer_restores_a_committed_prefix() {
    let t = Tmp::new();
    let (db, log) = (t.mkdir("src").join("app.db"), t.path("commits.tsv"));
    let dest = t.mkdir("dest");
    init_db(&db, 2000, 4096, "wal");
    let mut w = spawn_writer(
        &db,
        &log,
        &["--txns", "1500", "--rate", "500", "--large-every", "40"],
    );
    std::thread::sleep(std::time::Duration::from_millis(800));
    let mut snaps = Vec::new();
    for _ in 0..3 {
        let o = wb(["snapshot", s(&db), "--dest", s(&dest), "--json"]);
        o.ok();
        snaps.push(o.json());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(w.wait().expect("writer").success());
    let set = dest.join("app");
    wb(["verify", s(&set)]).ok();
    wb(["verify", s(&set), "--deep"]).ok();
    let out = t.path("r.db");
    wb(["restore", s(&set), "--out", s(&out)]).ok();
    let k = check_prefix(&out);
    let all = committed(&log);
    assert!(
        k >= 1 && k <= all.len() as u64,
        "restored {k} of {} committed",
        all.len()
    );
    // The newest snapshot holds at least what was committed before it started.
    assert!(
        snaps[2]["snapshot"]["manifest"]["wal"]["frame"]
            .as_u64()
            .is_some()
    );
    eprintln!("restored {k} of {} committed txns", all.len());
    // Each snapshot is its own restorable chain; list shows three points with rising txn numbers.
    let l = wb(["list", s(&set), "--json"]);
    let pts = l.json()["restorable"].as_array().expect("restorable").len();
    assert_eq!(pts, 3);
}

fn identical_after_checkpoint(page_size: u32, journal: &str, rows: u32) {
    let t = Tmp::new();
    let db = t.mkdir("src").join("data.db");
    let dest = t.mkdir("dest");
    init_db(&db, rows, page_size, journal);
    // A few more transactions through the writer, then a full checkpoint so the file is whole.
    let st = writer(&["--db", s(&db), "--txns", "50"])
        .status()
        .expect("writer");
    assert!(st.success());
    {
        let c = rusqlite::Connection::open(&db).expect("open");
        let _: (i64, i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap_or((0, 0, 0));
    }
    let before = sha_file(&db);
    wb(["snapshot", s(&db), "--dest", s(&dest)]).ok();
    assert_eq!(sha_file(&db), before, "the snapshot changed the source");
    let out = t.path("restored.db");
    wb(["restore", s(&dest.join("data")), "--out", s(&out)]).ok();
    assert_eq!(
        sha_file(&out),
        before,
        "restore is not byte-identical (page size {page_size}, {journal})"
    );
    let mode: String = rusqlite::Connection::open(&out)
        .and_then(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
        .expect("mode");
    assert_eq!(
        mode, journal,
        "restored database opens in another journal mode"
    );
}

#[test]
fn byte_identical_page_size_512_wal() {
    identical_after_checkpoint(512, "wal", 500);
}

#[test]
fn byte_identical_page_size_4096_wal() {
    identical_after_checkpoint(4096, "wal", 1000);
}

#[test]
fn byte_identical_page_size_65536_wal() {
    identical_after_checkpoint(65536, "wal", 500);
}

#[test]
fn byte_identical_rollback_journal() {
    identical_after_checkpoint(4096, "delete", 1000);
}

/// Past 1 GiB the file holds SQLite's lock-byte page: never written, read back as zeros.
#[test]
fn byte_identical_over_one_gib() {
    let t = Tmp::new();
    let db = t.mkdir("src").join("big.db");
    let dest = t.mkdir("dest");
    {
        let c = rusqlite::Connection::open(&db).expect("open");
        c.execute_batch(
            "PRAGMA page_size=65536; PRAGMA journal_mode=WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);
             BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<1100)
             INSERT INTO t(b) SELECT randomblob(4096) || zeroblob(1000000) FROM n;
             COMMIT;
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .expect("fill");
    }
    let len = std::fs::metadata(&db).expect("md").len();
    assert!(len > (1 << 30) + 65536, "database is only {len} bytes");
    let before = sha_file(&db);
    wb(["snapshot", s(&db), "--dest", s(&dest), "--check", "quick"]).ok();
    let out = t.path("big-restored.db");
    wb([
        "restore",
        s(&dest.join("big")),
        "--out",
        s(&out),
        "--check",
        "quick",
    ])
    .ok();
    assert_eq!(std::fs::metadata(&out).expect("md").len(), len);
    assert_eq!(
        sha_file(&out),
        before,
        "restore over 1 GiB is not byte-identical"
    );
}

#[test]
fn sets_of_many_databases_share_a_destination() {
    let t = Tmp::new();
    let dest = t.mkdir("dest");
    let a = t.mkdir("proj-a").join("project.db");
    let b = t.mkdir("proj-b").join("project.db");
    let g = t.mkdir("home").join("global.db");
    for db in [&a, &b, &g] {
        init_db(db, 50, 4096, "wal");
    }
    wb(["snapshot", s(&g), "--dest", s(&dest)]).ok();
    wb(["snapshot", s(&a), "--dest", s(&dest)]).ok();
    // Same stem, different database: refused, with the way out named.
    let o = wb(["snapshot", s(&b), "--dest", s(&dest)]);
    o.code(2)
        .stderr_has("--name")
        .stderr_has(s(&a.canonicalize().unwrap()));
    wb(["snapshot", s(&b), "--dest", s(&dest), "--name", "project-b"]).ok();
    // WALBUNDLE_DEST works in place of --dest.
    wb_env(["snapshot", s(&a)], &[("WALBUNDLE_DEST", s(&dest))]).ok();
    for set in ["global", "project", "project-b"] {
        wb(["verify", s(&dest.join(set))]).ok();
    }
    let l = wb(["list", s(&dest.join("project")), "--json"]).json();
    assert_eq!(l["restorable"].as_array().unwrap().len(), 2);
    assert_eq!(l["source"]["path"], s(&a.canonicalize().unwrap()));
}

#[test]
fn destination_is_required_and_must_not_be_inside_the_source_folder() {
    let t = Tmp::new();
    let src = t.mkdir("src");
    let db = src.join("app.db");
    init_db(&db, 10, 4096, "wal");
    wb(["snapshot", s(&db)])
        .code(2)
        .stderr_has("--dest")
        .stderr_has("WALBUNDLE_DEST");
    let inside = src.join("backups");
    wb(["snapshot", s(&db), "--dest", s(&inside)])
        .code(2)
        .stderr_has("--allow-inside-source");
    assert!(!inside.exists(), "a refused destination was created");
    // Also through a symlink that resolves inside.
    std::os::unix::fs::symlink(&src, t.path("link")).unwrap();
    wb(["snapshot", s(&db), "--dest", s(&t.path("link/bk"))]).code(2);
    wb([
        OsStr::new("snapshot"),
        db.as_os_str(),
        "--dest".as_ref(),
        inside.as_os_str(),
        "--allow-inside-source".as_ref(),
    ])
    .ok();
    wb(["verify", s(&inside.join("app"))]).ok();
}

#[test]
fn restore_never_overwrites_without_force_and_keeps_what_it_moves_aside() {
    let t = Tmp::new();
    let db = t.mkdir("src").join("app.db");
    let dest = t.mkdir("dest");
    init_db(&db, 100, 4096, "wal");
    wb(["snapshot", s(&db), "--dest", s(&dest)]).ok();
    let set = dest.join("app");
    let out = t.mkdir("out").join("app.db");
    std::fs::write(&out, b"precious").unwrap();
    wb(["restore", s(&set), "--out", s(&out)])
        .code(2)
        .stderr_has("--force");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    // A stale -wal beside the target is refused too: SQLite would replay it onto the restore.
    std::fs::remove_file(&out).unwrap();
    let wal = t.path("out/app.db-wal");
    std::fs::write(&wal, b"stale wal").unwrap();
    wb(["restore", s(&set), "--out", s(&out)])
        .code(2)
        .stderr_has("app.db-wal");
    assert!(!out.exists());
    std::fs::write(&out, b"precious").unwrap();
    let o = wb(["restore", s(&set), "--out", s(&out), "--force", "--json"]);
    o.ok();
    let moved: Vec<String> = o.json()["restore"]["moved_aside"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert!(
        moved
            .iter()
            .any(|m| std::fs::read(m).unwrap() == b"precious")
    );
    assert!(
        moved
            .iter()
            .any(|m| m.ends_with("-wal") && std::fs::read(m).unwrap() == b"stale wal")
    );
    assert!(!wal.exists());
    check_prefix(&out);
    // Forced again at once (the same second): the first restore is moved aside under another
    // name, not refused for a taken one.
    for _ in 0..2 {
        wb(["restore", s(&set), "--out", s(&out), "--force"]).ok();
    }
    let asides = std::fs::read_dir(t.path("out"))
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.contains(".walbundle-old-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .count();
    assert_eq!(asides, 3, "every replaced database kept");
    check_prefix(&out);
    // No temporaries left in the output folder.
    let names: Vec<String> = std::fs::read_dir(t.path("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".wbtmp")), "{names:?}");
}

#[test]
fn restore_refuses_a_database_in_use() {
    let t = Tmp::new();
    let db = t.mkdir("src").join("app.db");
    let dest = t.mkdir("dest");
    init_db(&db, 100, 4096, "wal");
    wb(["snapshot", s(&db), "--dest", s(&dest)]).ok();
    let out = t.mkdir("out").join("live.db");
    init_db(&out, 10, 4096, "wal");
    // Another process holds the database open (a Python connection in WAL mode).
    let mut holder = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1]); c.execute('select count(*) from items').fetchall(); print('ready', flush=True); time.sleep(30)",
            s(&out),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let before = sha_file(&out);
    wb(["restore", s(&dest.join("app")), "--out", s(&out), "--force"])
        .code(2)
        .stderr_has("open in another process");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(sha_file(&out), before);
}

#[test]
fn demo_runs_end_to_end() {
    let t = Tmp::new();
    let o = wb(["demo", "--dir", s(&t.path("demo")), "--seconds", "1"]);
    o.ok();
    assert!(o.stdout.contains("demo ok"), "{}", o.stdout);
    let l = wb(["list", s(&t.path("demo/backups/app")), "--json"]).json();
    let first = l["chains"].as_array().unwrap().len();
    assert!(first >= 1);
    // Running it again reuses the database and the set, adding chains with recorded reasons.
    wb(["demo", "--dir", s(&t.path("demo")), "--seconds", "0.5"]).ok();
    let l = wb(["list", s(&t.path("demo/backups/app")), "--json"]).json();
    let chains = l["chains"].as_array().unwrap();
    assert!(chains.len() > first, "{chains:?}");
    assert!(
        chains
            .iter()
            .all(|c| c["reason"].as_str().is_some_and(|r| !r.is_empty()))
    );
}
