//! The demo: the main job end to end on a database it creates when there is none — a live
//! writer, a snapshot under it, capture beside it, list, structural and deep verify, compaction,
//! restore, and a check that the restored database holds exactly a contiguous prefix of the
//! committed transactions. `walbundle demo` prints its steps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::capture::engine::{CaptureOptions, Capturer};
use crate::capture::snapshot::snapshot;
use crate::progress::human_bytes;
use crate::replay::{self, CheckLevel, RestoreOptions, Target};
use crate::verify::{Problem, VerifyOptions, verify};
use crate::{BackupSet, Error, NoProgress, Progress, Result, SnapshotOptions, SourceDb};

/// How the demo ended.
#[derive(Debug)]
pub struct DemoReport {
    /// The demo's set folder.
    pub set_dir: PathBuf,
    /// What verify found (empty: intact; the demo stops there otherwise).
    pub problems: Vec<Problem>,
    /// The restored database holds every transaction the writer committed, in order.
    pub complete: bool,
}

fn sql(p: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::sqlite(p, "demo database", e)
}

fn create_demo_db(path: &Path) -> Result<()> {
    let c = Connection::open(path).map_err(sql(path))?;
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, txn_id INTEGER, payload BLOB);
         CREATE TABLE IF NOT EXISTS txlog(txn_id INTEGER PRIMARY KEY, t REAL);",
    )
    .map_err(sql(path))?;
    c.execute_batch(
        "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<2000)
         INSERT INTO items(txn_id, payload) SELECT 0, randomblob(300) || zeroblob(700) FROM n; COMMIT;",
    )
    .map_err(sql(path))?;
    Ok(())
}

