//! Synthetic chains: a set written directly through the library's encoders from an in-memory
//! model of a database (a vector of pages), so a test can compare every restore with the model
//! without SQLite in the way. Pages are arbitrary bytes, so restores use `--check none`.

use std::path::{Path, PathBuf};

use walbundle::bundle::checksum::term_or_zero;
use walbundle::bundle::image::{ImageEncoder, decode_image_unchecked};
use walbundle::bundle::manifest::{
    GENERATION_FORMAT, GenerationManifest, ImageInfo, MANIFEST_VERSION, Origin, SET_FORMAT, Sealed,
    SetRecord, SourceIdentity,
};
use walbundle::bundle::wbb::{
    BodyEncoder, BundleHeader, TxnMeta, assemble, file_name, set_id_bytes, sha_bytes,
};

pub const PS: usize = 512;
const CHAIN: &str = "20260101T000000Z-5e5e5e5e";
const T0: i64 = 1_767_225_600_000_000;

/// One transaction: pages written (in order, repeats allowed), then the page count after it.
#[derive(Debug, Clone)]
pub struct Txn {
    pub writes: Vec<(u32, u8)>,
    pub count_after: u32,
}

/// The deterministic content of page `pgno` written with `seed` by transaction `txn`.
pub fn page_bytes(pgno: u32, seed: u8, txn: u64) -> Vec<u8> {
    let mut p: Vec<u8> = (0..PS)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(seed | 1)))
        .collect();
    p[..4].copy_from_slice(&pgno.to_le_bytes());
    p[4..12].copy_from_slice(&txn.to_le_bytes());
    p
}

/// A set being written, and the model of the database it holds.
pub struct Synth {
    pub set: PathBuf,
    set_id: String,
    chain_dir: PathBuf,
    /// The model: the database's pages now.
    pub pages: Vec<Vec<u8>>,
    /// Transaction number of the model's state.
    pub txn: u64,
    seq: u64,
    prev: [u8; 32],
    frame: u32,
    /// The image after every transaction, by transaction number.
    pub images: Vec<(u64, Vec<u8>)>,
    /// Write the next bundles as version 2: compressed against every page they write that
    /// existed before them (false: version 1).
    pub refs: bool,
}

impl Synth {
    /// A new set at `dir` whose generation 0 holds `initial` pages as transaction 1.
    pub fn new(dir: &Path, initial: u32) -> Self {
        let set = dir.to_path_buf();
        let chain_dir = set.join(CHAIN);
        std::fs::create_dir_all(chain_dir.join("gen-000000000000")).unwrap();
        let set_id = "5e7005e7005e7005e7005e7005e70001".to_string();
        let rec = SetRecord {
            format: SET_FORMAT.into(),
            version: MANIFEST_VERSION,
            set_id: set_id.clone(),
            name: "synth".into(),
            source: SourceIdentity {
                path: "/synthetic/model.db".into(),
                host: "model".into(),
            },
            created: "2026-01-01T00:00:00Z".into(),
            tool: "walbundle test".into(),
            self_sha256: String::new(),
        };
        std::fs::write(set.join("walbundle-set.json"), rec.to_sealed_bytes()).unwrap();
        let pages: Vec<Vec<u8>> = (1..=initial).map(|p| page_bytes(p, p as u8, 1)).collect();
        let mut s = Self {
            set,
            set_id,
            chain_dir,
            pages,
            txn: 1,
            seq: 0,
            prev: [0; 32],
            frame: 0,
            images: Vec::new(),
            refs: false,
        };
        s.images.push((1, s.image()));
        s.write_generation();
        s
    }

    /// The model's database image.
    pub fn image(&self) -> Vec<u8> {
        self.pages.concat()
    }

    fn state(&self) -> u64 {
        self.pages
            .iter()
            .enumerate()
            .fold(0, |a, (i, p)| a ^ term_or_zero(PS as u32, i as u32 + 1, p))
    }

