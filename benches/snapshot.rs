//! Snapshot benchmark: `walbundle snapshot` against SQLite's online backup API writing the same
//! database, in the same run, on 100 MB and 1 GB databases. Prints a table of ratios.
//!
//! `cargo bench --bench snapshot` (both sizes) or `cargo bench --bench snapshot -- 100` (MB list).
//! Each contestant runs as its own child process so its peak RSS is its own (`wait4`).
//!
//! Aims (issue: snapshot generations): snapshot excluding the integrity check no slower than the
//! backup API; stored bytes within 5% of `zstd -3` of the same file; RSS flat in database size.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

// The child is reaped by wait4 below (std's wait would not give its rusage).
#[allow(clippy::zombie_processes)]
fn wait_rusage(mut cmd: Command) -> (f64, u64, std::process::ExitStatus, String) {
    use std::os::unix::process::ExitStatusExt;
    // Each contestant starts with no dirty pages of the one before it to write back (the
    // backup API's 100 MB file otherwise slows the next contestant's fsync, and the reverse).
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let t = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut out = String::new();
    if let Some(mut so) = child.stdout {
        use std::io::Read;
        let _ = so.read_to_string(&mut out);
    }
    // SAFETY: pid is our child; pointers are valid.
    unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    (
        t.elapsed().as_secs_f64(),
        ru.ru_maxrss as u64 * 1024,
        std::process::ExitStatus::from_raw(status),
        out,
    )
}

