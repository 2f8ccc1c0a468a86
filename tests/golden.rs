//! Golden fixtures pin the on-disk format (`format/README.md`) byte for byte: the set record and
//! generation manifest re-encode to the same bytes, the image decodes to the committed database
//! bytes and re-encodes (zstd level 3, one thread, content size and checksum) to the same bytes,
//! and the state checksum test vectors hold. Decoders never panic on arbitrary input.
//!
//! Regenerate (only when the format version changes): `WALBUNDLE_BLESS=1 cargo test --test tests
//! golden::bless -- --ignored`.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use walbundle::bundle::checksum::{StateChecksum, page_term};
use walbundle::bundle::image::{ImageEncoder, decode_image};
use walbundle::chain::manifest::{
    GENERATION_FORMAT, GenerationManifest, ImageInfo, MANIFEST_VERSION, Origin, SET_FORMAT, Sealed,
    SetRecord, SourceIdentity, WalPosition,
};

use crate::support::*;

const CHAIN: &str = "20260101T000000Z-00000001";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("format/fixtures/v1/basic")
}

fn set_dir() -> PathBuf {
    fixtures().join("set")
}

fn gen_dir() -> PathBuf {
    set_dir().join(CHAIN).join("gen-000000000000")
}

fn pages(raw: &[u8], page_size: usize) -> impl Iterator<Item = &[u8]> {
    raw.chunks_exact(page_size)
}

#[test]
#[ignore = "writes the golden fixtures; run only when the format version changes"]
fn bless() {
    assert_eq!(
        std::env::var("WALBUNDLE_BLESS").as_deref(),
        Ok("1"),
        "set WALBUNDLE_BLESS=1"
    );
    let dir = fixtures();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(gen_dir()).unwrap();
    let db = dir.join("database.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA page_size=512; PRAGMA journal_mode=DELETE;
             CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<40)
             INSERT INTO notes(body) SELECT 'note ' || i || ' ' || substr('walbundle golden fixture ', 1, i % 25) FROM n;",
        )
        .unwrap();
    }
    let raw = std::fs::read(&db).unwrap();
    let rec = SetRecord {
        format: SET_FORMAT.into(),
        version: MANIFEST_VERSION,
        set_id: "0123456789abcdef0123456789abcdef".into(),
        name: "set".into(),
        source: SourceIdentity {
            path: "/srv/app/app.db".into(),
            host: "example".into(),
        },
        created: "2026-01-01T00:00:00Z".into(),
        tool: "walbundle 0.1.0".into(),
        self_sha256: String::new(),
    };
    std::fs::write(set_dir().join("walbundle-set.json"), rec.to_sealed_bytes()).unwrap();
    let page_count = (raw.len() / 512) as u32;
    let mut enc = ImageEncoder::new(Vec::new(), 3, 0, 512, page_count).unwrap();
    for p in pages(&raw, 512) {
        enc.write_page(p).unwrap();
    }
    let (bytes, _) = enc.finish().unwrap();
    std::fs::write(gen_dir().join("image.zst"), &bytes).unwrap();
    let sum = walbundle::bundle::image::decode_image_unchecked(
        &gen_dir().join("image.zst"),
        512,
        page_count,
        None,
        |_, _| Ok(()),
        |_| {},
    )
    .unwrap();
    let m = GenerationManifest {
        format: GENERATION_FORMAT.into(),
        version: MANIFEST_VERSION,
        set_id: rec.set_id.clone(),
        chain_id: CHAIN.into(),
        seq: 0,
        txn: 1,
        state_time: "2026-01-01T00:00:00Z".into(),
        created: "2026-01-01T00:00:01Z".into(),
        tool: "walbundle 0.1.0".into(),
        origin: Origin::Snapshot {
            journal_mode: "delete".into(),
            reason: "snapshot".into(),
            previous_chain: None,
        },
        page_size: 512,
        page_count,
        state_checksum: sum.state.to_hex(),
        image: ImageInfo {
            file: "image.zst".into(),
            compression: "zstd".into(),
            size: sum.size,
            sha256: sum.sha256,
            raw_size: sum.raw_size,
            raw_sha256: sum.raw_sha256,
        },
        wal: Some(WalPosition {
            salt1: 0x1234_5678,
            salt2: 0x9abc_def0,
            frame: 7,
            checksum1: 1,
            checksum2: 2,
            backfilled: 0,
        }),
        check: "full".into(),
        self_sha256: String::new(),
    };
    std::fs::write(gen_dir().join("manifest.json"), m.to_sealed_bytes()).unwrap();
}

