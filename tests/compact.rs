//! Compaction: new generations equal to the replayed history at every shared point, retention
//! that keeps every point of the window, crash safety under `kill -9` in a loop, and compaction
//! beside a running capture of a live writer.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use walbundle::compact::{CompactOptions, CompactPolicy, CompactReport, compact};
use walbundle::replay::{RestoreOptions, Target, plan, restore};
use walbundle::verify::{VerifyOptions, verify};
use walbundle::{BackupSet, CheckLevel, NoProgress};

use crate::support::synth::{Synth, Txn};
use crate::support::*;

/// Synthetic time of transaction `n` (see support/synth.rs): 2026-01-01 plus n seconds.
fn txn_time(n: u64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_767_225_600 + n as i64).unwrap()
}

fn run_compact(set: &Path, policy: CompactPolicy, now: jiff::Timestamp) -> CompactReport {
    let mut s = BackupSet::open(set).unwrap();
    let opts = CompactOptions {
        policy,
        check: CheckLevel::None, // synthetic pages are not a SQLite database
        now: Some(now),
        ..CompactOptions::default()
    };
    compact(&mut s, &opts, &NoProgress).unwrap()
}

fn restore_txn(set: &Path, n: u64, out: &Path) -> walbundle::Result<Vec<u8>> {
    let s = BackupSet::open(set).unwrap();
    let p = plan(&s, &Target::Txn(n))?;
    restore(
        &p,
        &RestoreOptions {
            out: out.to_path_buf(),
            force: false,
            check: CheckLevel::None,
        },
        &NoProgress,
    )?;
    let b = std::fs::read(out).unwrap();
    std::fs::remove_file(out).unwrap();
    Ok(b)
}

fn verify_clean(set: &Path) {
    let s = BackupSet::open(set).unwrap();
    let r = verify(
        &s,
        &VerifyOptions {
            deep: true,
            check: CheckLevel::None,
            scratch_dir: None,
        },
        &NoProgress,
    )
    .unwrap();
    assert!(r.is_clean(), "{:#?}", r.problems);
}

/// Some growth, rewrites and truncation: a deterministic workload for `m`.
fn workload(m: &mut Synth, bundles: u32, salt: u8) {
    for b in 0..bundles {
        let txns: Vec<Txn> = (0..3u32)
            .map(|i| {
                let count = 4 + ((b * 3 + i + u32::from(salt)) % 9);
                Txn {
                    writes: (1..=count)
                        .filter(|p| (p + b + i) % 3 != 0)
                        .map(|p| (p, salt.wrapping_add((p * 7 + b + i) as u8)))
                        .collect(),
                    count_after: count,
                }
            })
            .collect();
        m.bundle(&txns);
    }
}

fn force(retain_days: u64, keep: usize) -> CompactPolicy {
    CompactPolicy {
        force: true,
        retain_days,
        keep_generations: keep,
        min_window_secs: 1,
        ..CompactPolicy::default()
    }
}

/// A compacted generation gives the same result as the old one at every shared point, later
/// bundles chain from it, and a second compaction builds on the first.
#[test]
fn compacted_generations_equal_the_model_at_every_point() {
    let t = Tmp::new();
    let set = t.path("set");
    let mut m = Synth::new(&set, 5);
    workload(&mut m, 6, 1);
    // Keep everything (window of 10 years): only the new generation appears.
    let r = run_compact(&set, force(3650, 2), txn_time(m.txn));
    let g = r.created.expect("a generation");
    assert_eq!((g.seq, g.txn, g.from_seq), (6, m.txn, 0));
    assert!(r.retired.is_empty(), "{:?}", r.retired);
    verify_clean(&set);
    workload(&mut m, 4, 9);
    let r = run_compact(&set, force(3650, 3), txn_time(m.txn));
    let g = r.created.expect("a second generation");
    assert_eq!((g.seq, g.from_seq), (10, 6));
    verify_clean(&set);
    workload(&mut m, 2, 17);
    verify_clean(&set);
    let out = t.path("out.db");
    for (n, image) in &m.images {
        let got = restore_txn(&set, *n, &out).unwrap();
        assert!(got == *image, "txn {n} differs from the model");
    }
    // Nothing more to do: no bundles after generation 12? (12 bundles, newest gen at 10.)
    let r = run_compact(&set, force(3650, 3), txn_time(m.txn));
    assert_eq!(r.created.map(|g| g.seq), Some(12));
    let r = run_compact(&set, force(3650, 3), txn_time(m.txn));
    assert!(r.created.is_none(), "compacted twice at the same bundle");
    assert!(r.skipped.unwrap().contains("already compacted"));
}

