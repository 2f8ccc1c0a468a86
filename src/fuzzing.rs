//! Entry points shared by the fuzz targets (`fuzz/`, cargo-fuzz) and by the ordinary test suite,
//! which replays the fuzz seed corpus through the same functions. Not a stable API.
//!
//! Each function takes untrusted bytes and must return — an error or a summary — without
//! panicking, hanging, or allocating more than the bounds the decoders enforce.

use std::path::PathBuf;

use crate::bundle::manifest::{GenerationManifest, Sealed, SetRecord};
use crate::bundle::wbb::read_bundle;
use crate::error::{Error, Result};

/// What a decoded input held, for tests that pin a valid seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Transactions (bundle) or 1 (manifest).
    pub items: u64,
    /// Pages replayed (bundle) or the manifest's page count.
    pub pages: u64,
}

fn scratch() -> Result<PathBuf> {
    // One file per thread: the bundle decoder reads from a path, as restore does.
    let dir = std::env::temp_dir().join(format!("walbundle-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "creating scratch folder", e))?;
    Ok(dir.join(format!("{:?}.wbb", std::thread::current().id()).replace(['(', ')'], "")))
}

/// Decode `data` as a bundle file: header, trailer and digest, then every record and page.
///
/// # Errors
/// Whatever the decoder refuses.
pub fn bundle(data: &[u8]) -> Result<Decoded> {
    let path = scratch()?;
    std::fs::write(&path, data).map_err(|e| Error::io(&path, "writing scratch", e))?;
    let res = (|| {
        let b = read_bundle(&path)?;
        let mut d = Decoded { items: 0, pages: 0 };
        let pages = std::cell::Cell::new(0u64);
        // Reference pages (version 2) decode against the state before the bundle, which a fuzz
        // input has none of: zeros stand in (the decoder must refuse or decode, never panic).
        let reference = vec![0u8; b.refs.len() * b.header.page_size as usize];
        b.replay(
            &path,
            &reference,
            |_, _| Ok(true),
            |_, page| {
                pages.set(pages.get() + 1);
                std::hint::black_box(page);
                Ok(())
            },
            |_, _| {
                d.items += 1;
                Ok(true)
            },
        )?;
        d.pages = pages.get();
        Ok(d)
    })();
    let _ = std::fs::remove_file(&path);
    res
}

/// Like [`bundle`], past the checksums: `data` is the header's first 200 bytes (any values)
/// followed by the *uncompressed* body. The body is compressed and the lengths, header CRC and
/// trailer are made consistent, so the fuzzer explores the record decoder and the header's field
/// checks instead of stopping at a CRC or digest mismatch.
///
/// # Errors
/// Whatever the decoder refuses.
pub fn bundle_raw(data: &[u8]) -> Result<Decoded> {
    use crate::bundle::wbb::{HEADER_LEN, TRAILER_LEN, TRAILER_MAGIC};
    use sha2::{Digest, Sha256};
    if data.len() < 200 {
        return bundle(data);
    }
    let (head, raw) = data.split_at(200);
    let body =
        zstd::bulk::compress(raw, 1).map_err(|e| Error::io("fuzz-input", "compressing", e))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
    out.extend_from_slice(head);
    out[184..192].copy_from_slice(&(body.len() as u64).to_le_bytes());
    out[192..200].copy_from_slice(&(raw.len() as u64).to_le_bytes());
    let crc = crc32fast::hash(&out[..200]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&body);
    let digest = Sha256::digest(&out);
    let total = (out.len() + TRAILER_LEN) as u64;
    out.extend_from_slice(&TRAILER_MAGIC);
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&digest);
    bundle(&out)
}

/// Decode `data` as a manifest: a generation manifest (sealed, then its fields validated), or
/// failing that a set record.
///
/// # Errors
/// Whatever both decoders refuse (the generation manifest's error is returned).
pub fn manifest(data: &[u8]) -> Result<Decoded> {
    let path = std::path::Path::new("fuzz-input/manifest.json");
    match GenerationManifest::from_sealed_bytes(path, data) {
        Ok(m) => {
            m.validate(path)?;
            Ok(Decoded {
                items: 1,
                pages: u64::from(m.page_count),
            })
        }
        Err(e) => match SetRecord::from_sealed_bytes(path, data) {
            Ok(_) => Ok(Decoded { items: 1, pages: 0 }),
            Err(_) => Err(e),
        },
    }
}
