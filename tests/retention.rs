//! Retention for snapshot-only sets deletes only this set's own generations: never the newest,
//! never files it did not write (even look-alikes beside them), never another set's.

use crate::support::*;

#[test]
fn keep_and_retain_days_delete_only_own_generations() {
    let t = Tmp::new();
    let db = t.mkdir("src").join("app.db");
    let other_db = t.mkdir("src2").join("app2.db");
    let dest = t.mkdir("dest");
    init_db(&db, 100, 4096, "wal");
    init_db(&other_db, 100, 4096, "wal");
    wb(["snapshot", s(&other_db), "--dest", s(&dest)]).ok();
    for _ in 0..4 {
        wb(["snapshot", s(&db), "--dest", s(&dest), "--check", "quick"]).ok();
        std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct chain ids
    }
    let set = dest.join("app");
    let gens = generation_dirs(&set);
    assert_eq!(gens.len(), 4);
    // Look-alikes and unrelated files: at the set root, inside a chain that will be retired,
    // inside a generation folder, and a look-alike set beside it.
    let oldest_chain = gens[0].parent().unwrap().to_path_buf();
    std::fs::write(set.join("notes.txt"), b"mine").unwrap();
    std::fs::create_dir(set.join("gen-000000000000")).unwrap();
    std::fs::write(set.join("gen-000000000000/manifest.json"), b"{}").unwrap();
    std::fs::create_dir(set.join("20200101T000000Z-zzzzzzzz")).unwrap();
    std::fs::write(oldest_chain.join("gen-000000000000.bak"), b"mine").unwrap();
    std::fs::create_dir(dest.join("app-old")).unwrap();
    std::fs::write(dest.join("app-old/image.zst"), b"mine").unwrap();
    let mine: Vec<_> = [
        set.join("notes.txt"),
        set.join("gen-000000000000/manifest.json"),
        oldest_chain.join("gen-000000000000.bak"),
        dest.join("app-old/image.zst"),
    ]
    .into_iter()
    .collect();

    // --retain-days 1 keeps everything (all are younger than a day).
    wb(["snapshot", s(&db), "--dest", s(&dest), "--retain-days", "1"]).ok();
    assert_eq!(generation_dirs(&set).len(), 5);

    // --keep 2: the two newest stay.
    let o = wb([
        "snapshot",
        s(&db),
        "--dest",
        s(&dest),
        "--keep",
        "2",
        "--json",
    ]);
    o.ok();
    assert_eq!(o.json()["retired"].as_array().unwrap().len(), 4);
    let left = generation_dirs(&set);
    assert_eq!(left.len(), 2, "{left:?}");
    for f in &mine {
        assert!(f.exists(), "retention deleted {}", f.display());
    }
    assert!(
        oldest_chain.exists(),
        "the chain folder held a file of the user's; it must stay"
    );
    wb(["verify", s(&set)]).ok();
    wb(["verify", s(&dest.join("app2"))]).ok();

    // --retain-days 0 with --keep 1: only the newest remains, and it restores.
    wb([
        "snapshot",
        s(&db),
        "--dest",
        s(&dest),
        "--retain-days",
        "0",
        "--keep",
        "1",
    ])
    .ok();
    assert_eq!(generation_dirs(&set).len(), 1);
    let out = t.path("r.db");
    wb(["restore", s(&set), "--out", s(&out)]).ok();
    check_prefix(&out);
    assert_eq!(generation_dirs(&dest.join("app2")).len(), 1);
}
