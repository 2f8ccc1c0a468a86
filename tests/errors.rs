//! Every way a snapshot can be handed bad input or a bad destination: each must fail with exit 2
//! and a message naming the file, publish nothing, and leave the source untouched.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;

use crate::support::*;

/// No generation folder, and no temporary left behind, anywhere under `dest`.
fn nothing_published(dest: &std::path::Path) {
    for f in all_files(dest) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name == "walbundle-set.json",
            "unexpected file after a failed snapshot: {}",
            f.display()
        );
    }
}

#[test]
fn missing_source() {
    let t = Tmp::new();
    let dest = t.mkdir("dest");
    let o = wb(["snapshot", s(&t.path("nope/app.db")), "--dest", s(&dest)]);
    o.code(2)
        .stderr_has("nope/app.db")
        .stderr_has("No such file");
    nothing_published(&dest);
}

#[test]
fn not_a_database_empty_and_truncated() {
    let t = Tmp::new();
    let src = t.mkdir("src");
    let dest = t.mkdir("dest");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "text.db",
            b"hello, I am a text file, not a database at all ..........".to_vec(),
            "not a SQLite database",
        ),
        ("empty.db", Vec::new(), "empty"),
        (
            "short.db",
            b"SQLite format 3\0\x10\x00".to_vec(),
            "truncated",
        ),
        (
            "garbage.db",
            (0..8192u32).map(|i| (i * 7919 % 251) as u8).collect(),
            "not a SQLite database",
        ),
    ];
    for (name, bytes, msg) in cases {
        let db = src.join(name);
        std::fs::write(&db, &bytes).unwrap();
        let o = wb(["snapshot", s(&db), "--dest", s(&dest)]);
        o.code(2).stderr_has(name).stderr_has(msg);
        assert_eq!(std::fs::read(&db).unwrap(), bytes, "source changed");
    }
    nothing_published(&dest);
}

#[test]
fn database_truncated_mid_pages_is_refused() {
    let t = Tmp::new();
    let db = t.mkdir("src").join("cut.db");
    let dest = t.mkdir("dest");
    init_db(&db, 3000, 4096, "delete");
    let len = std::fs::metadata(&db).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let before = sha_file(&db);
    let o = wb(["snapshot", s(&db), "--dest", s(&dest)]);
    o.code(2);
    assert!(
        o.stderr.contains("cut.db") || o.stderr.contains("verify"),
        "{}",
        o.stderr
    );
    assert_eq!(sha_file(&db), before);
    nothing_published(&dest);
}

#[test]
fn permission_denied_on_source_and_destination() {
    let t = Tmp::new();
    let src = t.mkdir("src");
    let db = src.join("app.db");
    init_db(&db, 100, 4096, "delete");
    let dest = t.mkdir("dest");
    open_up(&dest);
    open_up(&src);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let Some(o) = wb_unprivileged(&[
        OsStr::new("snapshot"),
        db.as_os_str(),
        OsStr::new("--dest"),
        dest.as_os_str(),
    ]) else {
        eprintln!("SKIPPED permission test: cannot run unprivileged here");
        return;
    };
    o.code(2)
        .stderr_has("app.db")
        .stderr_has("ermission denied");
    nothing_published(&dest);

    // Readable source, unwritable destination.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ro_dest = dest.join("ro");
    std::fs::create_dir(&ro_dest).unwrap();
    std::fs::set_permissions(&ro_dest, std::fs::Permissions::from_mode(0o555)).unwrap();
    let o = wb_unprivileged(&[
        OsStr::new("snapshot"),
        db.as_os_str(),
        OsStr::new("--dest"),
        ro_dest.as_os_str(),
    ])
    .expect("ran before");
    o.code(2).stderr_has("ro").stderr_has("ermission denied");
    assert_eq!(std::fs::read_dir(&ro_dest).unwrap().count(), 0);
}