#[test]
fn set_record_reencodes_byte_for_byte() {
    let p = set_dir().join("walbundle-set.json");
    let bytes = std::fs::read(&p).unwrap();
    let rec = SetRecord::from_sealed_bytes(&p, &bytes).unwrap();
    assert_eq!(rec.to_sealed_bytes(), bytes);
    assert_eq!(rec.set_id, "0123456789abcdef0123456789abcdef");
}

#[test]
fn generation_manifest_and_image_reencode_byte_for_byte() {
    let mp = gen_dir().join("manifest.json");
    let bytes = std::fs::read(&mp).unwrap();
    let m = GenerationManifest::from_sealed_bytes(&mp, &bytes).unwrap();
    m.validate(&mp).unwrap();
    assert_eq!(m.to_sealed_bytes(), bytes);

    let raw = std::fs::read(fixtures().join("database.db")).unwrap();
    let mut decoded = Vec::new();
    decode_image(
        &gen_dir().join("image.zst"),
        &m,
        |_, p| {
            decoded.extend_from_slice(p);
            Ok(())
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(
        decoded, raw,
        "image does not decode to the fixture database"
    );

    let mut enc = ImageEncoder::new(Vec::new(), 3, 0, m.page_size, m.page_count).unwrap();
    for p in pages(&raw, m.page_size as usize) {
        enc.write_page(p).unwrap();
    }
    let (bytes, sum) = enc.finish().unwrap();
    assert_eq!(
        bytes,
        std::fs::read(gen_dir().join("image.zst")).unwrap(),
        "image re-encoding drifted"
    );
    assert_eq!(sum.state.to_hex(), m.state_checksum);
}

#[test]
fn golden_set_verifies_deep_and_restores_exactly() {
    let t = Tmp::new();
    wb(["verify", s(&set_dir()), "--deep"]).ok();
    let out = t.path("golden.db");
    wb(["restore", s(&set_dir()), "--out", s(&out)]).ok();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fixtures().join("database.db")).unwrap()
    );
}

/// Test vectors for the state checksum (`format/README.md`, "State checksum"), cross-checked
/// against Python's independent `xxhash` package (`xxh3_64_intdigest(bytes(512), seed=1)`).
#[test]
fn state_checksum_vectors() {
    assert_eq!(
        format!("{:016x}", page_term(1, &[0u8; 512])),
        "8a3b11577f6f69db"
    );
    let mut s = StateChecksum::default();
    s.toggle(512, 1, &[0u8; 512]);
    s.toggle(512, 2, &[0xffu8; 512]);
    assert_eq!(s.to_hex(), "35673dc0e0faacec");
    // The lock-byte page never contributes.
    let before = s;
    s.toggle(65536, 16_385, &[1u8; 65536]);
    assert_eq!(s, before);
}

#[test]
fn newer_manifest_version_is_named() {
    let mp = gen_dir().join("manifest.json");
    let text =
        std::fs::read_to_string(&mp)
            .unwrap()
            .replacen("\"version\": 1", "\"version\": 2", 1);
    let e = GenerationManifest::from_sealed_bytes(&mp, text.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("`version` is 2"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn manifest_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = GenerationManifest::from_sealed_bytes(Path::new("fuzz.json"), &bytes);
        let _ = SetRecord::from_sealed_bytes(Path::new("fuzz.json"), &bytes);
    }

    #[test]
    fn image_decoder_never_panics_on_mutations(idx in 0usize..4096, bit in 0u8..8, cut in 0usize..4096) {
        let mp = gen_dir().join("manifest.json");
        let m = GenerationManifest::from_sealed_bytes(&mp, &std::fs::read(&mp).unwrap()).unwrap();
        let mut img = std::fs::read(gen_dir().join("image.zst")).unwrap();
        let i = idx % img.len();
        img[i] ^= 1 << bit;
        img.truncate(img.len() - cut % img.len());
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), &img).unwrap();
        let r = decode_image(t.path(), &m, |_, _| Ok(()), |_| {});
        prop_assert!(r.is_err(), "a mutated image decoded cleanly");
    }
}
