//! The torture suite: seeded, reproducible attacks on every layer, checked against the writers'
//! own record of what they committed. "Nothing committed is ever lost or silently skipped."
//!
//! `cargo test` runs a bounded version (one short run per scenario). A long run:
//!
//!     WALBUNDLE_TORTURE=long cargo test --release --test tests torture -- --nocapture
//!
//! (`WALBUNDLE_TORTURE=N` for N runs of each scenario; `WALBUNDLE_TORTURE_SEED=S` to replay a
//! seed). It prints a table — scenarios × runs, faults injected, restores checked, failures and
//! the seed of every failure — and writes it to `target/torture-report.md`.
//!
//! Scenarios:
//! - `source-chaos`: three writer processes at once, with large spilling transactions,
//!   rollbacks, savepoint rollbacks, their own PASSIVE/FULL/RESTART/TRUNCATE checkpoints at
//!   random moments, `journal_size_limit`, VACUUM and reconnects, under one capture; then one
//!   huge spilling transaction, a writer with no busy timeout at all (any `database is locked`
//!   fails the run), and the application's FULL/RESTART/TRUNCATE checkpoints with a 5 s busy
//!   timeout beside a committing writer (each must complete).
//! - `capture-kill`: capture killed with `kill -9` at random moments and restarted, and stopped
//!   for long stretches while the application checkpoints with TRUNCATE, reconnects (its WAL
//!   deleted when the last connection closes) and keeps writing.
//! - `compact-kill`: compaction killed at random named points and random moments beside a
//!   running capture, with aggressive retention.
//! - `power-loss`: a `synchronous=NORMAL` source loses its un-synced WAL tail (everything is
//!   killed, the WAL is cut at a random point, the wal-index removed), then the application and
//!   capture carry on from what survived.
//! - `dest-faults`: the destination fails creations, fsyncs and renames at random
//!   (`WALBUNDLE_FAULTS`), and simulated power cuts throw away everything not yet fsynced
//!   (`WALBUNDLE_FAULT_LOG`); capture is restarted after each, as a supervisor would.
//! - `full-disk`: a genuinely full file system (a small tmpfs; needs root — otherwise the row
//!   says SKIPPED and why), then room again.
//! - `hostile-sets`: a generator mutates a valid set (bit flips, truncations, swapped,
//!   duplicated and missing files, a file from another set, crafted headers with valid CRC and
//!   digest); `verify` and `restore` must refuse each precisely or restore correct data, and
//!   never panic, hang or exceed a memory limit.
//!
//! The oracle after every scenario: `verify --deep` is clean; sampled points (every chain's
//! bundle boundaries and transactions inside bundles) restore to databases that pass
//! `integrity_check` and hold a contiguous prefix of the committed transactions, growing with
//! the point; the newest holds every committed transaction; and it is byte-identical to the
//! source after a full checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::rig::{Rig, stop_capture as sigterm};
use crate::support::*;

/// SplitMix64: a tiny seeded generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

#[derive(Clone, Copy)]
struct Scale {
    runs: usize,
    /// Seconds of writing per phase.
    secs: f64,
}

fn scale() -> Scale {
    match std::env::var("WALBUNDLE_TORTURE").as_deref() {
        Ok("long") => Scale {
            runs: 3,
            secs: 12.0,
        },
        Ok(n) if n.parse::<usize>().is_ok() => Scale {
            runs: n.parse().unwrap(),
            secs: 6.0,
        },
        _ => Scale { runs: 1, secs: 2.0 },
    }
}

#[derive(Default)]
struct Tally {
    faults: u64,
    restores: u64,
    note: String,
}