/// Retention keeps every point inside the window restorable, retires what lies wholly before
/// it (old generations first, then the bundles they supersede), and keeps N generations.
#[test]
fn retention_keeps_every_point_of_the_window() {
    let t = Tmp::new();
    let set = t.path("set");
    let mut m = Synth::new(&set, 3);
    let mut gens = Vec::new();
    for round in 0..4u8 {
        workload(&mut m, 3, round * 5);
        let r = run_compact(&set, force(3650, 10), txn_time(m.txn));
        gens.push(r.created.unwrap());
    }
    workload(&mut m, 2, 99);
    // Window: from just after generation 2's state (its txn + 1) to the end.
    let cutoff_txn = gens[1].txn + 1;
    let now = txn_time(m.txn);
    let window = now.as_second() - txn_time(cutoff_txn).as_second();
    let policy = CompactPolicy {
        force: false,
        trigger_bytes_pct: u64::MAX / 200,
        retain_days: 0,
        keep_generations: 1,
        min_window_secs: window,
        ..CompactPolicy::default()
    };
    let r = run_compact(&set, policy, now);
    assert!(r.created.is_none());
    // Generation 0 and the first compacted one are retired; the one that reaches the cutoff
    // (gens[1]) is the new base; bundles up to it are gone.
    let kinds: Vec<(&str, String)> = r
        .retired
        .iter()
        .map(|x| (x.kind, x.path.rsplit('/').next().unwrap().to_string()))
        .collect();
    assert!(
        kinds.contains(&("generation", "gen-000000000000".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("generation", format!("gen-{:012}", gens[0].seq))),
        "{kinds:?}"
    );
    assert!(
        !kinds
            .iter()
            .any(|k| k.1 == format!("gen-{:012}", gens[1].seq)),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| k.0 == "bundle").count() as u64,
        gens[1].seq,
        "{kinds:?}"
    );
    verify_clean(&set);
    let out = t.path("out.db");
    for (n, image) in &m.images {
        let got = restore_txn(&set, *n, &out);
        if *n >= gens[1].txn {
            assert!(
                got.unwrap() == *image,
                "txn {n} (inside the window) differs"
            );
        } else {
            assert!(got.is_err(), "txn {n} should have been retired");
        }
    }
}

/// An interrupted retention (generation 0 gone, some superseded bundles left) still verifies,
/// and the next run removes the leftovers.
#[test]
fn leftovers_of_interrupted_retention_verify_and_are_removed() {
    let t = Tmp::new();
    let set = t.path("set");
    let mut m = Synth::new(&set, 4);
    workload(&mut m, 5, 3);
    run_compact(&set, force(3650, 5), txn_time(m.txn));
    workload(&mut m, 1, 4);
    let chain = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    // As if killed after retiring generation 0 and bundles 1..=2.
    std::fs::remove_dir_all(chain.join("gen-000000000000")).unwrap();
    for s in 1..=2 {
        std::fs::remove_file(chain.join(format!("b-{s:012}.wbb"))).unwrap();
    }
    let v = wb(["verify", s(&set)]);
    v.ok();
    assert!(
        v.stdout.contains("superseded") || v.stderr.contains("superseded"),
        "{v:?}"
    );
    let r = run_compact(&set, force(3650, 5), txn_time(m.txn));
    assert_eq!(
        r.retired.iter().filter(|x| x.kind == "bundle").count(),
        3,
        "{:?}",
        r.retired
    );
    verify_clean(&set);
    let out = t.path("out.db");
    let got = restore_txn(&set, m.txn, &out).unwrap();
    assert!(got == m.image());
}

