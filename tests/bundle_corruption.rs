//! The restore refusal matrix for WAL bundles: a missing bundle in the middle, reordered and
//! duplicated bundles, a bundle from another set, truncation, bit flips in the header, a
//! record or the compressed stream, and crafted bundles whose CRC and digest are recomputed so
//! that only the decoder's bounds stand between a hostile length and an allocation. Each is
//! refused by `restore` (exit 2, a message naming the file, `--out` untouched) and reported by
//! `verify` (exit 1) — never a panic, never a silent partial restore.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::*;

/// A captured set with several bundles; returns (tmp, set dir, bundle paths in order).
fn captured_set() -> (Tmp, PathBuf, Vec<PathBuf>) {
    let t = Tmp::new();
    let db = t.mkdir("src").join("app.db");
    let dest = t.mkdir("dest");
    init_db(&db, 300, 4096, "wal");
    let mut cap = std::process::Command::new(bin())
        .args([
            "capture",
            s(&db),
            "--dest",
            s(&dest),
            "--interval",
            "150ms",
            "-q",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let st = writer(&["--db", s(&db), "--txns", "400", "--rate", "400"])
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(500));
    crate::support::rig::stop_capture(&mut cap);
    let set = dest.join("app");
    let chain = generation_dirs(&set)
        .pop()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let mut bundles: Vec<PathBuf> = std::fs::read_dir(&chain)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wbb"))
        .collect();
    bundles.sort();
    assert!(
        bundles.len() >= 4,
        "want at least 4 bundles, got {}",
        bundles.len()
    );
    wb(["verify", s(&set), "--deep"]).ok();
    (t, set, bundles)
}

/// restore refuses (exit 2, message contains `what`), leaves `--out` as it was; verify exits 1.
fn refused(t: &Tmp, set: &Path, what: &str) {
    let out = t.path("keep.db");
    std::fs::write(&out, b"keep").unwrap();
    let r = wb(["restore", s(set), "--out", s(&out), "--force"]);
    r.code(2).stderr_has(what);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"keep",
        "a refused restore changed --out"
    );
    wb(["verify", s(set)]).code(1);
}

fn rewrite_sealed(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    // Edit, then recompute the header CRC and the trailer digest: a crafted, "valid-looking" file.
    let mut b = std::fs::read(path).unwrap();
    edit(&mut b);
    let crc = crc32fast::hash(&b[..200]);
    b[200..204].copy_from_slice(&crc.to_le_bytes());
    let t = b.len() - 48;
    let digest: [u8; 32] = Sha256::digest(&b[..t]).into();
    b[t + 16..].copy_from_slice(&digest);
    std::fs::write(path, b).unwrap();
}

#[test]
fn missing_bundle_in_the_middle() {
    let (t, set, b) = captured_set();
    std::fs::remove_file(&b[1]).unwrap();
    refused(&t, &set, "bundle 2 is missing");
    // The newest point before the break is still restorable, by number.
    let l = wb(["list", s(&set), "--json"]).json();
    let last = l["restorable"][0]["last_txn"].as_u64().unwrap();
    let out = t.path("before-break.db");
    wb([
        "restore",
        s(&set),
        "--out",
        s(&out),
        "--txn",
        &last.to_string(),
    ])
    .ok();
    check_prefix(&out);
}

#[test]
fn reordered_bundles() {
    let (t, set, b) = captured_set();
    let tmp = t.path("swap");
    std::fs::rename(&b[1], &tmp).unwrap();
    std::fs::rename(&b[2], &b[1]).unwrap();
    std::fs::rename(&tmp, &b[2]).unwrap();
    refused(&t, &set, "b-000000000002.wbb");
}

#[test]
fn duplicated_bundle() {
    let (t, set, b) = captured_set();
    std::fs::copy(&b[1], &b[2]).unwrap();
    refused(&t, &set, "b-000000000003.wbb");
}

#[test]
fn bundle_from_another_set() {
    let (t, set, b) = captured_set();
    let (_t2, _set2, other) = captured_set();
    std::fs::copy(&other[1], &b[1]).unwrap();
    refused(&t, &set, "b-000000000002.wbb");
}

#[test]
fn truncated_bundle() {
    let (t, set, b) = captured_set();
    let bytes = std::fs::read(&b[2]).unwrap();
    std::fs::write(&b[2], &bytes[..bytes.len() - 7]).unwrap();
    refused(&t, &set, "truncated");
}

#[test]
fn bit_flips_in_header_record_and_compressed_stream() {
    for at in [70usize, 150, 208 + 3, 0] {
        let (t, set, b) = captured_set();
        let len = std::fs::metadata(&b[1]).unwrap().len() as usize;
        let i = if at == 0 { len / 2 } else { at };
        flip_bit(&b[1], i as i64);
        refused(&t, &set, "b-000000000002.wbb");
    }
}

#[test]
fn crafted_lengths_are_refused_by_bounds() {
    // body_raw_len far beyond what the frames could hold (a zstd bomb's promise).
    let (t, set, b) = captured_set();
    rewrite_sealed(&b[1], |x| {
        x[192..200].copy_from_slice(&(1u64 << 40).to_le_bytes())
    });
    refused(&t, &set, "body_raw_len");
    // A txn_count larger than the frames covered.
    let (t, set, b) = captured_set();
    rewrite_sealed(&b[1], |x| {
        x[140..144].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    refused(&t, &set, "txn_count");
    // A page count of 2^31 after the bundle (the state chain no longer continues).
    let (t, set, b) = captured_set();
    rewrite_sealed(&b[1], |x| {
        x[136..140].copy_from_slice(&(1u32 << 31).to_le_bytes())
    });
    refused(&t, &set, "b-00000000000");
}

/// `--until-break` restores up to the last verified point before the first bad link, says so
/// loudly and exits 1 — whether the break is found while planning (a missing bundle) or while
/// replaying (a damaged body); on an intact set it is an ordinary restore (exit 0).
#[test]
fn until_break_restores_the_verified_prefix_and_says_so() {
    let (t, set, b) = captured_set();
    let out = t.path("intact.db");
    wb(["restore", s(&set), "--out", s(&out), "--until-break"]).ok();
    let full = check_prefix(&out);

    // A body byte flipped in bundle 3: the header is fine, replay finds the damage.
    let len = std::fs::metadata(&b[2]).unwrap().len() as i64;
    flip_bit(&b[2], len / 2);
    let out = t.path("until-flip.db");
    let r = wb(["restore", s(&set), "--out", s(&out), "--until-break"]);
    r.code(1)
        .stderr_has("PARTIAL RESTORE")
        .stderr_has("b-000000000003.wbb");
    let k_flip = check_prefix(&out);
    assert!(
        k_flip < full,
        "a partial restore holds everything ({k_flip} of {full})"
    );

    // Bundle 2 missing: planning stops before it.
    std::fs::remove_file(&b[1]).unwrap();
    let out = t.path("until-missing.db");
    let r = wb([
        "restore",
        s(&set),
        "--out",
        s(&out),
        "--until-break",
        "--json",
    ]);
    r.code(1)
        .stderr_has("PARTIAL RESTORE")
        .stderr_has("bundle 2 is missing");
    assert!(r.json()["partial"].is_string());
    let k_missing = check_prefix(&out);
    assert!(k_missing < k_flip);
    // Without the flag the same set is refused and nothing is written.
    let out = t.path("refused.db");
    wb(["restore", s(&set), "--out", s(&out)]).code(2);
    assert!(!out.exists());
}