    fn write_generation(&mut self) {
        let gen_dir = self.chain_dir.join("gen-000000000000");
        let count = self.pages.len() as u32;
        let mut enc = ImageEncoder::new(Vec::new(), 1, 0, PS as u32, count).unwrap();
        for p in &self.pages {
            enc.write_page(p).unwrap();
        }
        let (bytes, _) = enc.finish().unwrap();
        let image = gen_dir.join("image.zst");
        std::fs::write(&image, &bytes).unwrap();
        let sum =
            decode_image_unchecked(&image, PS as u32, count, None, |_, _| Ok(()), |_| {}).unwrap();
        let m = GenerationManifest {
            format: GENERATION_FORMAT.into(),
            version: MANIFEST_VERSION,
            set_id: self.set_id.clone(),
            chain_id: CHAIN.into(),
            seq: 0,
            txn: self.txn,
            state_time: "2026-01-01T00:00:00Z".into(),
            created: "2026-01-01T00:00:00Z".into(),
            tool: "walbundle test".into(),
            origin: Origin::Snapshot {
                journal_mode: "wal".into(),
                reason: "synthetic".into(),
                previous_chain: None,
            },
            page_size: PS as u32,
            page_count: count,
            state_checksum: sum.state.to_hex(),
            image: ImageInfo::of(&sum),
            wal: None,
            check: "none".into(),
            self_sha256: String::new(),
        };
        assert_eq!(
            sum.state.0,
            self.state(),
            "image state differs from the model's"
        );
        std::fs::write(gen_dir.join("manifest.json"), m.to_sealed_bytes()).unwrap();
        self.prev = sha_bytes(&sum.sha256).unwrap();
    }

    /// Apply `txns` to the model and write them as the next bundle.
    pub fn bundle(&mut self, txns: &[Txn]) -> PathBuf {
        assert!(!txns.is_empty());
        let before = (self.pages.len() as u32, self.state(), self.txn);
        let first_frame = self.frame + 1;
        let pages_before = self.pages.clone();
        let mut body = if self.refs {
            BodyEncoder::deferred(Vec::new(), PS as u32, 1, 0).unwrap()
        } else {
            BodyEncoder::new(PS as u32, 1).unwrap()
        };
        let mut refs = std::collections::BTreeSet::new();
        let first_time = T0 + (self.txn as i64 + 1) * 1_000_000;
        for t in txns {
            self.txn += 1;
            let mut written = Vec::new();
            for &(pgno, seed) in &t.writes {
                if self.refs && pgno <= before.0 {
                    refs.insert(pgno);
                }
                let page = page_bytes(pgno, seed, self.txn);
                let i = pgno as usize - 1;
                while self.pages.len() <= i {
                    self.pages.push(vec![0; PS]);
                }
                self.pages[i] = page.clone();
                written.push((pgno, page));
            }
            self.pages.resize(t.count_after as usize, vec![0; PS]);
            // A commit always has a frame (SQLite's commit frame holds a page).
            self.frame += (written.len() as u32).max(1);
            let meta = TxnMeta {
                time_us: T0 + self.txn as i64 * 1_000_000,
                page_count: t.count_after,
                commit_frame: self.frame,
                state_after: self.state(),
            };
            body.begin_txn(&meta, written.len() as u32).unwrap();
            for (pgno, page) in &written {
                body.page(*pgno, page).unwrap();
            }
            body.end_txn().unwrap();
            self.images.push((self.txn, self.image()));
        }
        let list: Vec<u32> = refs.into_iter().collect();
        let reference: Vec<u8> = list
            .iter()
            .flat_map(|&p| pages_before[p as usize - 1].clone())
            .collect();
        let (b, raw) = body.finish_with_reference(&list, reference).unwrap();
        self.seq += 1;
        let header = BundleHeader {
            set_id: set_id_bytes(&self.set_id).unwrap(),
            chain_id: CHAIN.into(),
            seq: self.seq,
            prev_sha256: self.prev,
            salts: (7, 9),
            first_frame,
            last_frame: self.frame,
            end_checksum: (1, 2),
            page_size: PS as u32,
            page_count_before: before.0,
            page_count_after: self.pages.len() as u32,
            txn_count: txns.len() as u32,
            first_txn: before.2 + 1,
            state_before: before.1,
            state_after: self.state(),
            first_time_us: first_time,
            last_time_us: T0 + self.txn as i64 * 1_000_000,
            body_len: 0,
            body_raw_len: 0,
            ref_count: list.len() as u32,
        };
        let (bytes, digest) = assemble(header, &b, raw);
        let path = self.chain_dir.join(file_name(self.seq));
        std::fs::write(&path, bytes).unwrap();
        self.prev = digest;
        path
    }
}

/// The size-rules workload (format/README.md, section 8; the `sizes` fixture): growth without
/// writes, a write then a shrink that drops it, regrowth (the dropped page returns as zeros),
/// and gaps of unwritten pages below a written one.
pub fn sizes_workload(set: &Path) -> Synth {
    let mut m = Synth::new(set, 2);
    let txn = |writes: &[(u32, u8)], count_after: u32| Txn {
        writes: writes.to_vec(),
        count_after,
    };
    m.bundle(&[txn(&[(1, 3)], 4), txn(&[(4, 9)], 4)]);
    m.bundle(&[txn(&[(2, 4)], 3), txn(&[(1, 5)], 4)]);
    m.bundle(&[txn(&[(7, 6)], 7), txn(&[(1, 7)], 5), txn(&[(9, 8)], 9)]);
    m
}
