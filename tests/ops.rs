//! Operations end to end: one config for a global database and a database per project (a glob
//! pattern, re-scanned so a project added while capture runs is picked up), status that a
//! script can trust, metrics, the failure hook, and schedules (systemd units checked by
//! `systemd-analyze verify`, the cron path against the real `crontab`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

fn new_db(path: &Path, rows: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    init_db(path, rows, 4096, "wal");
}

#[test]
fn config_with_patterns_status_metrics_and_hook() {
    let t = Tmp::new();
    let home = t.mkdir("home");
    let global = home.join(".app/global.db");
    let alpha = home.join("projects/alpha/.app/project.db");
    let beta = home.join("projects/beta/.app/project.db");
    let gamma = home.join("projects/gamma/.app/project.db");
    let legacy = home.join("legacy.db");
    for db in [&global, &alpha, &beta] {
        new_db(db, 200);
    }
    // A rollback-journal database: capture refuses it, which must reach the hook and status.
    init_db(&legacy, 50, 4096, "delete");
    let dest = t.mkdir("dest");
    let hook_log = t.path("hook.log");
    let cfg = t.path("walbundle.toml");
    std::fs::write(
        &cfg,
        format!(
            "dest = {dest:?}\nrescan = \"1s\"\ninterval = \"300ms\"\nstale_after = \"30s\"\n\
             on_error = \"echo \\\"$WALBUNDLE_DB|$WALBUNDLE_ERROR\\\" >> '{}'\"\n\n\
             [[database]]\npath = {global:?}\nname = \"global\"\n\n\
             [[database]]\npath = \"{}/projects/*/.app/project.db\"\nname = \"project-{{1}}\"\n\n\
             [[database]]\npath = {legacy:?}\n",
            hook_log.display(),
            home.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let prom = t.path("walbundle.prom");
    let cap = Command::new(bin())
        .args([
            "capture",
            "--config",
            s(&cfg),
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--metrics-file", s(&prom)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sets = ["global", "project-alpha", "project-beta"];
    wait_for("the first generations", 30, || {
        sets.iter()
            .all(|n| dest.join(n).is_dir() && !generation_dirs(&dest.join(n)).is_empty())
    });
    // A project appears while capture runs.
    new_db(&gamma, 100);
    let mut writers: Vec<_> = [&global, &alpha, &beta, &gamma]
        .iter()
        .enumerate()
        .map(|(i, db)| {
            let log = t.path(&format!("commits-{i}.tsv"));
            (
                spawn_writer(db, &log, &["--txns", "150", "--rate", "150"]),
                log,
                (*db).clone(),
            )
        })
        .collect();
    wait_for("the new project's set", 30, || {
        dest.join("project-gamma").is_dir()
            && !generation_dirs(&dest.join("project-gamma")).is_empty()
    });
    for (w, _, _) in &mut writers {
        assert!(w.wait().unwrap().success());
    }
    std::thread::sleep(Duration::from_millis(1500));
    // The legacy database failed: the hook ran with its name and the reason.
    wait_for("the hook", 10, || {
        std::fs::read_to_string(&hook_log).is_ok_and(|s| s.contains("legacy.db"))
    });
    let hook = std::fs::read_to_string(&hook_log).unwrap();
    assert!(hook.contains("WAL"), "{hook}");
    // Status: the four captured databases are current; the legacy one is failing (exit 1).
    let st = wb(["status", "--config", s(&cfg), "--json"]);
    st.code(1).stderr_has("legacy.db");
    let j = st.json();
    let rows = j["databases"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{j}");
    for r in rows {
        let db = r["db"].as_str().unwrap();
        assert_eq!(r["ok"].as_bool(), Some(!db.ends_with("legacy.db")), "{r}");
    }
    // Metrics: served on loopback and written to the textfile, one series per database.
    let m = http_get(port);
    assert!(m.starts_with("HTTP/1.0 200"), "{m}");
    for n in ["global.db", "gamma/.app/project.db"] {
        assert!(
            m.lines()
                .any(|l| l.starts_with("walbundle_healthy{") && l.contains(n) && l.ends_with(" 1")),
            "{m}"
        );
    }
    assert!(m.contains("walbundle_lag_seconds{"), "{m}");
    // Requests to each set's store by kind (a local folder counts them too).
    assert!(
        m.lines()
            .any(|l| l.starts_with("walbundle_store_requests_total{")
                && l.contains("kind=\"put\"")
                && !l.ends_with(" 0")),
        "{m}"
    );
    wait_for("the metrics file", 10, || {
        std::fs::read_to_string(&prom).is_ok_and(|s| s.contains("project-gamma"))
    });
    // Stop capture: every captured database restores its writer's commits exactly, and
    // status now fails naming the stopped captures.
    let out = crate::support::rig::terminate(cap);
    assert_eq!(out.status.code(), Some(2), "one database failed, so exit 2");
    for ((_, log, db), name) in
        writers
            .iter()
            .zip(["global", "project-alpha", "project-beta", "project-gamma"])
    {
        let o = t.path(&format!("{name}.db"));
        wb(["restore", s(&dest.join(name)), "--out", s(&o)]).ok();
        assert_eq!(
            check_prefix(&o),
            committed(log).len() as u64,
            "{}",
            db.display()
        );
    }
    let st = wb(["status", "--config", s(&cfg)]);
    st.code(1).stderr_has("capture is not running");
    wb(["status", s(&dest.join("global"))]).code(1);
    // A non-loopback metrics address is refused.
    wb(["capture", "--config", s(&cfg), "--metrics", "0.0.0.0:9"])
        .code(2)
        .stderr_has("loopback");
}

#[test]
fn snapshot_and_compact_for_a_whole_config() {
    let t = Tmp::new();
    let a = t.path("a/app.db");
    let b = t.path("b/app.db");
    new_db(&a, 100);
    new_db(&b, 100);
    let dest = t.mkdir("dest");
    let cfg = t.path("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "dest = {dest:?}\n[[database]]\npath = {a:?}\nname = \"a\"\nmode = \"snapshot\"\nevery = \"1h\"\n\
             [[database]]\npath = {b:?}\nname = \"b\"\nmode = \"snapshot\"\nkeep = 1\n"
        ),
    )
    .unwrap();
    wb(["snapshot", "--config", s(&cfg), "--check", "quick"]).ok();
    wb(["snapshot", "--config", s(&cfg), "--check", "quick"]).ok();
    assert_eq!(generation_dirs(&dest.join("a")).len(), 2);
    assert_eq!(
        generation_dirs(&dest.join("b")).len(),
        1,
        "keep = 1 applies to b"
    );
    wb(["compact", "--config", s(&cfg)]).ok();
    // Fresh snapshots: healthy; with a 1-second limit after 2 s: stale.
    wb(["status", "--config", s(&cfg)]).ok();
    std::thread::sleep(Duration::from_millis(2100));
    wb(["status", "--config", s(&cfg), "--stale-after", "1s"])
        .code(1)
        .stderr_has("newest generation");
}

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is required by this test (Debian package `{package}`; .ci/run installs it)"
    );
}

#[test]
fn systemd_units_verify_and_install_is_idempotent() {
    need("systemd-analyze", "systemd");
    let t = Tmp::new();
    let db = t.path("p/app.db");
    new_db(&db, 10);
    let cfg = t.path("c.toml");
    std::fs::write(
        &cfg,
        format!("dest = {:?}\n[[database]]\npath = {db:?}\n", t.path("dest")),
    )
    .unwrap();
    let units = t.path("units");
    let run = t.mkdir("run");
    for mode in ["capture", "snapshot"] {
        let name = format!("test-{mode}");
        let install = || {
            wb([
                "schedule",
                "install",
                "--name",
                &name,
                "--config",
                s(&cfg),
                "--mode",
                mode,
                "--every",
                "30m",
                "--backend",
                "systemd",
                "--unit-dir",
                s(&units),
                "--no-start",
                "--json",
            ])
        };
        let first = install();
        first.ok();
        assert_eq!(first.json()["changed"], true);
        let files: Vec<String> = first.json()["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        let before: Vec<String> = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        let v = Command::new("systemd-analyze")
            .args(["verify", "--user"])
            .args(&files)
            .env("XDG_RUNTIME_DIR", &run)
            .output()
            .unwrap();
        assert!(
            v.status.success() && v.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        let again = install();
        again.ok();
        assert_eq!(
            again.json()["changed"],
            false,
            "a second install changed the units"
        );
        let after: Vec<String> = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        assert_eq!(before, after);
        let l = wb(["schedule", "list", "--unit-dir", s(&units)]);
        l.ok();
        assert!(l.stdout.contains(&name));
        wb([
            "schedule",
            "remove",
            "--name",
            &name,
            "--unit-dir",
            s(&units),
            "--no-start",
        ])
        .ok();
        for f in &files {
            assert!(!Path::new(f).exists(), "{f} left behind");
        }
    }
    assert_eq!(
        std::fs::read_dir(&units).unwrap().count(),
        0,
        "units left behind"
    );
    // A launchd agent for macOS users: generated, well-formed enough to name the command.
    let la = t.path("agents");
    wb([
        "schedule",
        "install",
        "--name",
        "mac",
        "--config",
        s(&cfg),
        "--backend",
        "launchd",
        "--unit-dir",
        s(&la),
        "--no-start",
    ])
    .ok();
    let plist = std::fs::read_to_string(la.join("com.walbundle.mac.plist")).unwrap();
    assert!(plist.contains("<string>capture</string>") && plist.contains("<key>KeepAlive</key>"));
    wb([
        "schedule",
        "remove",
        "--name",
        "mac",
        "--unit-dir",
        s(&la),
        "--no-start",
    ])
    .ok();
    assert!(!la.join("com.walbundle.mac.plist").exists());
}

/// The Windows Task Scheduler definition, generated here (the real `schtasks` registers it in
/// the Wine suite, tests/windows.rs): UTF-16 with a byte-order mark as `schtasks /XML` reads
/// it, the schema's element order, both actions through the windowless launcher with a path
/// that needs quoting, idempotent, listed, removed; capture mode refused.
#[test]
fn task_scheduler_definition_is_well_formed_idempotent_and_removed() {
    let t = Tmp::new();
    let db = t.path("p/app.db");
    new_db(&db, 10);
    let cfg = t.path("my config.toml");
    std::fs::write(
        &cfg,
        format!(
            "dest = {:?}\n[[database]]\npath = {db:?}\nmode = \"snapshot\"\n",
            t.path("dest")
        ),
    )
    .unwrap();
    let tasks = t.path("tasks");
    let install = |mode: &str| {
        wb_env(
            [
                "schedule",
                "install",
                "--name",
                "app",
                "--config",
                s(&cfg),
                "--mode",
                mode,
                "--every",
                "15m",
                "--backend",
                "task-scheduler",
                "--unit-dir",
                s(&tasks),
                "--no-start",
                "--json",
            ],
            &[("LOCALAPPDATA", s(&t.path("appdata")))],
        )
    };
    let first = install("snapshot");
    first.ok();
    assert_eq!(first.json()["changed"], true);
    assert_eq!(first.json()["backend"], "task-scheduler");
    let xml_path = tasks.join("walbundle-app.xml");
    let bytes = std::fs::read(&xml_path).unwrap();
    assert_eq!(
        &bytes[..2],
        &[0xFF, 0xFE],
        "UTF-16LE with a byte-order mark"
    );
    // Parsed by a real XML parser, checked element by element.
    let check = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import sys, xml.etree.ElementTree as ET
ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
root = ET.parse(sys.argv[1]).getroot()
tt = root.find("t:Triggers/t:TimeTrigger", ns)
print("order", [c.tag.split("}")[1] for c in tt])
print("interval", tt.find("t:Repetition/t:Interval", ns).text)
print("uri", root.find("t:RegistrationInfo/t:URI", ns).text)
print("policy", root.find("t:Settings/t:MultipleInstancesPolicy", ns).text)
for e in root.findall("t:Actions/t:Exec", ns):
    print("exec", e.find("t:Command", ns).text, "|", e.find("t:Arguments", ns).text)
"#,
        )
        .arg(&xml_path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        out.contains("order ['Enabled', 'StartBoundary', 'Repetition']"),
        "{out}"
    );
    assert!(
        out.contains("interval PT15M") && out.contains("uri \\walbundle\\app"),
        "{out}"
    );
    assert!(out.contains("policy IgnoreNew"), "{out}");
    let execs: Vec<&str> = out.lines().filter(|l| l.starts_with("exec ")).collect();
    assert_eq!(execs.len(), 2, "{out}");
    let log = t.path("appdata").join("walbundle/logs/app.log");
    for (line, verb) in execs.iter().zip(["snapshot", "compact"]) {
        assert!(line.contains("walbundle-task |"), "{line}");
        assert!(
            line.contains(&format!(
                "--log {} {verb} --config \"{}\" -q",
                log.display(),
                cfg.display()
            )),
            "{line}"
        );
    }
    let again = install("snapshot");
    again.ok();
    assert_eq!(
        again.json()["changed"],
        false,
        "a second install changed the task"
    );
    let l = wb(["schedule", "list", "--unit-dir", s(&tasks)]);
    l.ok();
    assert!(l.stdout.contains("app\ttask-scheduler"), "{}", l.stdout);
    install("capture")
        .code(2)
        .stderr_has("not available on Windows");
    wb([
        "schedule",
        "remove",
        "--name",
        "app",
        "--unit-dir",
        s(&tasks),
        "--no-start",
    ])
    .ok();
    assert!(!xml_path.exists());
}

/// The cron path against the real `crontab`, restoring the user's own table afterwards.
#[test]
fn cron_schedule_is_idempotent_and_removed_without_trace() {
    need("crontab", "cron");
    struct Restore(Option<String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            match &self.0 {
                Some(t) => {
                    let mut c = Command::new("crontab")
                        .arg("-")
                        .stdin(Stdio::piped())
                        .spawn()
                        .unwrap();
                    std::io::Write::write_all(c.stdin.as_mut().unwrap(), t.as_bytes()).unwrap();
                    drop(c.stdin.take());
                    let _ = c.wait();
                }
                None => {
                    let _ = Command::new("crontab")
                        .arg("-r")
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
    let saved = Command::new("crontab").arg("-l").output().unwrap();
    let _restore = Restore(
        saved
            .status
            .success()
            .then(|| String::from_utf8_lossy(&saved.stdout).into_owned()),
    );
    // Someone else's entry must survive.
    let mut c = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), b"5 4 * * * echo not-walbundle\n")
        .unwrap();
    drop(c.stdin.take());
    assert!(c.wait().unwrap().success());
    let t = Tmp::new();
    let db = t.path("p/app.db");
    new_db(&db, 10);
    let cfg = t.path("my config%.toml");
    std::fs::write(
        &cfg,
        format!("dest = {:?}\n[[database]]\npath = {db:?}\n", t.path("dest")),
    )
    .unwrap();
    for _ in 0..2 {
        wb([
            "schedule",
            "install",
            "--name",
            "crontest",
            "--config",
            s(&cfg),
            "--backend",
            "cron",
        ])
        .ok();
    }
    let table =
        String::from_utf8(Command::new("crontab").arg("-l").output().unwrap().stdout).unwrap();
    assert_eq!(table.matches("# walbundle:crontest").count(), 2, "{table}");
    assert!(table.contains("echo not-walbundle"));
    assert!(table.contains("flock -n"), "{table}");
    assert!(
        table.contains("\\%"),
        "a % must be escaped for cron: {table}"
    );
    let l = wb(["schedule", "list"]);
    assert!(l.stdout.contains("crontest\tcron"), "{}", l.stdout);
    wb(["schedule", "remove", "--name", "crontest"]).ok();
    let table =
        String::from_utf8(Command::new("crontab").arg("-l").output().unwrap().stdout).unwrap();
    assert_eq!(table, "5 4 * * * echo not-walbundle\n");
}

/// A Rust application protecting the databases its config names from inside its own process:
/// two exist at start, a third appears later and joins at the next rescan; after `stop`, every
/// committed row restores from its set.
#[test]
fn protector_from_config_follows_patterns_and_restores() {
    use walbundle::ops::protect::Protector;
    use walbundle::ops::sources::Defaults;
    let t = Tmp::new();
    let dbs = t.mkdir("app/dbs");
    let dest = t.mkdir("backups");
    let open = |name: &str| {
        let c = rusqlite::Connection::open(dbs.join(name)).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE IF NOT EXISTS notes(n INTEGER)")
            .unwrap();
        c
    };
    let (a, b) = (open("a.db"), open("b.db"));
    let cfg = t.path("walbundle.toml");
    std::fs::write(
        &cfg,
        format!(
            "dest = {:?}\nrescan = \"1s\"\ninterval = \"200ms\"\n\n[[database]]\npath = {:?}\nname = \"set-{{1}}\"\n",
            dest.display().to_string(),
            format!("{}/*.db", dbs.display())
        ),
    )
    .unwrap();
    let p = Protector::from_config(
        &cfg,
        Defaults {
            opts: walbundle::capture::engine::CaptureOptions::default(),
            dest: None,
            allow_inside_source: false,
        },
    )
    .unwrap();
    let c = open("c.db");
    for (i, conn) in [&a, &b, &c].into_iter().enumerate() {
        for n in 0..50 {
            conn.execute("INSERT INTO notes VALUES (?1)", [(n + i * 100) as i64])
                .unwrap();
        }
    }
    wait_for("the third database to join", 20, || p.health().len() == 3);
    std::thread::sleep(Duration::from_millis(800));
    assert!(p.errors().is_empty(), "{:?}", p.errors());
    let stats = p.stop().unwrap();
    assert_eq!(stats.len(), 3, "{stats:?}");
    for name in ["a", "b", "c"] {
        let out = t.path(&format!("{name}-restored.db"));
        wb([
            "restore",
            s(&dest.join(format!("set-{name}.db"))),
            "--out",
            s(&out),
        ])
        .ok();
        let r = rusqlite::Connection::open(&out).unwrap();
        let n: i64 = r
            .query_row("SELECT count(*) FROM notes", [], |x| x.get(0))
            .unwrap();
        assert_eq!(n, 50, "{name}");
    }
}

/// An application watching its protector: the observer hears the chain start, every sealed
/// bundle and the stop, in order and with the statistics after each; a database that cannot
/// be protected fails `start` with its name, and runs the `on_error` hook with it.
#[test]
fn protector_observer_hears_events_and_on_error_runs() {
    use std::sync::{Arc, Mutex};
    use walbundle::capture::engine::{CaptureStats, Event};
    use walbundle::ops::protect::{Observer, Protector};

    #[derive(Default)]
    struct Heard(Mutex<Vec<(String, u64)>>);
    impl Observer for Heard {
        fn event(&self, db: &str, e: &Event, st: &CaptureStats) {
            let kind = serde_json::to_value(e).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(db.ends_with("app.db"), "{db}");
            self.0.lock().unwrap().push((kind, st.sealed_txn));
        }
    }
    let t = Tmp::new();
    let db = t.mkdir("app").join("app.db");
    let dest = t.mkdir("backups");
    let app = rusqlite::Connection::open(&db).unwrap();
    app.pragma_update(None, "journal_mode", "WAL").unwrap();
    app.execute_batch("CREATE TABLE notes(n INTEGER)").unwrap();
    let heard = Arc::new(Heard::default());
    let p = Protector::builder()
        .database(&db, &dest)
        .interval(Duration::from_millis(100))
        .observer(Arc::clone(&heard) as Arc<dyn Observer>)
        .start()
        .unwrap();
    for n in 0..20 {
        app.execute("INSERT INTO notes VALUES (?1)", [n]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(400));
    let stats = p.stop().unwrap();
    let heard = heard.0.lock().unwrap().clone();
    let kinds: Vec<&str> = heard.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"chain_started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"stopped"), "{kinds:?}");
    assert!(kinds.contains(&"bundle"), "{kinds:?}");
    let sealed: Vec<u64> = heard.iter().map(|(_, n)| *n).collect();
    assert!(sealed.windows(2).all(|w| w[0] <= w[1]), "{sealed:?}");
    assert_eq!(*sealed.last().unwrap(), stats[0].1.sealed_txn);
    assert!(stats[0].1.sealed_txn >= 20, "{:?}", stats[0].1);

    // A rollback-journal database cannot be captured: it is named in `errors` and the
    // `on_error` hook runs with it (capture retries it with backoff) ...
    let legacy = t.mkdir("legacy").join("old.db");
    rusqlite::Connection::open(&legacy)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    let marker = t.path("hook.txt");
    let hook = format!("echo \"$WALBUNDLE_DB\" > {}", marker.display());
    let p = Protector::builder()
        .database(&legacy, &dest)
        .on_error(&hook)
        .start()
        .unwrap();
    wait_for("the on_error hook", 10, || {
        std::fs::read_to_string(&marker).is_ok_and(|s| s.contains("old.db"))
    });
    let errors = p.errors();
    assert!(errors.keys().any(|k| k.ends_with("old.db")), "{errors:?}");
    p.stop().unwrap();
    // ... and with fail_fast, the first failure ends the run and `wait` returns it.
    let err = Protector::builder()
        .database(&legacy, &dest)
        .fail_fast(true)
        .start()
        .unwrap()
        .wait()
        .expect_err("the run ends with the failure");
    assert!(err.to_string().contains("old.db"), "{err}");
}
