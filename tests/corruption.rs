//! Damage to every artifact kind — bit flips, edits, truncation, missing files, a foreign
//! generation — must be found by `verify` (exit 1, naming the file) and refused by `restore`
//! (exit 2, --out not created). Restore must never fall back silently to an older state.

use std::path::{Path, PathBuf};

use crate::support::*;

struct Fixture {
    t: Tmp,
    set: PathBuf,
}

fn fixture(snapshots: usize) -> Fixture {
    let t = Tmp::new();
    let db = t.mkdir("src").join("app.db");
    let dest = t.mkdir("dest");
    init_db(&db, 800, 4096, "wal");
    for _ in 0..snapshots {
        wb(["snapshot", s(&db), "--dest", s(&dest), "--check", "quick"]).ok();
        let st = writer(&["--db", s(&db), "--txns", "20"]).status().unwrap();
        assert!(st.success());
    }
    Fixture {
        set: dest.join("app"),
        t,
    }
}

fn newest_gen(set: &Path) -> PathBuf {
    generation_dirs(set).pop().expect("a generation")
}

/// verify exits 1 naming `file`; restore exits 2 and creates nothing.
fn caught(f: &Fixture, file: &Path, what: &str) {
    let v = wb(["verify", s(&f.set)]);
    v.code(1).stderr_has(s(file)).stderr_has(what);
    let j = wb(["verify", s(&f.set), "--json"]);
    j.code(1);
    let probs = j.json()["problems"].as_array().unwrap().clone();
    assert!(
        probs.iter().any(|p| p["path"].as_str() == Some(s(file))),
        "{probs:?}"
    );
    let out = f.t.path("out.db");
    let r = wb(["restore", s(&f.set), "--out", s(&out)]);
    r.code(2);
    assert!(
        !out.exists(),
        "restore published despite damage:\n{}",
        r.stderr
    );
    let leftovers: Vec<_> = std::fs::read_dir(f.t.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".wbtmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "restore left temporaries: {leftovers:?}"
    );
}

#[test]
fn bit_flip_in_image() {
    let f = fixture(1);
    let img = newest_gen(&f.set).join("image.zst");
    let len = std::fs::metadata(&img).unwrap().len() as i64;
    flip_bit(&img, len / 2);
    caught(&f, &img, "SHA-256");
    wb(["verify", s(&f.set), "--deep"])
        .code(1)
        .stderr_has(s(&img));
}

#[test]
fn bit_flip_in_image_header_and_trailer() {
    for at in [5i64, -2] {
        let f = fixture(1);
        let img = newest_gen(&f.set).join("image.zst");
        flip_bit(&img, at);
        caught(&f, &img, "SHA-256");
    }
}

#[test]
fn edited_manifest() {
    let f = fixture(1);
    let m = newest_gen(&f.set).join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    let edited = text.replacen("\"check\": \"quick\"", "\"check\": \"full\"", 1);
    assert_ne!(text, edited);
    std::fs::write(&m, edited).unwrap();
    caught(&f, &m, "self_sha256");
}

#[test]
fn manifest_reformatted_or_garbage() {
    let f = fixture(1);
    let m = newest_gen(&f.set).join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replace("  ", " ")).unwrap();
    caught(&f, &m, "self_sha256");
    std::fs::write(&m, b"\x00\x01 not json").unwrap();
    caught(&f, &m, "not a valid");
}

#[test]
fn truncated_image_and_manifest() {
    let f = fixture(1);
    let img = newest_gen(&f.set).join("image.zst");
    let b = std::fs::read(&img).unwrap();
    std::fs::write(&img, &b[..b.len() - 100]).unwrap();
    caught(&f, &img, "bytes");
    std::fs::write(&img, &b).unwrap();
    let m = newest_gen(&f.set).join("manifest.json");
    let mb = std::fs::read(&m).unwrap();
    std::fs::write(&m, &mb[..mb.len() / 2]).unwrap();
    caught(&f, &m, "not a valid");
}

#[test]
fn missing_image_and_missing_manifest() {
    let f = fixture(1);
    let g = newest_gen(&f.set);
    let img = g.join("image.zst");
    let saved = std::fs::read(&img).unwrap();
    std::fs::remove_file(&img).unwrap();
    caught(&f, &img, "missing");
    std::fs::write(&img, saved).unwrap();
    wb(["verify", s(&f.set)]).ok();
    let m = g.join("manifest.json");
    std::fs::remove_file(&m).unwrap();
    caught(&f, &m, "missing");
}