/// A genuinely full file system: a 1 MiB tmpfs as the destination.
#[test]
fn full_destination() {
    let t = Tmp::new();
    let db = t.mkdir("src").join("app.db");
    init_db(&db, 12000, 4096, "wal"); // ~2.4 MB compressed: cannot fit in 1 MiB
    let dest = t.mkdir("full");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", s(&dest)])
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!(
            "SKIPPED full-destination test: cannot mount a tmpfs here (needs root); run as root to cover it"
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(dest.clone());
    let before = sha_file(&db);
    let o = wb(["snapshot", s(&db), "--dest", s(&dest)]);
    o.code(2).stderr_has("full");
    assert_eq!(sha_file(&db), before);
    nothing_published(&dest);
    // Space is given back: the staged generation was removed.
    let free = std::process::Command::new("df")
        .arg("--output=used")
        .arg(&dest)
        .output()
        .unwrap();
    let used: u64 = String::from_utf8_lossy(&free.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        used < 64,
        "tmpfs still holds {used} KiB after the failed snapshot"
    );
}

/// A WAL database of `rows` incompressible 3000-byte rows (slow enough to snapshot to be caught
/// in the act).
fn big_random_db(db: &std::path::Path, rows: u32) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(b BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<{rows})
         INSERT INTO t SELECT randomblob(3000) FROM n;"
    ))
    .unwrap();
}

/// A snapshot killed half way leaves nothing under a final name; the next run cleans up.
#[test]
fn interrupted_snapshot_publishes_nothing() {
    let t = Tmp::new();
    let db = t.mkdir("src").join("app.db");
    let dest = t.mkdir("dest");
    big_random_db(&db, 60000);
    let set = dest.join("app");
    let mut killed_midway = false;
    for delay_ms in [150u64, 300, 600, 1000] {
        let mut child = std::process::Command::new(bin())
            .args(["snapshot", s(&db), "--dest", s(&dest), "--level", "9"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if still_running {
            killed_midway = true;
            // Only the set record may exist under a final name; temporaries are hidden.
            if set.exists() {
                for e in std::fs::read_dir(&set).unwrap().flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    assert!(
                        n == "walbundle-set.json" || n.starts_with(".wbtmp-"),
                        "found {n} after kill"
                    );
                }
            }
            break;
        }
    }
    assert!(
        killed_midway,
        "the snapshot always finished before the kill; make the database larger"
    );
    let had_temp = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".wbtmp-"));
    let o = wb(["snapshot", s(&db), "--dest", s(&dest), "--json"]);
    o.ok();
    let removed = o.json()["snapshot"]["stale_temps_removed"]
        .as_u64()
        .unwrap();
    assert_eq!(removed > 0, had_temp, "stale temporaries were not cleaned");
    assert!(
        !std::fs::read_dir(&set)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".wbtmp-"))
    );
    wb(["verify", s(&set)]).ok();
}

#[test]
fn a_second_writer_on_the_same_set_is_refused() {
    let t = Tmp::new();
    let db = t.mkdir("src").join("app.db");
    let dest = t.mkdir("dest");
    big_random_db(&db, 40000);
    wb(["snapshot", s(&db), "--dest", s(&dest), "--check", "quick"]).ok();
    let mut first = std::process::Command::new(bin())
        .args(["snapshot", s(&db), "--dest", s(&dest), "--level", "12"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = wb(["snapshot", s(&db), "--dest", s(&dest)]);
    let first_done = first.try_wait().unwrap().is_some();
    assert!(first.wait().unwrap().success());
    if !first_done {
        o.code(2).stderr_has("another walbundle process");
    }
}

/// The conventions of a packaged CLI: a man page and completions generated from the same clap
/// definitions as the parser, `--version` naming the format versions, `NO_COLOR` honoured.
#[test]
fn man_page_completions_version_and_no_color() {
    let man = wb(["generate", "man"]);
    man.ok();
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH walbundle"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
    assert!(man.stdout.contains("snapshot") && man.stdout.contains("restore"));
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef walbundle"),
        ("fish", "complete -c walbundle"),
    ] {
        let o = wb(["generate", shell]);
        o.ok();
        assert!(
            o.stdout.contains(marker),
            "{shell}: {}",
            &o.stdout[..200.min(o.stdout.len())]
        );
        assert!(
            o.stdout.contains("restore"),
            "{shell} completions name the subcommands"
        );
    }
    let v = wb(["--version"]);
    v.ok();
    assert!(
        v.stdout.contains(env!("CARGO_PKG_VERSION")) && v.stdout.contains("version 1"),
        "{}",
        v.stdout
    );
    // clap colours its errors on a terminal only; NO_COLOR must keep escapes out regardless.
    let o = wb_env(["snapshot", "--no-such-flag"], &[("NO_COLOR", "1")]);
    o.code(2);
    assert!(
        !o.stderr.contains('\u{1b}'),
        "escape codes despite NO_COLOR: {:?}",
        o.stderr
    );
}