fn kill9(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

fn wait_all(ws: Vec<Child>) {
    for mut w in ws {
        assert!(w.wait().unwrap().success(), "a writer failed");
    }
}

/// The oracle (see the module docs). `expected`: how many transactions the newest point must
/// hold. Returns the number of restores checked.
fn oracle(rig: &Rig, rng: &mut Rng, expected: u64) -> u64 {
    rig.verify_deep("quick");
    let (bundles, ranges) = rig.listing();
    // (chain, txn): the prefix grows within a chain; across chains it can shrink when the
    // source itself went back (power loss), so the check restarts at each chain.
    let mut points = Vec::new();
    for (ci, f, e) in bundles {
        points.push((ci, e));
        points.push((ci, f + rng.below(e - f + 1)));
    }
    // Only restorable points (bundles before a retired stretch are not).
    points.retain(|&(_, t)| ranges.iter().any(|&(lo, hi)| lo <= t && t <= hi));
    points.sort_unstable();
    points.dedup();
    // Keep the sample bounded: the first, the last and a seeded choice in between.
    while points.len() > 14 {
        let i = 1 + rng.below(points.len() as u64 - 2) as usize;
        points.remove(i);
    }
    rig.check_restores(&points, expected)
}

fn secs(s: f64) -> String {
    format!("{s:.2}")
}

// ---------------------------------------------------------------------------------------------

fn source_chaos(seed: u64, sc: Scale, t: &mut Tally) {
    let mut rng = Rng(seed);
    let mut rig = Rig::new(400);
    let mut cap = rig.spawn_capture(&[], &[]);
    rig.wait_first_generation();
    let mode = rng
        .pick(&["PASSIVE", "FULL", "RESTART", "TRUNCATE"])
        .to_string();
    let d = secs(sc.secs);
    let w1 = rig.spawn_writer(&[
        "--duration".into(),
        d.clone(),
        "--rate".into(),
        "120".into(),
        "--seed".into(),
        rng.next().to_string(),
        "--large-every".into(),
        (20 + rng.below(40)).to_string(),
        "--large-rows".into(),
        "600".into(),
        "--cache-size".into(),
        "20".into(),
        "--rollback-every".into(),
        (3 + rng.below(9)).to_string(),
        "--savepoint-every".into(),
        (3 + rng.below(9)).to_string(),
    ]);
    let w2 = rig.spawn_writer(&[
        "--duration".into(),
        d.clone(),
        "--rate".into(),
        "150".into(),
        "--seed".into(),
        rng.next().to_string(),
        "--checkpoint-every".into(),
        (5 + rng.below(40)).to_string(),
        "--checkpoint-mode".into(),
        mode.clone(),
        "--journal-size-limit".into(),
        rng.pick(&["0", "65536", "-1"]).to_string(),
        "--autocheckpoint".into(),
        rng.pick(&["0", "100", "1000"]).to_string(),
    ]);
    let w3 = rig.spawn_writer(&[
        "--duration".into(),
        d,
        "--rate".into(),
        "100".into(),
        "--seed".into(),
        rng.next().to_string(),
        "--vacuum-every".into(),
        (60 + rng.below(100)).to_string(),
        "--reconnect-every".into(),
        (10 + rng.below(30)).to_string(),
    ]);
    wait_all(vec![w1, w2, w3]);
    // One huge transaction (tens of MB, spilling to the WAL long before its commit): captured
    // in flat memory, restored like any other.
    let huge = rig.spawn_writer(&[
        "--txns".into(),
        "1".into(),
        "--large-every".into(),
        "1".into(),
        "--large-rows".into(),
        (8000 + rng.below(8000)).to_string(),
        "--cache-size".into(),
        "50".into(),
        "--seed".into(),
        rng.next().to_string(),
    ]);
    wait_all(vec![huge]);
    // The application with no busy timeout at all (alone: two such writers would lock each
    // other out): any `database is locked` makes it exit non-zero, failing the run.
    let w4 = rig.spawn_writer(&[
        "--duration".into(),
        secs(sc.secs / 2.0),
        "--rate".into(),
        "300".into(),
        "--seed".into(),
        rng.next().to_string(),
        "--busy-timeout-ms".into(),
        "0".into(),
        "--fail-on-locked".into(),
        "--vacuum-every".into(),
        (80 + rng.below(80)).to_string(),
        "--ddl-every".into(),
        (50 + rng.below(50)).to_string(),
        "--large-every".into(),
        (20 + rng.below(20)).to_string(),
    ]);
    wait_all(vec![w4]);
    // Its blocking checkpoints, with an ordinary busy timeout, beside a committing writer.
    let w5 = rig.spawn_writer(&[
        "--duration".into(),
        secs(sc.secs / 2.0 + 1.0),
        "--rate".into(),
        "200".into(),
        "--seed".into(),
        rng.next().to_string(),
        "--busy-timeout-ms".into(),
        "5000".into(),
    ]);
    let ck = rusqlite::Connection::open(&rig.db).unwrap();
    ck.busy_timeout(Duration::from_secs(5)).unwrap();
    for _ in 0..3 {
        std::thread::sleep(rng.ms(100, 600));
        let mode = *rng.pick(&["FULL", "RESTART", "TRUNCATE"]);
        let (busy, took, _) = crate::support::app_checkpoint(&ck, mode);
        assert_eq!(
            busy, 0,
            "the application's {mode} checkpoint beside capture was refused after {took:?}"
        );
    }
    drop(ck);
    wait_all(vec![w5]);
    std::thread::sleep(Duration::from_millis(600));
    sigterm(&mut cap);
    t.faults += 7;
    t.note = format!(
        "3 writers, app checkpoints {mode}; a no-busy-timeout writer; 3 blocking checkpoints"
    );
    t.restores += oracle(&rig, &mut rng, rig.committed());
}

fn capture_kill(seed: u64, sc: Scale, t: &mut Tally) {
    let mut rng = Rng(seed);
    let mut rig = Rig::new(400);
    let mut cap = rig.spawn_capture(&[], &[]);
    rig.wait_first_generation();
    let mut w = rig.spawn_writer(&[
        "--duration".into(),
        secs(sc.secs * 2.0),
        "--rate".into(),
        "200".into(),
        "--seed".into(),
        rng.next().to_string(),
        "--rollback-every".into(),
        "11".into(),
        "--checkpoint-every".into(),
        "40".into(),
        "--checkpoint-mode".into(),
        "TRUNCATE".into(),
    ]);
    let until = Instant::now() + Duration::from_secs_f64(sc.secs * 2.0);
    let mut kills = 0;
    while Instant::now() < until {
        std::thread::sleep(rng.ms(150, 700));
        kill9(&mut cap);
        kills += 1;
        cap = rig.spawn_capture(&[], &[]);
    }
    assert!(w.wait().unwrap().success());
    // A long stop: the application keeps writing, checkpoints with TRUNCATE and closes every
    // connection (the WAL is deleted) many times while no capture runs.
    kill9(&mut cap);
    rig.holder = None;
    let mut w = rig.spawn_writer(&[
        "--duration".into(),
        secs(sc.secs),
        "--rate".into(),
        "150".into(),
        "--seed".into(),
        rng.next().to_string(),
        "--checkpoint-every".into(),
        "15".into(),
        "--checkpoint-mode".into(),
        "TRUNCATE".into(),
        "--reconnect-every".into(),
        "25".into(),
    ]);
    assert!(w.wait().unwrap().success());
    rig.hold();
    let mut cap = rig.spawn_capture(&[], &[]);
    std::thread::sleep(Duration::from_millis(400));
    let mut w = rig.spawn_writer(&[
        "--txns".into(),
        "100".into(),
        "--rate".into(),
        "200".into(),
        "--seed".into(),
        rng.next().to_string(),
    ]);
    assert!(w.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(600));
    sigterm(&mut cap);
    assert!(
        rig.capture_log().contains("new chain"),
        "no new chain after the long stop"
    );
    t.faults += kills + 1;
    t.note = format!("{kills} kill -9, 1 long stop");
    t.restores += oracle(&rig, &mut rng, rig.committed());
}

fn compact_kill(seed: u64, sc: Scale, t: &mut Tally) {
    let mut rng = Rng(seed);
    let mut rig = Rig::new(2000);
    let mut cap = rig.spawn_capture(&[], &[]);
    rig.wait_first_generation();
    let mut w = rig.spawn_writer(&[
        "--duration".into(),
        secs(sc.secs * 2.0),
        "--rate".into(),
        "250".into(),
        "--seed".into(),
        rng.next().to_string(),
        "--rows-per-txn".into(),
        "6".into(),
    ]);
    let points = [
        "compact:replayed",
        "compact:staged",
        "compact:published",
        "retire:renamed",
        "retire:bundle",
        "",
    ];
    let until = Instant::now() + Duration::from_secs_f64(sc.secs * 2.0);
    let pause = rig.t.path("paused");
    let mut kills = 0;
    while Instant::now() < until {
        let point = *rng.pick(&points);
        let mut c = spawn_compact_paused(&rig.set(), point, &pause);
        wait_for_pause(&mut c, &pause, rng.ms(50, 900));
        kill9(&mut c);
        kills += 1;
        let v = wb(["verify", s(&rig.set())]);
        assert_eq!(
            v.code, 0,
            "set does not verify after compaction was killed (point {point:?}): {}",
            v.stderr
        );
        std::thread::sleep(rng.ms(100, 400));
    }
    assert!(w.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(600));
    sigterm(&mut cap);
    wb(["compact", s(&rig.set()), "--force", "--check", "quick"]).ok();
    t.faults += kills;
    t.note = format!("{kills} kill -9 of compact");
    t.restores += oracle(&rig, &mut rng, rig.committed());
}

/// Frame boundaries of a WAL file (offset just after each frame).
#[allow(clippy::big_endian_bytes)] // SQLite's WAL header is big-endian
fn wal_frame_ends(wal: &Path) -> Vec<u64> {
    let len = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
    let b = std::fs::read(wal).unwrap_or_default();
    if b.len() < 32 {
        return Vec::new();
    }
    let ps = u64::from(u32::from_be_bytes([b[8], b[9], b[10], b[11]]));
    let frame = 24 + ps;
    (1..)
        .map(|i| 32 + i * frame)
        .take_while(|&e| e <= len)
        .collect()
}

fn power_loss(seed: u64, sc: Scale, t: &mut Tally) {
    let mut rng = Rng(seed);
    let mut rig = Rig::new(400);
    rig.holder = None; // everything dies in a power cut
    let mut cap = rig.spawn_capture(&[], &[]);
    rig.wait_first_generation();
    // No rollbacks here: SQLite 3.40's recovery can stop at a frame it left with a zeroed
    // header after a rollback (see capture.rs) and would then lose more than the power cut.
    let mut w = rig.spawn_writer(&[
        "--duration".into(),
        secs(sc.secs),
        "--rate".into(),
        "200".into(),
        "--seed".into(),
        rng.next().to_string(),
        "--synchronous".into(),
        "NORMAL".into(),
        "--autocheckpoint".into(),
        "0".into(),
    ]);
    std::thread::sleep(Duration::from_secs_f64(sc.secs * 0.7));
    // The power cut: every process dies, and the WAL loses a random un-synced tail.
    kill9(&mut w);
    kill9(&mut cap);
    let wal = PathBuf::from(format!("{}-wal", rig.db.display()));
    let ends = wal_frame_ends(&wal);
    let cut = if ends.len() > 2 {
        let keep = ends.len() as u64 / 2 + rng.below(ends.len() as u64 / 2);
        ends[keep as usize] - rng.below(2) * 17 // sometimes mid-frame
    } else {
        32
    };
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(cut).unwrap();
    drop(f);
    let _ = std::fs::remove_file(format!("{}-shm", rig.db.display()));
    // The machine comes back: the application reopens (recovery) and carries on; capture too.
    rig.hold();
    let before: u64 = rig
        .holder
        .as_ref()
        .unwrap()
        .query_row("SELECT count(*) FROM txlog", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    let mut cap = rig.spawn_capture(&[], &[]);
    std::thread::sleep(Duration::from_millis(500));
    let log2 = rig.t.path("after.tsv");
    let st = writer(&[
        "--db",
        s(&rig.db),
        "--log",
        s(&log2),
        "--txns",
        "150",
        "--rate",
        "200",
    ])
    .status()
    .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(600));
    sigterm(&mut cap);
    t.faults += 1;
    t.note = format!("WAL cut to {cut} B; {before} txns survived");
    // After the cut the source holds `before` transactions, then the new ones.
    rig.logs = vec![log2];
    t.restores += oracle(&rig, &mut rng, before + rig.committed());
}

/// Simulate a power cut at the destination from the durability journal: undo every creation or
/// rename whose folder was not fsynced after it (newest first), then cut every file back to its
/// last fsynced length. (Deletions are not undone: the journal cannot bring contents back.)
fn power_cut(journal: &Path) -> usize {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    let ops: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let synced_after = |i: usize, dir: &Path| {
        ops[i + 1..]
            .iter()
            .any(|o| o[0] == "dirsync" && Path::new(o[1]) == dir)
    };
    let mut undone = 0;
    for i in (0..ops.len()).rev() {
        let o = &ops[i];
        match o[0] {
            "rename" if o.len() == 3 => {
                let (from, to) = (Path::new(o[1]), Path::new(o[2]));
                if !synced_after(i, to.parent().unwrap()) && to.exists() && !from.exists() {
                    std::fs::rename(to, from).unwrap();
                    undone += 1;
                }
            }
            "create" if o.len() == 2 => {
                let p = Path::new(o[1]);
                if !synced_after(i, p.parent().unwrap()) && p.exists() {
                    if p.is_dir() {
                        std::fs::remove_dir_all(p).unwrap();
                    } else {
                        std::fs::remove_file(p).unwrap();
                    }
                    undone += 1;
                }
            }
            _ => {}
        }
    }
    let mut synced: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for o in &ops {
        if o[0] == "sync" && o.len() == 3 {
            synced.insert(o[1], o[2].parse().unwrap_or(0));
        }
    }
    for (p, len) in synced {
        if let Ok(m) = std::fs::metadata(p)
            && m.len() > len
        {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(len)
                .unwrap();
            undone += 1;
        }
    }
    std::fs::remove_file(journal).unwrap();
    undone
}

fn dest_faults(seed: u64, sc: Scale, t: &mut Tally) {
    let mut rng = Rng(seed);
    let mut rig = Rig::new(400);
    let mut w = rig.spawn_writer(&[
        "--duration".into(),
        secs(sc.secs * 3.0),
        "--rate".into(),
        "150".into(),
        "--seed".into(),
        rng.next().to_string(),
        "--checkpoint-every".into(),
        "60".into(),
        "--checkpoint-mode".into(),
        "PASSIVE".into(),
    ]);
    let journal = rig.t.path("durability.journal");
    let until = Instant::now() + Duration::from_secs_f64(sc.secs * 3.0);
    let (mut injected, mut cuts) = (0u64, 0u64);
    while Instant::now() < until {
        let env = [
            (
                "WALBUNDLE_FAULTS",
                format!("{}:{}", rng.next(), 20 + rng.below(40)),
            ),
            ("WALBUNDLE_FAULT_LOG", s(&journal).to_string()),
        ];
        let mut cap = rig.spawn_capture(&[], &env);
        let deadline = Instant::now() + rng.ms(300, 1500);
        let mut exited = None;
        while Instant::now() < deadline {
            if let Some(st) = cap.try_wait().unwrap() {
                exited = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match exited {
            Some(st) => {
                // A failure must be reported, never swallowed.
                assert_eq!(st.code(), Some(2), "capture exited {st:?}");
                let log = rig.capture_log();
                assert!(
                    log.lines()
                        .last()
                        .is_some_and(|l| l.contains("injected fault")),
                    "the failure was not reported: {log}"
                );
                injected += 1;
            }
            None => {
                kill9(&mut cap);
                let n = power_cut(&journal);
                cuts += 1;
                let _ = n;
            }
        }
        let _ = std::fs::remove_file(&journal);
        // (A set whose very first snapshot failed holds no chain yet: nothing to verify.)
        if rig.set().join("walbundle-set.json").exists() && !generation_dirs(&rig.set()).is_empty()
        {
            let v = wb(["verify", s(&rig.set())]);
            assert_eq!(
                v.code,
                0,
                "set does not verify after a destination fault: {}\n{}",
                v.stderr,
                rig.capture_log()
            );
        }
    }
    assert!(w.wait().unwrap().success());
    let mut cap = rig.spawn_capture(&[], &[]);
    std::thread::sleep(Duration::from_millis(800));
    sigterm(&mut cap);
    t.faults += injected + cuts;
    t.note = format!("{injected} injected I/O errors, {cuts} power cuts");
    t.restores += oracle(&rig, &mut rng, rig.committed());
}

fn full_disk(seed: u64, _sc: Scale, t: &mut Tally) {
    let mut rng = Rng(seed);
    let mut rig = Rig::new(3000);
    let mnt = rig.t.mkdir("small");
    let mount = |size: &str, remount: bool| {
        Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("{}size={size}", if remount { "remount," } else { "" }),
                "tmpfs",
                s(&mnt),
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|st| st.success())
    };
    if !is_root() || !mount("3m", false) {
        t.note = "SKIPPED: mounting a tmpfs needs root".into();
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    rig.dest = mnt.clone();
    let mut cap = rig.spawn_capture(&[], &[]);
    rig.wait_first_generation();
    let mut w = rig.spawn_writer(&[
        "--txns".into(),
        "3000".into(),
        "--rate".into(),
        "400".into(),
        "--seed".into(),
        rng.next().to_string(),
        "--min-blob".into(),
        "3000".into(),
        "--max-blob".into(),
        "6000".into(),
    ]);
    // Capture fills the disk, reports it, and exits 2.
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = cap.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the disk never filled"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(2), "capture on a full disk: {st:?}");
    let log = rig.capture_log();
    assert!(
        log.contains("No space left") || log.contains("space"),
        "{log}"
    );
    let v = wb(["verify", s(&rig.set())]);
    assert_eq!(
        v.code, 0,
        "set does not verify after the disk filled: {}",
        v.stderr
    );
    // Room again: capture carries on (resuming, or a new chain with the reason).
    assert!(mount("256m", true), "could not grow the tmpfs");
    let mut cap = rig.spawn_capture(&[], &[]);
    assert!(w.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(800));
    sigterm(&mut cap);
    t.faults += 1;
    t.note = "a 3 MiB tmpfs filled, then grown".into();
    t.restores += oracle(&rig, &mut rng, rig.committed());
}

/// Rewrite bundle `p`'s header with `f`, then recompute its CRC and the trailer's digest, so
/// only the field checks can catch it.
fn craft_header(p: &Path, f: impl FnOnce(&mut [u8])) {
    use sha2::{Digest, Sha256};
    let mut b = std::fs::read(p).unwrap();
    f(&mut b[..208]);
    let crc = crc32fast::hash(&b[..200]);
    b[200..204].copy_from_slice(&crc.to_le_bytes());
    let end = b.len() - 48;
    let digest = Sha256::digest(&b[..end]);
    b[end + 16..].copy_from_slice(&digest);
    std::fs::write(p, b).unwrap();
}

fn tree_digest(dir: &Path) -> Vec<(PathBuf, String)> {
    all_files(dir)
        .into_iter()
        .map(|p| {
            let h = sha_file(&p);
            (p, h)
        })
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let q = to.join(e.file_name());
        if p.is_dir() {
            copy_tree(&p, &q);
        } else {
            std::fs::copy(&p, &q).unwrap();
        }
    }
}

fn hostile_sets(seed: u64, sc: Scale, t: &mut Tally) {
    let mut rng = Rng(seed);
    // Two captured sets: the victim (compacted once, so it has two generations) and a donor.
    let mut rig = Rig::new(300);
    let mut cap = rig.spawn_capture(&[], &[]);
    rig.wait_first_generation();
    let mut w = rig.spawn_writer(&[
        "--txns".into(),
        "300".into(),
        "--rate".into(),
        "300".into(),
        "--seed".into(),
        rng.next().to_string(),
    ]);
    assert!(w.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&mut cap);
    wb(["compact", s(&rig.set()), "--force", "--check", "quick"]).ok();
    let mut donor = Rig::new(100);
    let mut dc = donor.spawn_capture(&[], &[]);
    donor.wait_first_generation();
    let mut w = donor.spawn_writer(&["--txns".into(), "60".into(), "--rate".into(), "300".into()]);
    assert!(w.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&mut dc);
    let good = rig.t.path("good.db");
    wb(["restore", s(&rig.set()), "--out", s(&good)]).ok();
    let good_sha = sha_file(&good);
    let files: Vec<PathBuf> = all_files(&rig.set())
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            !n.starts_with(".walbundle")
        })
        .collect();
    let bundles: Vec<PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wbb"))
        .cloned()
        .collect();
    let donor_files: Vec<PathBuf> = all_files(&donor.set())
        .into_iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "wbb" || e == "zst" || e == "json")
        })
        .collect();
    let cases = if sc.runs > 1 { 60 } else { 24 };
    let mut refused = 0;
    for case in 0..cases {
        let work = rig.t.path(&format!("case-{case}"));
        copy_tree(&rig.set(), &work);
        let map = |p: &Path| work.join(p.strip_prefix(rig.set()).unwrap());
        let kind = rng.below(8);
        let victim = map(rng.pick(files.as_slice()).as_path());
        let before = tree_digest(&work);
        let desc = match kind {
            0 => {
                let len = std::fs::metadata(&victim).unwrap().len();
                let at = rng.below(len);
                let mut b = std::fs::read(&victim).unwrap();
                b[at as usize] ^= 1 << rng.below(8);
                std::fs::write(&victim, b).unwrap();
                format!("bit flip at {at} in {}", victim.display())
            }
            1 => {
                let len = std::fs::metadata(&victim).unwrap().len();
                let to = rng.below(len);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&victim)
                    .unwrap()
                    .set_len(to)
                    .unwrap();
                format!("truncated {} to {to}", victim.display())
            }
            2 if bundles.len() >= 2 => {
                let a = map(&bundles[rng.below(bundles.len() as u64) as usize]);
                let b = map(&bundles[rng.below(bundles.len() as u64) as usize]);
                let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
                std::fs::write(&a, &y).unwrap();
                std::fs::write(&b, &x).unwrap();
                format!("swapped {} and {}", a.display(), b.display())
            }
            3 if bundles.len() >= 2 => {
                let i = rng.below(bundles.len() as u64 - 1) as usize;
                let (a, b) = (map(&bundles[i]), map(&bundles[i + 1]));
                std::fs::copy(&a, &b).unwrap();
                format!("duplicated {} over {}", a.display(), b.display())
            }
            4 => {
                std::fs::remove_file(&victim).unwrap();
                format!("removed {}", victim.display())
            }
            5 => {
                let d = rng.pick(&donor_files).clone();
                let same = files
                    .iter()
                    .map(|p| map(p))
                    .find(|p| p.file_name() == d.file_name())
                    .unwrap_or_else(|| victim.clone());
                std::fs::copy(&d, &same).unwrap();
                format!(
                    "{} replaced by the other set's {}",
                    same.display(),
                    d.display()
                )
            }
            _ if !bundles.is_empty() => {
                let b = map(rng.pick(bundles.as_slice()).as_path());
                // A header field (offset, 8 bytes) set to a hostile value with valid CRC/digest.
                let field = *rng.pick(&[64usize, 128, 132, 136, 140, 144, 152, 160, 184, 192]);
                let val = *rng.pick(&[0u64, 1, u64::from(u32::MAX), 1 << 31, 1 << 40, u64::MAX]);
                craft_header(&b, |h| {
                    let n = if [128, 132, 136, 140].contains(&field) {
                        4
                    } else {
                        8
                    };
                    h[field..field + n].copy_from_slice(&val.to_le_bytes()[..n]);
                });
                format!("crafted header field at {field} = {val} in {}", b.display())
            }
            _ => continue,
        };
        if tree_digest(&work) == before {
            let _ = std::fs::remove_dir_all(&work);
            continue; // the mutation changed nothing (e.g. a field set to its own value)
        }
        // verify: must notice (exit 1), bounded in time and memory, never a panic.
        let guarded = |args: &[&str]| {
            let mut c = Command::new("prlimit");
            c.args(["--as=4294967296", "--", "timeout", "120", bin()])
                .args(args);
            run(c)
        };
        let v = guarded(&["verify", s(&work)]);
        assert!(
            v.code == 1 || v.code == 0,
            "verify exited {} on: {desc}\n{}",
            v.code,
            v.stderr
        );
        let out = rig.t.path(&format!("case-{case}.db"));
        let r = guarded(&["restore", s(&work), "--out", s(&out)]);
        match r.code {
            0 => {
                // Only a mutation off the newest point's path (an old generation or bundle
                // that the newest generation supersedes) may leave the newest restorable.
                assert_eq!(
                    sha_file(&out),
                    good_sha,
                    "restore succeeded with wrong data after: {desc}"
                );
                t.restores += 1;
            }
            2 => {
                assert!(!out.exists(), "a refused restore left {}", out.display());
                assert!(
                    r.stderr.contains(s(&work)),
                    "the refusal does not name a file of the set: {}\n{desc}",
                    r.stderr
                );
                refused += 1;
            }
            c => panic!("restore exited {c} on: {desc}\n{}", r.stderr),
        }
        if v.code == 0 {
            // A mutation verify cannot see must be one that changes nothing verified: none.
            panic!("verify found nothing after: {desc}");
        }
        t.faults += 1;
        let _ = std::fs::remove_dir_all(&work);
    }
    t.note = format!("{refused} refused restores, rest restored the right data");
}