#[test]
fn damaged_set_record() {
    let f = fixture(1);
    let rec = f.set.join("walbundle-set.json");
    let text = std::fs::read_to_string(&rec).unwrap();
    std::fs::write(
        &rec,
        text.replacen("\"name\": \"app\"", "\"name\": \"apq\"", 1),
    )
    .unwrap();
    let v = wb(["verify", s(&f.set)]);
    v.code(1).stderr_has("walbundle-set.json");
    let out = f.t.path("out.db");
    wb(["restore", s(&f.set), "--out", s(&out)])
        .code(2)
        .stderr_has("walbundle-set.json");
    assert!(!out.exists());
}

#[test]
fn generation_from_another_set_is_refused() {
    let f = fixture(1);
    let other = fixture(1);
    let foreign = newest_gen(&other.set);
    let chain = foreign.parent().unwrap().file_name().unwrap();
    let target = f.set.join(chain);
    std::fs::create_dir_all(&target).unwrap();
    for name in ["manifest.json", "image.zst"] {
        std::fs::create_dir_all(target.join("gen-000000000000")).unwrap();
        std::fs::copy(
            foreign.join(name),
            target.join("gen-000000000000").join(name),
        )
        .unwrap();
    }
    let m = target.join("gen-000000000000/manifest.json");
    let v = wb(["verify", s(&f.set)]);
    v.code(1).stderr_has(s(&m)).stderr_has("another set");
}

#[test]
fn generation_moved_to_another_place_is_refused() {
    let f = fixture(1);
    let g = newest_gen(&f.set);
    let moved = g.parent().unwrap().join("gen-000000000007");
    std::fs::rename(&g, &moved).unwrap();
    caught(&f, &moved.join("manifest.json"), "moved or copied");
}

/// A damaged newest generation must not make restore quietly return an older state.
#[test]
fn restore_never_falls_back_silently() {
    let f = fixture(2);
    let newest = newest_gen(&f.set);
    let m = newest.join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replacen("\"seq\": 0", "\"seq\": 0 ", 1)).unwrap();
    let out = f.t.path("out.db");
    let r = wb(["restore", s(&f.set), "--out", s(&out)]);
    r.code(2).stderr_has("damaged").stderr_has("--txn");
    assert!(!out.exists());
    // The older point is still restorable when asked for by number.
    let l = wb(["list", s(&f.set), "--json"]).json();
    let txn = l["restorable"][0]["first_txn"].as_u64().unwrap();
    wb([
        "restore",
        s(&f.set),
        "--out",
        s(&out),
        "--txn",
        &txn.to_string(),
    ])
    .ok();
    check_prefix(&out);
}

#[test]
fn unrelated_files_are_notes_not_problems() {
    let f = fixture(1);
    std::fs::write(f.set.join("README.txt"), b"mine").unwrap();
    std::fs::write(
        newest_gen(&f.set).parent().unwrap().join("notes.md"),
        b"mine",
    )
    .unwrap();
    let v = wb(["verify", s(&f.set)]);
    v.ok().stderr_has("README.txt");
}

/// A manifest whose image path points outside its generation folder — even correctly sealed,
/// and even when the file it names exists and is a valid image — is refused, naming the field.
#[test]
fn manifest_naming_a_path_outside_the_set_is_refused() {
    use walbundle::bundle::manifest::{GenerationManifest, Sealed};
    let f = fixture(1);
    let g = newest_gen(&f.set);
    let outside = f.t.path("elsewhere.zst");
    std::fs::copy(g.join("image.zst"), &outside).unwrap();
    let mp = g.join("manifest.json");
    let mut m = GenerationManifest::from_sealed_bytes(&mp, &std::fs::read(&mp).unwrap()).unwrap();
    m.image.file = "../../../elsewhere.zst".into();
    std::fs::write(&mp, m.to_sealed_bytes()).unwrap();
    caught(&f, &mp, "outside the set");
    let r = wb(["restore", s(&f.set), "--out", s(&f.t.path("o.db"))]);
    r.code(2).stderr_has(s(&mp)).stderr_has("image.file");
}