/// A second compactor is refused with a message naming the holder; `--dry-run` changes nothing.
#[test]
fn second_compactor_is_refused_and_dry_run_changes_nothing() {
    let t = Tmp::new();
    let set = t.path("set");
    let mut m = Synth::new(&set, 4);
    workload(&mut m, 4, 2);
    let before = set_files(&set);
    let d = wb([
        "compact",
        s(&set),
        "--dry-run",
        "--force",
        "--check",
        "quick",
    ]);
    d.ok();
    assert!(d.stdout.contains("would create generation"), "{d:?}");
    assert_eq!(set_files(&set), before, "--dry-run changed the set");
    let mut holder = BackupSet::open(&set).unwrap();
    holder.lock_maintenance().unwrap();
    let r = wb(["compact", s(&set), "--force"]);
    r.code(2)
        .stderr_has("another walbundle process is compacting")
        .stderr_has(&format!("pid {}", std::process::id()));
    drop(holder);
    assert_eq!(set_files(&set), before);
}

/// The set's files, without the maintenance lock file (created by the first run, never content).
fn set_files(set: &Path) -> Vec<std::path::PathBuf> {
    all_files(set)
        .into_iter()
        .filter(|p| !p.ends_with(".walbundle-maintenance.lock"))
        .collect()
}

fn committed_count(log: &Path) -> u64 {
    committed(log).len() as u64
}