// ---------------------------------------------------------------------------------------------

type Scenario = fn(u64, Scale, &mut Tally);

#[test]
fn torture() {
    let sc = scale();
    let base: u64 = std::env::var("WALBUNDLE_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_121);
    let scenarios: [(&str, Scenario); 7] = [
        ("source-chaos", source_chaos),
        ("capture-kill", capture_kill),
        ("compact-kill", compact_kill),
        ("power-loss", power_loss),
        ("dest-faults", dest_faults),
        ("full-disk", full_disk),
        ("hostile-sets", hostile_sets),
    ];
    let only = std::env::var("WALBUNDLE_TORTURE_ONLY").ok();
    let mut table = String::from(
        "| scenario | runs | faults injected | restores checked | failures | seeds of failures | notes |\n|---|---|---|---|---|---|---|\n",
    );
    let mut failed = Vec::new();
    let t0 = Instant::now();
    for (name, f) in scenarios {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|x| x == name))
        {
            continue;
        }
        let mut total = Tally::default();
        let mut bad = Vec::new();
        for run in 0..sc.runs {
            let seed = base
                .wrapping_mul(1_000_003)
                .wrapping_add(run as u64 * 7919 + name.len() as u64);
            let mut tally = Tally::default();
            let res =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(seed, sc, &mut tally)));
            total.faults += tally.faults;
            total.restores += tally.restores;
            total.note = tally.note;
            if let Err(e) = res {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_default();
                eprintln!("torture {name} seed {seed} FAILED: {msg}");
                bad.push(seed);
                failed.push((name, seed, msg));
            }
        }
        table.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            sc.runs,
            total.faults,
            total.restores,
            bad.len(),
            bad.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            total.note
        ));
    }
    let report = format!(
        "walbundle torture run: {} run(s) per scenario, {:.0} s of writing per phase, base seed {base}, {:.0} s in all\n\n{table}\n\
         Replay a failure: WALBUNDLE_TORTURE_SEED={base} WALBUNDLE_TORTURE_ONLY=<scenario> cargo test --test tests torture -- --nocapture\n",
        sc.runs,
        sc.secs,
        t0.elapsed().as_secs_f64()
    );
    eprintln!("\n{report}");
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let _ = std::fs::create_dir_all(&target);
    let _ = std::fs::write(target.join("torture-report.md"), &report);
    assert!(
        failed.is_empty(),
        "{} torture failure(s): {failed:?}",
        failed.len()
    );
}