/// Run the demo in `dir` (data/app.db, created if missing; backups/; restored/) with a writer
/// committing for `seconds`, telling each step to `say`.
///
/// # Errors
/// Any step that could not run.
pub fn run(
    dir: &Path,
    seconds: f64,
    progress: &dyn Progress,
    say: &mut dyn FnMut(&str),
) -> Result<DemoReport> {
    let data = dir.join("data");
    let db = data.join("app.db");
    let dest = dir.join("backups");
    let restored_dir = dir.join("restored");
    crate::store::ensure_dir_durable(&data)?;
    crate::store::ensure_dir_durable(&restored_dir)?;
    if !db.exists() {
        say(&format!("creating demo database {}", db.display()));
        create_demo_db(&db)?;
    }
    let src = SourceDb::locate(&db)?;
    src.read_header()?;
    crate::sqlite::source::guard_destination(&src, &dest, false)?;

    // A live writer: each transaction updates rows and records its id in txlog.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, committed, db) = (stop.clone(), committed.clone(), db.clone());
        std::thread::spawn(move || -> rusqlite::Result<()> {
            let c = Connection::open(&db)?;
            c.busy_timeout(Duration::from_secs(10))?;
            let mut next: i64 =
                c.query_row("SELECT coalesce(max(txn_id),0)+1 FROM txlog", [], |r| {
                    r.get(0)
                })?;
            while !stop.load(Ordering::Relaxed) {
                c.execute_batch("BEGIN IMMEDIATE")?;
                c.execute("UPDATE items SET txn_id=?1, payload=randomblob(300) WHERE id = 1 + abs(random()) % 2000", [next])?;
                c.execute("INSERT INTO txlog VALUES(?1, julianday('now'))", [next])?;
                c.execute_batch("COMMIT")?;
                committed.fetch_add(1, Ordering::Relaxed);
                next += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        })
    };
    let half = Duration::from_secs_f64(seconds.max(0.2) / 2.0);
    std::thread::sleep(half);

    let mut set = BackupSet::open_or_create(&dest, &src.default_set_name(), &src.identity())?;
    set.lock_writer()?;
    let snap_opts = SnapshotOptions {
        reason: "demo".into(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let rep = snapshot(&set, &src, &snap_opts, progress)?;
    say(&format!(
        "1/6 snapshot under a live writer (no lock taken): {} ({}, stored {}) in {:.0} ms",
        rep.generation_dir.display(),
        human_bytes(rep.manifest.image.raw_size),
        human_bytes(rep.manifest.image.size),
        t0.elapsed().as_secs_f64() * 1000.0,
    ));
    let set_dir = set.dir().to_path_buf();
    let finish_writer = |w: std::thread::JoinHandle<rusqlite::Result<()>>| -> Result<()> {
        stop.store(true, Ordering::Relaxed);
        w.join()
            .map_err(|_| Error::usage("demo writer panicked"))?
            .map_err(sql(&db))
    };
    if cfg!(windows) {
        // No continuous capture on Windows (capture::engine::refuse_on_windows): a second
        // snapshot once the writer has stopped holds every transaction it committed.
        std::thread::sleep(half);
        finish_writer(writer)?;
        let rep = snapshot(&set, &src, &snap_opts, progress)?;
        say(&format!(
            "2/6 a second snapshot (continuous capture is not available on Windows): {}",
            rep.generation_dir.display()
        ));
        drop(set);
    } else {
        // Continuous capture while the writer keeps going: every committed transaction is
        // sealed into a bundle within a quarter of a second.
        drop(set);
        let opts = CaptureOptions {
            interval: Duration::from_millis(250),
            poll: Duration::from_millis(25),
            ..CaptureOptions::default()
        };
        let mut cap = Capturer::start(src.clone(), BackupSet::open(&set_dir)?, opts)?;
        let until = Instant::now() + half;
        while Instant::now() < until {
            cap.step()?;
            std::thread::sleep(Duration::from_millis(25));
        }
        finish_writer(writer)?;
        cap.flush()?;
        let st = cap.stats.clone();
        drop(cap);
        say(&format!(
            "2/6 capture beside the live writer: {} transactions in {} bundles, {} read-mark moves, writers never blocked",
            st.txns, st.bundles, st.pin_moves
        ));
    }
    let set = BackupSet::open(&set_dir)?;
    say(&format!(
        "   the writer committed {} transactions meanwhile",
        committed.load(Ordering::Relaxed)
    ));

    let inv = set.inventory()?;
    say(&format!(
        "3/6 list: set {} holds {} generation(s)",
        set.dir().display(),
        inv.valid_generations().count()
    ));
    for deep in [false, true] {
        let r = verify(
            &set,
            &VerifyOptions {
                deep,
                check: CheckLevel::Full,
                scratch_dir: None,
            },
            &NoProgress,
        )?;
        if !r.is_clean() {
            return Ok(DemoReport {
                set_dir: set.dir().to_path_buf(),
                problems: r.problems,
                complete: false,
            });
        }
    }
    say("4/6 verify (structural and deep): intact");

    let mut cset = crate::BackupSet::open(set.dir())?;
    let c = crate::compact::compact(
        &mut cset,
        &crate::compact::CompactOptions {
            policy: crate::compact::CompactPolicy {
                force: true,
                ..Default::default()
            },
            ..Default::default()
        },
        &NoProgress,
    )?;
    drop(cset);
    match &c.created {
        Some(g) => say(&format!(
            "5/6 compact: generation {} (txn {}) replayed from generation {} + {} bundle(s), \
                 verified; restores now start from it",
            g.seq, g.txn, g.from_seq, g.bundles_replayed
        )),
        None => say(&format!(
            "5/6 compact: {}",
            c.skipped.as_deref().unwrap_or("nothing to do")
        )),
    }

    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%S%.3fZ")
        .to_string();
    let out = restored_dir.join(format!("app-{stamp}.db"));
    let plan = replay::plan(&set, &Target::Latest)?;
    let r = replay::restore(
        &plan,
        &RestoreOptions {
            out: out.clone(),
            force: false,
            check: CheckLevel::Full,
        },
        &NoProgress,
    )?;
    let c = Connection::open_with_flags(&out, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql(&out))?;
    let (n, lo, hi): (i64, i64, i64) = c
        .query_row(
            "SELECT count(*), coalesce(min(txn_id),0), coalesce(max(txn_id),0) FROM txlog",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(sql(&out))?;
    let source_max: i64 =
        Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row("SELECT coalesce(max(txn_id),0) FROM txlog", [], |r| {
                    r.get(0)
                })
            })
            .map_err(sql(&db))?;
    let contiguous = n == 0 || (lo == 1 && hi == n);
    let complete = contiguous && hi == source_max;
    say(&format!(
        "6/6 restore from generation {}: {} ({}), holds transactions 1..{hi} ({}), integrity check ok",
        plan.generation_seq,
        r.out.display(),
        human_bytes(r.bytes),
        if complete {
            "every transaction the writer committed"
        } else if contiguous {
            "a contiguous prefix, but NOT every committed transaction"
        } else {
            "NOT CONTIGUOUS"
        }
    ));
    Ok(DemoReport {
        set_dir: set.dir().to_path_buf(),
        problems: Vec::new(),
        complete,
    })
}