/// Capture of a live writer and compaction of the same set at once, compaction killed with
/// `kill -9` at spread-out moments in a loop (and sometimes run to completion with aggressive
/// retention): after every kill the set verifies; at the end every sampled point restores as a
/// contiguous committed prefix, and the newest equals the source.
#[test]
fn compaction_beside_capture_survives_kill_loop() {
    let t = Tmp::new();
    let db = t.mkdir("src").join("app.db");
    let dest = t.mkdir("dest");
    init_db(&db, 3000, 4096, "wal");
    let log = t.path("commits.tsv");
    let cap = Command::new(bin())
        .args([
            "capture",
            s(&db),
            "--dest",
            s(&dest),
            "-q",
            "--interval",
            "0.3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let set = dest.join("app");
    for _ in 0..100 {
        if set.join("walbundle-set.json").exists() && generation_dirs(&set).len() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut w = spawn_writer(
        &db,
        &log,
        &["--rate", "300", "--duration", "12", "--rows-per-txn", "6"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut kills = 0;
    let mut completed = 0;
    // Each named point in turn (the process stops there and is killed), then spread-out
    // random moments, and every fourth run to completion.
    let points = [
        "compact:replayed",
        "compact:staged",
        "compact:published",
        "retire:renamed",
        "retire:bundle",
    ];
    let pause_file = t.path("paused");
    let mut paused_at = Vec::new();
    for i in 0..16u64 {
        let point = points[(i as usize) % points.len()];
        if point.starts_with("retire") {
            // Let older generations fall out of the 1 s window, so retention has work.
            std::thread::sleep(Duration::from_millis(1500));
        }
        let mut c = spawn_compact_paused(&set, if i < 10 { point } else { "" }, &pause_file);
        if i < 10 {
            // Wait until it reaches the point (or finishes without reaching it).
            if wait_for_pause(&mut c, &pause_file, Duration::from_secs(6)) {
                paused_at.push(point);
            }
            let _ = c.kill();
            let _ = c.wait();
            kills += 1;
        } else if i % 3 == 0 {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            completed += 1;
        } else {
            // 0..~400 ms, spread by a fixed sequence.
            std::thread::sleep(Duration::from_millis((i * 137) % 420));
            let _ = c.kill();
            let _ = c.wait();
            kills += 1;
        }
        let v = wb(["verify", s(&set)]);
        assert_eq!(
            v.code, 0,
            "set does not verify after compaction run {i}: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(w.wait().unwrap().success());
    std::thread::sleep(Duration::from_secs(2));
    let o = crate::support::rig::terminate(cap);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Sampled points before the final compaction, compared after it.
    let range = |set: &Path| {
        let j = wb(["list", s(set), "--json"]).json();
        let r = j["restorable"].as_array().unwrap().last().unwrap().clone();
        (
            r["first_txn"].as_u64().unwrap(),
            r["last_txn"].as_u64().unwrap(),
        )
    };
    let (lo0, hi0) = range(&set);
    let sample: Vec<u64> = (0..5).map(|k| lo0 + (hi0 - lo0) * k / 4).collect();
    let mut before = Vec::new();
    for (i, n) in sample.iter().enumerate() {
        let o = t.path(&format!("before-{i}.db"));
        wb([
            "restore",
            s(&set),
            "--txn",
            &n.to_string(),
            "--out",
            s(&o),
            "--check",
            "quick",
        ])
        .ok();
        before.push(sha_file(&o));
    }
    wb(["compact", s(&set), "--force"]).ok();
    wb(["verify", s(&set), "--deep"]).ok();
    for (i, n) in sample.iter().enumerate() {
        let o = t.path(&format!("after-{i}.db"));
        wb([
            "restore",
            s(&set),
            "--txn",
            &n.to_string(),
            "--out",
            s(&o),
            "--check",
            "quick",
        ])
        .ok();
        assert_eq!(
            sha_file(&o),
            before[i],
            "txn {n} differs before and after compaction"
        );
    }
    // No orphans under final names, no temporaries left.
    for f in all_files(&set) {
        let n = f.to_string_lossy();
        assert!(!n.contains(".wbtmp"), "temporary left behind: {n}");
    }
    let all = committed_count(&log);
    let out = t.path("latest.db");
    wb(["restore", s(&set), "--out", s(&out)]).ok();
    assert_eq!(check_prefix(&out), all);
    let l = wb(["list", s(&set), "--json"]);
    let j = l.json();
    let r = j["restorable"].as_array().unwrap().last().unwrap().clone();
    let (lo, hi) = (
        r["first_txn"].as_u64().unwrap(),
        r["last_txn"].as_u64().unwrap(),
    );
    assert_eq!(hi, all + 1, "newest restorable txn vs the writer's commits"); // +1: the initial rows
    let mut points_checked = std::collections::BTreeSet::new();
    {
        for k in 0..6 {
            let n = lo + (hi - lo) * k / 5;
            if !points_checked.insert(n) {
                continue;
            }
            let o = t.path(&format!("at-{n}.db"));
            wb(["restore", s(&set), "--txn", &n.to_string(), "--out", s(&o)]).ok();
            check_prefix(&o);
        }
    }
    eprintln!("{kills} kills ({paused_at:?} at named points), {completed} completed compactions");
    for p in points {
        assert!(
            paused_at.contains(&p),
            "no run was killed at {p}: {paused_at:?}"
        );
    }
}

/// After compaction retired everything before the newest generation, a restarted capture
/// continues the same chain from that generation (its recorded WAL position and link), and the
/// continued history restores completely.
#[test]
fn capture_resumes_from_a_compacted_base() {
    let t = Tmp::new();
    let db = t.mkdir("src").join("app.db");
    let dest = t.mkdir("dest");
    init_db(&db, 500, 4096, "wal");
    // Keep an application connection open throughout, as a real application would: the WAL
    // then survives between the two capture runs, which resume needs.
    let app = rusqlite::Connection::open(&db).unwrap();
    app.execute_batch("SELECT count(*) FROM items").unwrap();
    let log = t.path("commits.tsv");
    let capture = || {
        Command::new(bin())
            .args([
                "capture",
                s(&db),
                "--dest",
                s(&dest),
                "--json",
                "--interval",
                "0.3",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let stop = |c: std::process::Child| {
        let o = crate::support::rig::terminate(c);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let c = capture();
    std::thread::sleep(Duration::from_millis(800));
    let st = writer(&[
        "--db",
        s(&db),
        "--log",
        s(&log),
        "--txns",
        "300",
        "--rate",
        "300",
    ])
    .status()
    .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(800));
    stop(c);
    let set = dest.join("app");
    std::thread::sleep(Duration::from_millis(1200));
    let mut args = vec!["compact", s(&set)];
    args.extend(COMPACT_ALL);
    wb(args).ok();
    // Only the compacted generation is left in the chain.
    let gens = generation_dirs(&set);
    assert_eq!(gens.len(), 1, "{gens:?}");
    assert!(!gens[0].ends_with("gen-000000000000"));
    let c = capture();
    std::thread::sleep(Duration::from_millis(800));
    let st = writer(&[
        "--db",
        s(&db),
        "--log",
        s(&log),
        "--txns",
        "300",
        "--rate",
        "300",
        "--seed",
        "2",
    ])
    .status()
    .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(800));
    let events = stop(c);
    assert!(
        events.contains("\"resumed\""),
        "capture did not resume: {events}"
    );
    assert_eq!(generation_dirs(&set).len(), 1, "a new chain was started");
    wb(["verify", s(&set), "--deep"]).ok();
    let out = t.path("r.db");
    wb(["restore", s(&set), "--out", s(&out)]).ok();
    assert_eq!(check_prefix(&out), committed(&log).len() as u64);
    drop(app);
}

/// A compacted generation bridges damage before it: with bundle 3 missing, points up to bundle 2
/// and from generation 6 on stay restorable (exactly), the points between are refused naming the
/// missing bundle, `list` shows both ranges, and `verify` still reports the damage.
#[test]
fn a_compacted_generation_bridges_a_missing_bundle() {
    let t = Tmp::new();
    let set = t.path("set");
    let mut m = Synth::new(&set, 4);
    workload(&mut m, 6, 7);
    let g = run_compact(&set, force(3650, 5), txn_time(m.txn))
        .created
        .unwrap();
    assert_eq!(g.seq, 6);
    workload(&mut m, 3, 8);
    let chain = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    let b3 = chain.join("b-000000000003.wbb");
    std::fs::remove_file(&b3).unwrap();
    // Bundle 2 ends at txn 1 + 2×3 = 7; generation 6 holds txn 19.
    let out = t.path("o.db");
    for (n, image) in &m.images {
        let got = restore_txn(&set, *n, &out);
        if *n <= 7 || *n >= g.txn {
            assert!(got.unwrap() == *image, "txn {n} differs");
        } else {
            let e = got.expect_err("a point in the hole was restored");
            assert!(e.to_string().contains("bundle 3 is missing"), "{e}");
        }
    }
    let j = wb(["list", s(&set), "--json"]).json();
    let ranges: Vec<(u64, u64)> = j["restorable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["first_txn"].as_u64().unwrap(),
                r["last_txn"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ranges, vec![(1, 7), (g.txn, m.txn)]);
    wb(["verify", s(&set)])
        .code(1)
        .stderr_has("b-000000000003.wbb");
}

/// What `status` reads ([`BackupSet::summary`]: names, manifests, the newest bundle header of a
/// chain) agrees with the full inventory ([`plan::extents`], every header read): intact, with a
/// bundle missing in the middle, with a compacted generation bridging a gap, and with the
/// newest bundle's header damaged.
#[test]
fn status_summary_agrees_with_the_full_inventory() {
    fn full(set: &Path) -> (Option<(u64, u64)>, bool, Option<i64>) {
        let s = BackupSet::open(set).unwrap();
        let inv = s.inventory().unwrap();
        let ex = walbundle::replay::plan::extents(&inv);
        let lo = ex.iter().map(|e| e.base.txn).min();
        let hi = ex
            .iter()
            .map(walbundle::replay::plan::ChainExtent::end_txn)
            .max();
        let newest = walbundle::replay::plan::newest_extent(&ex)
            .and_then(|e| e.run.last().map(|(_, h)| h.last_time_us));
        (lo.zip(hi), ex.iter().any(|e| e.broken.is_some()), newest)
    }
    fn agree(set: &Path, broken: bool) -> walbundle::chain::summary::SetSummary {
        let sum = BackupSet::open(set).unwrap().summary().unwrap();
        let (restorable, full_broken, newest) = full(set);
        assert_eq!(sum.restorable, restorable, "{sum:#?}");
        assert_eq!(full_broken, broken, "the full inventory");
        assert_eq!(!sum.broken.is_empty(), broken, "{sum:#?}");
        if let Some(t) = newest {
            assert_eq!(sum.newest_time_us, Some(t));
        }
        sum
    }
    let t = Tmp::new();
    let set = t.path("set");
    let mut m = Synth::new(&set, 5);
    workload(&mut m, 6, 1);
    let sum = agree(&set, false);
    assert_eq!(sum.restorable, Some((1, m.txn)));
    assert_eq!((sum.bundles, sum.generations), (6, 1));
    let bundle = |seq: u64| {
        let chain = generation_dirs(&set)[0].parent().unwrap().to_path_buf();
        chain.join(walbundle::bundle::wbb::file_name(seq))
    };
    // A generation at bundle 6, more bundles, then bundle 3 lost: the bridge keeps 6.. restorable.
    let g = run_compact(&set, force(3650, 3), txn_time(m.txn))
        .created
        .unwrap();
    assert_eq!(g.seq, 6);
    workload(&mut m, 3, 7);
    agree(&set, false);
    std::fs::remove_file(bundle(3)).unwrap();
    let sum = agree(&set, true);
    assert!(
        sum.broken[0].contains("bundle 3 is missing"),
        "{:?}",
        sum.broken
    );
    assert_eq!(sum.restorable, Some((1, m.txn)));
    // The newest bundle's header damaged: the run ends one earlier, as a full read finds.
    let newest = bundle(9);
    let mut b = std::fs::read(&newest).unwrap();
    b[10] ^= 0xff;
    std::fs::write(&newest, b).unwrap();
    let sum = agree(&set, true);
    assert!(
        sum.broken.iter().any(|p| p.contains("bundle 9 is damaged")),
        "{:?}",
        sum.broken
    );
    // And `status` says so, naming the gap.
    wb(["status", s(&set)])
        .code(1)
        .stderr_has("bundle 3 is missing");
}

/// Section 8's size rules through a real replay: a transaction that grows the database without
/// writing the new pages (they count as zeros), a shrink that drops a written page and a regrowth
/// that brings it back as zeros, and a gap of unwritten pages below a written one. Every point
/// restores byte-exact against the model, `verify --deep` replays it clean, and a compacted
/// generation at the end holds the same bytes.
#[test]
fn growth_without_writes_shrink_and_gaps_replay_exactly() {
    let t = Tmp::new();
    let set = t.path("set");
    let m = crate::support::synth::sizes_workload(&set);
    verify_clean(&set);
    let out = t.path("out.db");
    for (n, image) in &m.images {
        let got = restore_txn(&set, *n, &out).unwrap();
        assert!(got == *image, "txn {n} differs from the model");
    }
    // Page 4 after the shrink and regrowth is zeros, not its old bytes.
    let (_, img) = m.images.iter().find(|(n, _)| *n == 5).unwrap();
    assert!(img[3 * 512..4 * 512].iter().all(|&b| b == 0));
    let r = run_compact(&set, force(3650, 3), txn_time(m.txn));
    assert!(r.created.is_some());
    verify_clean(&set);
    let got = restore_txn(&set, m.txn, &out).unwrap();
    assert!(got == m.images.last().unwrap().1);
}
