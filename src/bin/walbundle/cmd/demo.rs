//! `walbundle demo`: the main job end to end on a database it creates when there is none —
//! a live writer, a snapshot under it, list, structural and deep verify, restore, and a check
//! that the restored database holds exactly a contiguous prefix of the committed transactions.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use walbundle::capture::engine::{CaptureOptions, Capturer};
use walbundle::capture::snapshot::snapshot;
use walbundle::replay::{self, CheckLevel, RestoreOptions, Target};
use walbundle::verify::{VerifyOptions, verify};
use walbundle::{BackupSet, Error, NoProgress, Result, SnapshotOptions, SourceDb};

use crate::ui;

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder for the demo: data/app.db (created if missing), backups/, restored/.
    #[arg(long, default_value = "walbundle-demo")]
    pub dir: PathBuf,
    /// Seconds the demo writer keeps committing around the snapshot.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
}

fn sql(p: &std::path::Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::sqlite(p, "demo database", e)
}

fn create_demo_db(path: &std::path::Path) -> Result<()> {
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

pub fn run(a: Args) -> Result<u8> {
    let data = a.dir.join("data");
    let db = data.join("app.db");
    let dest = a.dir.join("backups");
    let restored_dir = a.dir.join("restored");
    walbundle::store::ensure_dir_durable(&data)?;
    walbundle::store::ensure_dir_durable(&restored_dir)?;
    if !db.exists() {
        ui::log(false, &format!("creating demo database {}", db.display()));
        create_demo_db(&db)?;
    }
    let src = SourceDb::locate(&db)?;
    src.read_header()?;
    walbundle::sqlite::source::guard_destination(&src, &dest, false)?;

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
    let half = Duration::from_secs_f64(a.seconds.max(0.2) / 2.0);
    std::thread::sleep(half);

    let mut set = BackupSet::open_or_create(&dest, &src.default_set_name(), &src.identity())?;
    set.lock_writer()?;
    let t0 = Instant::now();
    let bar = ui::Bar::new(true);
    let rep = snapshot(
        &set,
        &src,
        &SnapshotOptions {
            reason: "demo".into(),
            ..Default::default()
        },
        &bar,
    )?;
    ui::log(
        false,
        &format!(
            "1/6 snapshot under a live writer (no lock taken): {} ({}, stored {}) in {:.0} ms",
            rep.generation_dir.display(),
            ui::bytes(rep.manifest.image.raw_size),
            ui::bytes(rep.manifest.image.size),
            t0.elapsed().as_secs_f64() * 1000.0,
        ),
    );
    // Continuous capture while the writer keeps going: every committed transaction is sealed
    // into a bundle within a quarter of a second.
    let set_dir = set.dir().to_path_buf();
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
    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .map_err(|_| Error::usage("demo writer panicked"))?
        .map_err(sql(&db))?;
    cap.flush()?;
    let st = cap.stats.clone();
    drop(cap);
    ui::log(
        false,
        &format!(
            "2/6 capture beside the live writer: {} transactions in {} bundles, {} read-mark moves, writers never blocked",
            st.txns, st.bundles, st.pin_moves
        ),
    );
    let set = BackupSet::open(&set_dir)?;
    ui::log(
        false,
        &format!(
            "   the writer committed {} transactions meanwhile",
            committed.load(Ordering::Relaxed)
        ),
    );

    let inv = set.inventory()?;
    ui::log(
        false,
        &format!(
            "3/6 list: set {} holds {} generation(s)",
            set.dir().display(),
            inv.valid_generations().count()
        ),
    );
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
            for p in &r.problems {
                eprintln!("walbundle: problem: {}: {}", p.path, p.what);
            }
            return Ok(1);
        }
    }
    ui::log(false, "4/6 verify (structural and deep): intact");

    let mut cset = walbundle::BackupSet::open(set.dir())?;
    let c = walbundle::compact::compact(
        &mut cset,
        &walbundle::compact::CompactOptions {
            policy: walbundle::compact::CompactPolicy {
                force: true,
                ..Default::default()
            },
            ..Default::default()
        },
        &NoProgress,
    )?;
    drop(cset);
    match &c.created {
        Some(g) => ui::log(
            false,
            &format!(
                "5/6 compact: generation {} (txn {}) replayed from generation {} + {} bundle(s), \
                 verified; restores now start from it",
                g.seq, g.txn, g.from_seq, g.bundles_replayed
            ),
        ),
        None => ui::log(
            false,
            &format!(
                "5/6 compact: {}",
                c.skipped.as_deref().unwrap_or("nothing to do")
            ),
        ),
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
    ui::log(
        false,
        &format!(
            "6/6 restore from generation {}: {} ({}), holds transactions 1..{hi} ({}), integrity check ok",
            plan.generation_seq,
            r.out.display(),
            ui::bytes(r.bytes),
            if complete {
                "every transaction the writer committed"
            } else if contiguous {
                "a contiguous prefix, but NOT every committed transaction"
            } else {
                "NOT CONTIGUOUS"
            }
        ),
    );
    ui::out(&format!(
        "demo ok: try `walbundle list {}` and `walbundle verify {} --deep`\n",
        set.dir().display(),
        set.dir().display()
    ));
    Ok(if complete { 0 } else { 1 })
}