/// Text-heavy rows (notes with JSON bodies from a 5000-word vocabulary): zstd levels differ
/// here far more than on half-random blobs.
fn make_text_db(path: &Path, mb: u64) {
    if path.exists() {
        return;
    }
    let mut c = rusqlite::Connection::open(path).expect("open");
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; CREATE TABLE notes(id INTEGER PRIMARY KEY, author TEXT, body TEXT); CREATE INDEX notes_author ON notes(author);")
        .expect("schema");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let words: Vec<String> = (0..5000)
        .map(|_| {
            (0..2 + rnd(9))
                .map(|_| char::from(b'a' + rnd(26) as u8))
                .collect()
        })
        .collect();
    let mut written = 0u64;
    while written < mb * 1024 * 1024 {
        let tx = c.transaction().expect("tx");
        for _ in 0..5000 {
            let body: Vec<&str> = (0..20 + rnd(130))
                .map(|_| words[rnd(5000) as usize].as_str())
                .collect();
            let body = format!(
                "{{\"text\": \"{}\", \"score\": {}}}",
                body.join(" "),
                rnd(1_000_000)
            );
            written += body.len() as u64 + 40;
            tx.execute(
                "INSERT INTO notes(author, body) VALUES(?1, ?2)",
                (&words[rnd(300) as usize], &body),
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
    }
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
}

fn make_db(path: &Path, mb: u64) {
    if path.exists() {
        return;
    }
    let c = rusqlite::Connection::open(path).expect("open");
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; CREATE TABLE items(id INTEGER PRIMARY KEY, k TEXT, v BLOB); CREATE INDEX items_k ON items(k);")
        .expect("schema");
    // Half random, half repetitive text per row: compresses roughly 2:1 like real app data.
    let rows = mb * 1024 * 1024 / 2200;
    let mut done = 0;
    while done < rows {
        let n = 20_000.min(rows - done);
        c.execute(
            "INSERT INTO items(k, v) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<?1)
             SELECT hex(randomblob(8)), randomblob(1000) || CAST(printf('%.1000c', 'x') AS BLOB) FROM n",
            [n as i64],
        )
        .expect("fill");
        done += n;
    }
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
}

/// `zstd -3 -T2` of the file in a child process (so the bench's own RSS, which the next
/// child's peak would inherit through fork, stays small): its size, and its time — what
/// compressing the bytes alone costs on this machine's two cores, the bound of any snapshot at
/// that ratio.
fn zstd3(me: &Path, path: &Path) -> (u64, f64) {
    let mut c = Command::new(me);
    c.args(["--zstd-child", path.to_str().unwrap()]);
    let (t, _, st, out) = wait_rusage(c);
    assert!(st.success(), "zstd child failed");
    (out.trim().parse().expect("zstd child output"), t)
}

fn zstd_child(path: &str) {
    let mut f = std::fs::File::open(path).expect("open");
    let mut enc = zstd::stream::write::Encoder::new(Counter(0), 3).expect("zstd");
    enc.multithread(2).expect("zstd threads");
    std::io::copy(&mut f, &mut enc).expect("zstd");
    println!("{}", enc.finish().expect("zstd").0);
}

struct Counter(u64);
impl std::io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn backup_child(src: &str, dst: &str) {
    let s = rusqlite::Connection::open(src).expect("open src");
    let mut d = rusqlite::Connection::open(dst).expect("open dst");
    let b = rusqlite::backup::Backup::new(&s, &mut d).expect("backup");
    b.run_to_completion(1024, std::time::Duration::ZERO, None)
        .expect("step");
    drop(b);
    d.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").ok();
    // fsync like the snapshot does, for a fair comparison.
    drop(d);
    std::fs::File::open(dst)
        .and_then(|f| f.sync_all())
        .expect("fsync");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--backup-child" {
        backup_child(&args[2], &args[3]);
        return;
    }
    if args.len() == 3 && args[1] == "--zstd-child" {
        zstd_child(&args[2]);
        return;
    }
    // Datasets: "<MB>" half-random blobs, "text<MB>" text-heavy notes.
    let mut sets: Vec<String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    if sets.is_empty() {
        sets = vec!["100".into(), "text100".into(), "1024".into()];
    }
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/walbundle");
    let st = Command::new("cargo")
        .args(["build", "--release", "-q", "--bin", "walbundle"])
        .status()
        .expect("cargo");
    assert!(st.success(), "release build failed");
    let work = std::env::temp_dir().join("walbundle-bench-snapshot");
    std::fs::create_dir_all(work.join("src")).expect("mkdir");
    let me = std::env::current_exe().expect("exe");

    println!(
        "| DB | data | backup API | zstd -3 -T2 of the file | snapshot read+compress | / backup API | / zstd -3 -T2 | snapshot total (incl. verify, full check) | stored / DB | stored / zstd -3 | RSS backup API | RSS snapshot |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for set in sets {
        let (text, mb) = match set.strip_prefix("text") {
            Some(n) => (true, n.parse::<u64>().expect("text<MB>")),
            None => (false, set.parse::<u64>().expect("<MB>")),
        };
        let db = work.join("src").join(format!("bench-{set}.db"));
        if text {
            make_text_db(&db, mb);
        } else {
            make_db(&db, mb);
        }
        let db_bytes = std::fs::metadata(&db).expect("md").len();
        let _ = std::fs::remove_dir_all(work.join("dest"));
        let dst = work.join("backup-api.db");
        let _ = std::fs::remove_file(&dst);
        let _ = std::fs::remove_file(work.join("backup-api.db-wal"));
        let mut c = Command::new(&me);
        c.args([
            "--backup-child",
            db.to_str().unwrap(),
            dst.to_str().unwrap(),
        ]);
        let (t_api, rss_api, st, _) = wait_rusage(c);
        assert!(st.success(), "backup child failed");

        let mut c = Command::new(&bin);
        c.args([
            "snapshot",
            db.to_str().unwrap(),
            "--dest",
            work.join("dest").to_str().unwrap(),
            "--json",
        ]);
        let (t_snap, rss_snap, st, out) = wait_rusage(c);
        assert!(st.success(), "snapshot failed: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let read_s = v["snapshot"]["read_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        let stored = v["snapshot"]["manifest"]["image"]["size"]
            .as_u64()
            .unwrap_or(0);
        let (z3, t_z3) = zstd3(&me, &db);
        println!(
            "| {:.0} MB | {} | {t_api:.2} s | {t_z3:.2} s | {read_s:.2} s | {:.2}x | {:.2}x | {t_snap:.2} s | {:.3} | {:.3} | {:.0} MB | {:.0} MB |",
            db_bytes as f64 / 1e6,
            if text { "text/JSON" } else { "half random" },
            read_s / t_api,
            read_s / t_z3,
            stored as f64 / db_bytes as f64,
            stored as f64 / z3 as f64,
            rss_api as f64 / 1e6,
            rss_snap as f64 / 1e6,
        );
        let _ = std::fs::remove_file(&dst);
    }
}
