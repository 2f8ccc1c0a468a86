//! Every command against a real S3-compatible server (SeaweedFS on loopback, started by the
//! test): snapshot, capture through `kill -9`s and a server crash, list, verify --deep, restore
//! (newest and at a transaction), compact, status, a config mixing local and s3:// sets, and
//! hostile bucket contents refused with the key named.

use std::process::{Child, Command};
use std::time::Duration;

use walbundle::store::Store;

use crate::support::rig::{Rig, stop_capture};
use crate::support::s3::S3Server;
use crate::support::*;

fn wb_s3(server: &S3Server, args: &[&str]) -> Out {
    let mut c = Command::new(bin());
    c.args(args).env_remove("WALBUNDLE_DEST");
    for (k, v) in server.env() {
        c.env(k, v);
    }
    run(c)
}

fn spawn_with(env: &[(&'static str, String)], args: &[&str], log: &std::path::Path) -> Child {
    crate::support::rig::spawn_logged(args, env, log)
}

fn objects_under(server: &S3Server, prefix: &str) -> Vec<String> {
    server
        .store(prefix)
        .list("", None)
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

#[test]
fn every_command_on_s3_through_kills_and_a_server_crash() {
    let mut r = Rig::new(500);
    let mut server = S3Server::start(&r.t.mkdir("s3"), "walbundle-e2e");
    let env = server.env();
    let dest = format!("s3://{}/backups", server.bucket);
    let set = format!("{dest}/app");
    let cwd = r.t.mkdir("cwd");

    let mut snap = Command::new(bin());
    snap.args(["snapshot", s(&r.db), "--dest", &dest])
        .current_dir(&cwd);
    for (k, v) in &env {
        snap.env(k, v);
    }
    run(snap).ok();
    assert!(
        !cwd.join("s3:").exists(),
        "an s3:// destination was taken for a local folder"
    );

    let log = r.t.path("capture.log");
    let db = r.db.clone();
    let capture = ["capture", s(&db), "--dest", &dest, "--interval", "200ms"];
    let spawn = |_: &Rig| spawn_with(&env, &capture, &log);
    let mut cap = spawn(&r);
    let mut w = r.spawn_writer(&[
        "--txns".into(),
        "1500".into(),
        "--rate".into(),
        "150".into(),
        "--large-every".into(),
        "400".into(),
    ]);
    std::thread::sleep(Duration::from_secs(3));
    cap.kill().unwrap(); // kill -9
    cap.wait().unwrap();
    cap = spawn(&r);
    std::thread::sleep(Duration::from_secs(2));
    server.kill(); // the store crashes while capture runs
    std::thread::sleep(Duration::from_secs(3));
    server.up();
    std::thread::sleep(Duration::from_secs(2));
    cap.kill().unwrap();
    cap.wait().unwrap();
    cap = spawn(&r);
    assert!(w.wait().unwrap().success(), "writer failed");
    // The last capture may have started a new chain after the writer ended: give it bundles.
    std::thread::sleep(Duration::from_secs(2));
    r.write(&["--txns", "60", "--rate", "50"]);
    std::thread::sleep(Duration::from_secs(3));
    stop_capture(&mut cap);
    let committed = r.committed();
    assert_eq!(committed, 1560);

    let keys = objects_under(&server, "backups/app");
    assert!(keys.iter().any(|k| k.ends_with(".wbb")), "{keys:?}");
    assert!(
        keys.iter().all(|k| !k.contains(".wbtmp-")),
        "a temporary reached the bucket: {keys:?}"
    );
    wb_s3(&server, &["verify", &set, "--deep"]).ok();
    let listing = wb_s3(&server, &["list", &set, "--json"]).ok().json();
    assert!(listing["chains"].as_array().is_some_and(|c| !c.is_empty()));

    let out = r.t.path("newest.db");
    let newest = wb_s3(&server, &["restore", &set, "--out", s(&out), "--json"])
        .ok()
        .json();
    let top = newest["restore"]["reached"]["txn"].as_u64().unwrap();
    assert_eq!(
        check_prefix(&out),
        committed,
        "the newest restore lost commits; capture log:\n{}\nlist:\n{}",
        r.capture_log(),
        wb_s3(&server, &["list", &set]).stdout
    );
    let mid = r.t.path("mid.db");
    // walbundle's own transaction numbers (a new chain's snapshot is one): the middle one.
    let half = (top / 2).to_string();
    let j = wb_s3(
        &server,
        &["restore", &set, "--out", s(&mid), "--txn", &half, "--json"],
    )
    .ok()
    .json();
    assert_eq!(j["restore"]["reached"]["txn"], top / 2, "{j}");
    let at = check_prefix(&mid);
    assert!(
        at > 0 && at <= committed,
        "--txn {half} gave {at} of {committed}"
    );

    let c = wb_s3(&server, &["compact", &set, "--force", "--json"])
        .ok()
        .json();
    assert!(c["compact"]["created"].is_object(), "{c}");
    let after = r.t.path("after-compact.db");
    wb_s3(&server, &["restore", &set, "--out", s(&after)]).ok();
    assert_eq!(check_prefix(&after), committed);
    wb_s3(&server, &["verify", &set]).ok();
    let st = wb_s3(&server, &["status", &set, "--json"]);
    assert!(st.stdout.contains("app"), "{}{}", st.stdout, st.stderr);
}

#[test]
fn hostile_bucket_contents_are_refused_naming_the_key() {
    let r = Rig::new(300);
    let server = S3Server::start(&r.t.mkdir("s3"), "walbundle-hostile");
    let dest = format!("s3://{}/b", server.bucket);
    let set = format!("{dest}/app");
    let mut cap = spawn_with(
        &server.env(),
        &["capture", s(&r.db), "--dest", &dest, "--interval", "200ms"],
        &r.t.path("capture.log"),
    );
    wait_for("the set's first generation", 60, || {
        wb_s3(&server, &["list", &set]).code == 0
    });
    for _ in 0..3 {
        r.write(&["--txns", "40"]);
        std::thread::sleep(Duration::from_millis(700));
    }
    stop_capture(&mut cap);
    wb_s3(&server, &["verify", &set, "--deep"]).ok();
    let store = server.store("b/app");
    let bundles: Vec<String> = objects_under(&server, "b/app")
        .into_iter()
        .filter(|k| k.ends_with(".wbb"))
        .collect();
    assert!(bundles.len() >= 2, "{bundles:?}");

    // A foreign object under our prefix: listed as someone else's, never deleted or trusted.
    store.put_new("notes.txt", b"not walbundle's").unwrap();
    let v = wb_s3(&server, &["verify", &set]);
    v.ok();

    // A truncated bundle (same key, fewer bytes: a store or a person replaced it).
    let victim = &bundles[0];
    let bytes = store.get(victim, 1 << 30).unwrap();
    store.delete(victim).unwrap();
    store.put_new(victim, &bytes[..bytes.len() / 2]).unwrap();
    let v = wb_s3(&server, &["verify", &set]);
    v.code(1);
    let said = format!("{}{}", v.stdout, v.stderr);
    assert!(said.contains(victim.as_str()), "{said}");
    let e = wb_s3(&server, &["restore", &set, "--out", s(&r.t.path("x.db"))]);
    assert_ne!(e.code, 0, "a restore through a truncated bundle succeeded");
    assert!(
        e.stderr.contains(victim.as_str()),
        "the error does not name {victim}: {}",
        e.stderr
    );

    // Replaced with other bytes of the same length.
    let mut other = bytes.clone();
    let n = other.len();
    other[n - 40] ^= 0xff;
    store.delete(victim).unwrap();
    store.put_new(victim, &other).unwrap();
    let v = wb_s3(&server, &["verify", &set]);
    v.code(1);
    let said = format!("{}{}", v.stdout, v.stderr);
    assert!(said.contains(victim.as_str()), "{said}");
    assert!(
        objects_under(&server, "b/app").contains(&"notes.txt".to_string()),
        "the foreign object was touched"
    );
}

#[test]
fn config_mixes_local_and_s3_destinations() {
    let r = Rig::new(200);
    let server = S3Server::start(&r.t.mkdir("s3"), "walbundle-mixed");
    let other = r.t.mkdir("src2").join("notes.db");
    init_db(&other, 100, 4096, "wal");
    let local = r.t.mkdir("local-backups");
    let cfg = r.t.path("walbundle.toml");
    std::fs::write(
        &cfg,
        format!(
            "interval = \"200ms\"\n\n[[database]]\npath = {:?}\ndest = \"s3://{}/cfg\"\n\n[[database]]\npath = {:?}\ndest = {:?}\n",
            s(&r.db),
            server.bucket,
            s(&other),
            s(&local)
        ),
    )
    .unwrap();
    let mut cap = spawn_with(
        &server.env(),
        &["capture", "--config", s(&cfg)],
        &r.t.path("capture.log"),
    );
    std::thread::sleep(Duration::from_secs(2));
    r.write(&["--txns", "80", "--rate", "0"]);
    let mut w2 = spawn_writer(&other, &r.t.path("notes.tsv"), &["--txns", "50"]);
    assert!(w2.wait().unwrap().success());
    std::thread::sleep(Duration::from_secs(2));
    stop_capture(&mut cap);
    let a = r.t.path("a.db");
    let b = r.t.path("b.db");
    wb_s3(
        &server,
        &[
            "restore",
            &format!("s3://{}/cfg/app", server.bucket),
            "--out",
            s(&a),
        ],
    )
    .ok();
    wb(["restore", s(&local.join("notes")), "--out", s(&b)]).ok();
    assert_eq!(check_prefix(&a), r.committed());
    assert_eq!(
        check_prefix(&b),
        committed(&r.t.path("notes.tsv")).len() as u64
    );
}

/// Capture, snapshot and compaction through a proxy that resets connections (at once and in
/// the middle of requests), delays them and answers 500/503 at random: nothing committed is
/// lost, no partial object appears under a final name, and the set verifies and restores every
/// commit (read back directly from the server).
#[test]
fn a_faulty_network_loses_nothing() {
    use crate::support::s3::FaultProxy;
    let mut r = Rig::new(300);
    let server = S3Server::start(&r.t.mkdir("s3"), "walbundle-faults");
    let proxy = FaultProxy::start(server.port);
    let env = proxy.env(&server);
    let dest = format!("s3://{}/f", server.bucket);
    let set = format!("{dest}/app");
    let through = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.args(args);
        for (k, v) in &env {
            c.env(k, v);
        }
        run(c)
    };
    through(&["snapshot", s(&r.db), "--dest", &dest]).ok();
    let mut cap = spawn_with(
        &env,
        &["capture", s(&r.db), "--dest", &dest, "--interval", "200ms"],
        &r.t.path("capture.log"),
    );
    let mut w = r.spawn_writer(&[
        "--txns".into(),
        "800".into(),
        "--rate".into(),
        "100".into(),
        "--large-every".into(),
        "300".into(),
    ]);
    assert!(w.wait().unwrap().success());
    std::thread::sleep(Duration::from_secs(3));
    stop_capture(&mut cap);
    through(&["compact", &set, "--force"]).ok();
    assert!(
        proxy.faults.load(std::sync::atomic::Ordering::SeqCst) > 10,
        "the proxy injected too few faults to mean anything"
    );
    drop(proxy);
    let keys = objects_under(&server, "f/app");
    assert!(keys.iter().all(|k| !k.contains(".wbtmp-")), "{keys:?}");
    wb_s3(&server, &["verify", &set, "--deep"]).ok();
    let out = r.t.path("restored.db");
    wb_s3(&server, &["restore", &set, "--out", s(&out)]).ok();
    assert_eq!(check_prefix(&out), r.committed(), "{}", r.capture_log());
}

/// Compaction with the set in the bucket, `kill -9`ed at each point where it publishes or
/// retires (after the replay, with the generation staged, right after publishing, and between
/// two deletions of a retirement) while capture keeps writing to the same set: after every kill
/// the set verifies, and in the end every commit restores.
#[test]
fn compaction_killed_at_every_step_in_the_bucket() {
    let mut r = Rig::new(500);
    let server = S3Server::start(&r.t.mkdir("s3"), "walbundle-compact-kills");
    let env = server.env();
    let dest = format!("s3://{}/k", server.bucket);
    let set = format!("{dest}/app");
    let db = r.db.clone();
    let log = r.t.path("capture.log");
    let mut cap = spawn_with(
        &env,
        &["capture", s(&db), "--dest", &dest, "--interval", "200ms"],
        &log,
    );
    let mut w = r.spawn_writer(&[
        "--rate".into(),
        "150".into(),
        "--duration".into(),
        "14".into(),
    ]);
    wait_for("the set's first generation", 60, || {
        wb_s3(&server, &["list", &set]).code == 0
    });
    std::thread::sleep(Duration::from_secs(1));
    let pause = r.t.path("paused");
    let mut compact = vec!["compact", set.as_str()];
    compact.extend(COMPACT_ALL);
    let mut reached = Vec::new();
    for point in [
        "compact:replayed",
        "compact:staged",
        "compact:published",
        "retire:object",
        "compact:staged",
        "retire:object",
    ] {
        std::thread::sleep(Duration::from_millis(1500));
        let _ = std::fs::remove_file(&pause);
        let mut penv = env.clone();
        penv.push(("WALBUNDLE_PAUSE_AT", point.to_string()));
        penv.push(("WALBUNDLE_PAUSE_FILE", s(&pause).to_string()));
        let mut c = spawn_with(&penv, &compact, &r.t.path("compact.log"));
        if wait_for_pause(&mut c, &pause, Duration::from_secs(8)) {
            reached.push(point);
        }
        c.kill().unwrap(); // kill -9, paused at the point (or already done)
        c.wait().unwrap();
        let v = wb_s3(&server, &["verify", &set]);
        assert_eq!(
            v.code,
            0,
            "after a kill at {point}: {}{}\ncompact log:\n{}",
            v.stdout,
            v.stderr,
            std::fs::read_to_string(r.t.path("compact.log")).unwrap_or_default()
        );
    }
    assert!(w.wait().unwrap().success());
    assert!(
        reached.contains(&"compact:published") && reached.contains(&"retire:object"),
        "compaction never reached the points it was to be killed at: {reached:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    wb_s3(&server, &compact).ok();
    stop_capture(&mut cap);
    wb_s3(&server, &["verify", &set, "--deep"]).ok();
    let out = r.t.path("restored.db");
    wb_s3(&server, &["restore", &set, "--out", s(&out)]).ok();
    assert_eq!(check_prefix(&out), r.committed(), "{}", r.capture_log());
}

/// A walbundle command with none of the caller's AWS environment: `HOME` is `home` (no
/// `~/.aws`), the endpoint is a port nothing listens on and the keys are wrong, so a command
/// reaches a bucket only through a config's `s3` settings.
fn wb_no_aws(home: &std::path::Path, args: &[&str]) -> Out {
    let mut c = Command::new(bin());
    c.args(args).env_remove("WALBUNDLE_DEST");
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("HOME", home)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "wrong")
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("aws-credentials"));
    run(c)
}

/// Two databases, two servers: one reached with a key pair written in its `[[database]]` table,
/// the other with the file's `[s3]` endpoint and a named profile of the shared credentials
/// file — both over an AWS environment that points elsewhere. snapshot, status, list, verify
/// and restore given `--config` reach each bucket; settings that cannot apply are refused
/// naming the config.
#[test]
fn config_s3_settings_reach_each_bucket() {
    let r = Rig::new(300);
    let a = S3Server::start(&r.t.mkdir("s3a"), "walbundle-cfg-a");
    let b = S3Server::start(&r.t.mkdir("s3b"), "walbundle-cfg-b");
    let other = r.t.mkdir("src2").join("notes.db");
    init_db(&other, 120, 4096, "wal");
    let home = r.t.mkdir("home");
    std::fs::write(
        home.join("aws-credentials"),
        "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
         [backups]\naws_access_key_id = walbundle\naws_secret_access_key = walbundle-secret\n",
    )
    .unwrap();
    let cfg = r.t.path("walbundle.toml");
    std::fs::write(
        &cfg,
        format!(
            "[s3]\nendpoint = {:?}\nprofile = \"backups\"\n\n\
             [[database]]\npath = {:?}\nmode = \"snapshot\"\ndest = \"s3://{}/team\"\n\
             s3 = {{ endpoint = {:?}, access_key_id = \"walbundle\", secret_access_key = \"walbundle-secret\", region = \"us-east-1\" }}\n\n\
             [[database]]\npath = {:?}\nmode = \"snapshot\"\ndest = \"s3://{}/notes\"\n",
            b.endpoint(),
            s(&r.db),
            a.bucket,
            a.endpoint(),
            s(&other),
            b.bucket,
        ),
    )
    .unwrap();
    wb_no_aws(&home, &["snapshot", "--config", s(&cfg), "-q"]).ok();
    assert!(!objects_under(&a, "team").is_empty());
    assert!(!objects_under(&b, "notes").is_empty());
    assert!(objects_under(&a, "notes").is_empty() && objects_under(&b, "team").is_empty());
    wb_no_aws(&home, &["status", "--config", s(&cfg)]).ok();
    let app = format!("s3://{}/team/app", a.bucket);
    let notes = format!("s3://{}/notes/notes", b.bucket);
    wb_no_aws(&home, &["list", &app, "--config", s(&cfg)]).ok();
    wb_no_aws(&home, &["verify", &notes, "--deep", "--config", s(&cfg)]).ok();
    let (ra, rb) = (r.t.path("a.db"), r.t.path("b.db"));
    wb_no_aws(
        &home,
        &["restore", &app, "--out", s(&ra), "--config", s(&cfg)],
    )
    .ok();
    wb_no_aws(
        &home,
        &["restore", &notes, "--out", s(&rb), "--config", s(&cfg)],
    )
    .ok();
    let rows = |p: &std::path::Path| -> i64 {
        rusqlite::Connection::open(p)
            .unwrap()
            .query_row("SELECT count(*) FROM items", [], |x| x.get(0))
            .unwrap()
    };
    assert_eq!(rows(&ra), rows(&r.db));
    assert_eq!(rows(&rb), rows(&other));

    // Settings that cannot apply are refused, naming the config and what is wrong.
    let bad = r.t.path("bad.toml");
    for (text, says) in [
        (
            format!(
                "[[database]]\npath = {:?}\ndest = \"/tmp/x\"\ns3 = {{ region = \"x\" }}\n",
                s(&r.db)
            ),
            "is not s3://",
        ),
        (
            format!(
                "[[database]]\npath = {:?}\ndest = \"s3://bk/x\"\ns3 = {{ access_key_id = \"k\" }}\n",
                s(&r.db)
            ),
            "without secret_access_key",
        ),
        (
            format!(
                "[[database]]\npath = {:?}\ndest = \"s3://bk/x\"\ns3 = {{ regoin = \"x\" }}\n",
                s(&r.db)
            ),
            "regoin",
        ),
        (
            format!(
                "[[database]]\npath = {:?}\ndest = \"s3://{}/x\"\ns3 = {{ profile = \"nope\", endpoint = {:?} }}\n",
                s(&r.db),
                a.bucket,
                a.endpoint()
            ),
            "profile \"nope\"",
        ),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = wb_no_aws(&home, &["snapshot", "--config", s(&bad)]);
        assert_ne!(out.code, 0);
        assert!(out.stderr.contains(says), "{says:?} not in: {}", out.stderr);
        assert!(
            out.stderr.contains("bad.toml"),
            "config not named: {}",
            out.stderr
        );
    }
}

/// A download or upload that a `kill -9` interrupted leaves its scratch file in the temp
/// folder; the next command on an object-store set removes those of processes that no longer
/// exist (once they are ten minutes old), and nothing of a live process or not its own.
#[test]
fn dead_processes_scratch_files_are_removed() {
    let r = Rig::new(100);
    let server = S3Server::start(&r.t.mkdir("s3"), "walbundle-scratch");
    let tmp = r.t.mkdir("tmp");
    let mut env = server.env();
    env.push(("TMPDIR", s(&tmp).to_string()));
    let run_env = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.args(args).env_remove("WALBUNDLE_DEST");
        for (k, v) in &env {
            c.env(k, v);
        }
        run(c)
    };
    let dest = format!("s3://{}/x", server.bucket);
    run_env(&["snapshot", s(&r.db), "--dest", &dest, "-q"]).ok();
    // A pid that existed and is gone (what a kill -9 leaves behind).
    let dead = {
        let mut c = Command::new("sleep").arg("0").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let me = std::process::id();
    let names = [
        (
            format!(".wbtmp-fetch-{dead}-00000000000000aa-bundle.wbb"),
            true,
            false,
        ),
        (
            format!(".wbtmp-upload-{dead}-00000000000000bb-image.zst"),
            true,
            false,
        ),
        (
            format!(".wbtmp-stage-{dead}-00000000000000cc-gen"),
            true,
            true,
        ),
        (
            format!(".wbtmp-fetch-{dead}-00000000000000dd-fresh.wbb"),
            false,
            false,
        ),
        (
            format!(".wbtmp-fetch-{me}-00000000000000ee-live.wbb"),
            true,
            false,
        ),
        (
            format!(".wbtmp-other-{dead}-00000000000000ff-x"),
            true,
            false,
        ),
        ("unrelated-file".to_string(), true, false),
    ];
    for (n, old, dir) in &names {
        let p = tmp.join(n);
        if *dir {
            std::fs::create_dir_all(p.join("inner")).unwrap();
        } else {
            std::fs::write(&p, b"partial").unwrap();
        }
        if *old {
            let st = Command::new("touch")
                .args(["-d", "20 minutes ago", s(&p)])
                .status()
                .unwrap();
            assert!(st.success());
        }
    }
    run_env(&["list", &format!("{dest}/app")]).ok();
    for (i, (n, _, _)) in names.iter().enumerate() {
        let gone = !tmp.join(n).exists();
        assert_eq!(gone, i < 3, "{n}: gone = {gone}");
    }
}

/// Every `.wbb` file in the spool under `state` (the capture's `XDG_STATE_HOME`).
fn spooled(state: &std::path::Path) -> Vec<std::path::PathBuf> {
    all_files(state)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wbb"))
        .collect()
}

/// Bundles sealed while the object store is down wait in a spool on this machine. A capture
/// `kill -9`ed during the outage loses none of them: after the application checkpointed its
/// WAL away meanwhile (so the WAL cannot bring them back), the next capture publishes them in
/// order before it starts its new chain, and a point-in-time restore inside the outage works.
/// A spooled file that does not continue its chain, or is damaged, is removed with a warning.
/// (Before the spool, they sat in a scratch file nobody looked at again: `restore --at` inside
/// the outage fell back to the last bundle before it.)
#[test]
fn bundles_sealed_while_the_store_is_down_survive_a_killed_capture() {
    let r = Rig::new(300);
    let mut server = S3Server::start(&r.t.mkdir("s3"), "walbundle-spool");
    let state = r.t.mkdir("state");
    let mut env = server.env();
    env.push(("XDG_STATE_HOME", s(&state).to_string()));
    let dest = format!("s3://{}/sp", server.bucket);
    let set = format!("{dest}/app");
    let log = r.t.path("capture.log");
    let args = ["capture", s(&r.db), "--dest", &dest, "--interval", "200ms"];
    let mut cap = spawn_with(&env, &args, &log);
    wait_for("the first generation in the bucket", 60, || {
        objects_under(&server, "sp/app")
            .iter()
            .any(|k| k.ends_with("manifest.json"))
    });
    r.write(&["--txns", "100", "--rate", "100"]);
    std::thread::sleep(Duration::from_secs(1));

    server.kill();
    r.write(&["--txns", "300", "--rate", "150", "--large-every", "100"]);
    let hb_path = state.join("walbundle/sets/s3/walbundle-spool/sp/app/.walbundle-capture.json");
    wait_for("every commit sealed into the spool", 60, || {
        let Ok(text) = std::fs::read_to_string(&hb_path) else {
            return false;
        };
        let hb: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        hb["txns"].as_u64() >= Some(400)
            && hb["oldest_unsealed_us"] == 0
            && hb["unpublished"].as_u64() > Some(0)
    });
    // `status` during the outage: stale, the store named, the waiting bundles counted.
    let mut status = Command::new(bin());
    status
        .args(["status", &set, "--json"])
        .envs(env.iter().cloned());
    let st = run(status);
    assert_eq!(st.code, 1, "{}{}", st.stdout, st.stderr);
    let row = &st.json()["databases"][0];
    assert!(row["unpublished"].as_u64() > Some(0), "{row}");
    assert!(
        row["problems"].to_string().contains("cannot be read"),
        "{row}"
    );
    cap.kill().unwrap(); // kill -9, the store still down
    cap.wait().unwrap();
    let waiting = spooled(&state);
    assert!(!waiting.is_empty(), "nothing waits in the spool");

    // The application checkpoints with walbundle gone: the WAL restarts, so the next capture
    // cannot continue this chain from it and must start a new one.
    r.write(&["--txns", "50", "--rate", "100"]);
    let (busy, _, _) = app_checkpoint(r.holder.as_ref().unwrap(), "TRUNCATE");
    assert_eq!(busy, 0);

    // Two files that must not be published: one that skips a sequence number, one damaged.
    let newest = waiting.iter().max().unwrap();
    let seq =
        walbundle::bundle::wbb::parse_file_name(newest.file_name().unwrap().to_str().unwrap())
            .unwrap();
    let folder = newest.parent().unwrap();
    let skips = folder.join(walbundle::bundle::wbb::file_name(seq + 5));
    std::fs::copy(newest, &skips).unwrap();
    let damaged = folder.join(walbundle::bundle::wbb::file_name(seq + 6));
    std::fs::write(&damaged, b"not a bundle").unwrap();
    // And one the set has had since before the outage (a spool file that outlived its upload):
    // removed quietly, never uploaded again.
    server.up();
    let chain = folder.file_name().unwrap().to_str().unwrap();
    let first = walbundle::bundle::wbb::file_name(1);
    let bytes = server
        .store("sp/app")
        .get(&format!("{chain}/{first}"), 1 << 30)
        .unwrap();
    std::fs::write(folder.join(&first), bytes).unwrap();

    // Store back, capture not yet: `list` and `restore` on this host say what waits here.
    let on_host = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.args(args).envs(env.iter().cloned());
        run(c)
    };
    let l = on_host(&["list", &set, "--json"]).ok().json();
    assert_eq!(
        l["spooled"].as_array().map(Vec::len),
        Some(waiting.len() + 3),
        "{l}"
    );
    let early = r.t.path("early.db");
    on_host(&["restore", &set, "--out", s(&early)])
        .ok()
        .stderr_has("still wait for the store");

    let mut cap = spawn_with(&env, &args, &log);
    wait_for("the spool published", 60, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("that an earlier capture sealed"))
    });
    r.write(&["--txns", "30", "--rate", "50"]);
    std::thread::sleep(Duration::from_secs(2));
    stop_capture(&mut cap);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("does not continue the chain"), "{text}");
    assert!(text.contains("it is damaged"), "{text}");
    assert!(!text.contains(&format!("{first}: removed")), "{text}");
    assert!(spooled(&state).is_empty(), "{:?}", spooled(&state));

    wb_s3(&server, &["verify", &set, "--deep"]).ok();
    let committed = r.committed();
    assert_eq!(committed, 480);
    let out = r.t.path("newest.db");
    wb_s3(&server, &["restore", &set, "--out", s(&out)]).ok();
    assert_eq!(check_prefix(&out), committed, "{text}");
    // Inside the outage: everything up to commit 400, nothing of the 50 written after the kill.
    let t400 = std::fs::read_to_string(&r.log)
        .unwrap()
        .lines()
        .find_map(|l| {
            let mut cols = l.split('\t');
            let (id, t) = (cols.next()?, cols.next()?);
            (id == "400").then(|| t.parse::<f64>().ok()).flatten()
        })
        .expect("commit 400 in the log");
    #[expect(clippy::cast_possible_truncation)]
    let at = jiff::Timestamp::from_microsecond(((t400 + 0.5) * 1e6) as i64)
        .unwrap()
        .to_string();
    let mid = r.t.path("mid.db");
    wb_s3(&server, &["restore", &set, "--out", s(&mid), "--at", &at]).ok();
    assert_eq!(check_prefix(&mid), 400, "restore --at {at}\n{text}");
}
