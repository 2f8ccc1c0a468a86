//! The fuzz targets' seed corpus (`fuzz/seeds/`), replayed through the same entry points the
//! cargo-fuzz targets call: `valid-*` seeds must decode, `bad-*` seeds must be refused with the
//! reason their name implies, and nothing may panic. Also the zstd bomb, built here.

use std::path::PathBuf;

use walbundle::fuzzing;

fn seeds(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(kind);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 3, "seed corpus {kind} is too small");
    out
}

fn expect(
    kind: &str,
    run: fn(&[u8]) -> walbundle::Result<fuzzing::Decoded>,
    reasons: &[(&str, &str)],
) {
    for (name, bytes) in seeds(kind) {
        let got = run(&bytes);
        if name.starts_with("valid-") {
            let d = got.unwrap_or_else(|e| panic!("{kind}/{name} should decode: {e}"));
            assert!(d.items > 0, "{kind}/{name} decoded to nothing");
        } else {
            let e = got
                .err()
                .unwrap_or_else(|| panic!("{kind}/{name} was accepted"));
            let msg = e.to_string();
            if let Some((_, want)) = reasons.iter().find(|(n, _)| name.contains(n)) {
                assert!(
                    msg.contains(want),
                    "{kind}/{name}: {msg:?} does not say {want:?}"
                );
            }
        }
    }
}

#[test]
fn bundle_seed_corpus() {
    expect(
        "bundle",
        fuzzing::bundle,
        &[
            ("truncated", "truncated"),
            ("header-only", "truncated"),
            ("body-flip", "SHA-256"),
            ("header-flip", "CRC"),
        ],
    );
    // The valid seed is the golden bundle: two transactions.
    let golden = &seeds("bundle")
        .into_iter()
        .find(|(n, _)| n == "valid-golden.wbb")
        .unwrap()
        .1;
    assert_eq!(fuzzing::bundle(golden).unwrap().items, 2);
}

#[test]
fn bundle_raw_seed_corpus() {
    expect(
        "bundle_raw",
        fuzzing::bundle_raw,
        &[
            ("record-tag", "not a transaction"),
            ("record-crc", "CRC32"),
            ("first-txn-overflow", "first_txn"),
            ("page-size", "page_size"),
        ],
    );
}

#[test]
fn manifest_seed_corpus() {
    expect(
        "manifest",
        fuzzing::manifest,
        &[
            ("outside-set", "outside the set"),
            ("page-size", "page_size"),
            ("edited", "self_sha256"),
        ],
    );
}

/// A body that inflates far beyond what its header claims: the decoder reads at most the
/// claimed length plus one byte and refuses, whatever the stream would expand to. With an
/// honest claim of 1 GiB, the header bound (frames × page size) refuses before any inflating.
#[test]
fn zstd_bomb_is_refused_without_inflating() {
    use walbundle::bundle::wbb::{BundleHeader, assemble};
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("format/fixtures/v1/basic/set/20260101T000000Z-00000001/b-000000000001.wbb");
    let bytes = std::fs::read(&golden).unwrap();
    let header = BundleHeader::decode(&golden, &bytes[..208]).unwrap();
    // The golden body's records, then 1 GiB of zeros: a few tens of KiB compressed.
    let body = &bytes[208..bytes.len() - 48];
    let raw = zstd::decode_all(body).unwrap();
    assert_eq!(raw.len() as u64, header.body_raw_len);
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    std::io::Write::write_all(&mut enc, &raw).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    for (claim, want) in [
        (header.body_raw_len, "body_raw_len` lies"),
        (1u64 << 30, "more than 8 frames can hold"),
    ] {
        let (file, _) = assemble(header.clone(), &bomb, claim);
        let e = fuzzing::bundle(&file).expect_err("a zstd bomb was accepted");
        assert!(
            e.to_string().contains(want),
            "claim {claim}: {e} does not name {want:?}"
        );
    }
}
