//! WAL bundles (`b-<seq>.wbb`): the committed transactions of one capture window, in order, with
//! everything a replayer needs to prove the chain (`format/README.md` "WAL bundle").
//!
//! ```text
//! header (208 bytes, little-endian, CRC32 at 200)
//! body   (body_len bytes: version 2 only, ref_count page numbers (u32 each); then one zstd
//!         frame of transaction records, each with its own CRC32)
//! trailer (48 bytes: magic, file length, SHA-256 of everything before the trailer)
//! ```
//!
//! Version 2 adds *reference pages*: the frame is compressed against the versions, in the state
//! before the bundle, of the pages it lists (a zstd raw-content dictionary), which the replayer
//! always holds. A page a transaction rewrites mostly repeats bytes the replayer already has —
//! its own previous version, or cells a B-tree balance moved from a sibling — and zstd cannot
//! see across bundle files otherwise. A bundle without reference pages is written as version 1,
//! byte for byte as before.
//!
//! The encoder stages records (in memory, then in an unnamed temporary file) and compresses
//! them when the bundle is finished, once its reference pages are known; the decoder bounds
//! every length by what the header can honestly claim (pages ≤ frames covered, reference pages
//! ≤ [`MAX_REF_BYTES`]) and never panics.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// First 8 bytes of every bundle: high bit set, "WBN", CR LF, ^Z, LF (catches text-mode
/// mangling, as PNG's signature does).
pub const MAGIC: [u8; 8] = *b"\x89WBN\r\n\x1a\n";
/// First 8 bytes of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"WBN-END\0";
/// Newest format version this build writes and reads (version 1: no reference pages).
pub const VERSION: u16 = 2;
/// The most bytes of reference pages one bundle may name (both ends hold them in memory).
pub const MAX_REF_BYTES: u64 = 16 << 20;
/// Header length in bytes.
pub const HEADER_LEN: usize = 208;
/// Trailer length in bytes.
pub const TRAILER_LEN: usize = 48;
/// Length of a transaction record's fixed part.
pub const RECORD_HEADER_LEN: usize = 32;
/// Record tag of a transaction.
pub const TAG_TXN: u8 = b'T';

/// Bundle file name for sequence `seq`.
pub fn file_name(seq: u64) -> String {
    format!("b-{seq:012}.wbb")
}

/// Parse a bundle file name.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let d = name.strip_prefix("b-")?.strip_suffix(".wbb")?;
    (d.len() == 12 && d.bytes().all(|b| b.is_ascii_digit()))
        .then(|| d.parse().ok())
        .flatten()
}

/// The fixed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleHeader {
    /// Set id (16 bytes; 32 hex digits in manifests).
    pub set_id: [u8; 16],
    /// Chain id (ASCII, at most 32 bytes).
    pub chain_id: String,
    /// Sequence number in the chain, from 1.
    pub seq: u64,
    /// Digest of the previous bundle, or for seq 1 / a generation base: its link (see format).
    pub prev_sha256: [u8; 32],
    /// Salts of the WAL cycle the frames came from.
    pub salts: (u32, u32),
    /// First WAL frame covered.
    pub first_frame: u32,
    /// Last WAL frame covered (a commit frame).
    pub last_frame: u32,
    /// SQLite's running WAL checksum through `last_frame`.
    pub end_checksum: (u32, u32),
    /// Database page size.
    pub page_size: u32,
    /// Pages before the first transaction.
    pub page_count_before: u32,
    /// Pages after the last transaction.
    pub page_count_after: u32,
    /// Transactions in the bundle.
    pub txn_count: u32,
    /// Set-wide number of the first transaction.
    pub first_txn: u64,
    /// State checksum before the first transaction.
    pub state_before: u64,
    /// State checksum after the last transaction.
    pub state_after: u64,
    /// Capture time of the first transaction, µs since the Unix epoch.
    pub first_time_us: i64,
    /// Capture time of the last transaction, µs since the Unix epoch.
    pub last_time_us: i64,
    /// Compressed body length.
    pub body_len: u64,
    /// Uncompressed body length.
    pub body_raw_len: u64,
    /// Reference pages listed at the start of the body (0: a version 1 bundle).
    pub ref_count: u32,
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    let mut w = [0u8; 2];
    w.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(w)
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl BundleHeader {
    /// Encode to the 208 header bytes (CRC included).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        put_u16(&mut b, 8, if self.ref_count == 0 { 1 } else { 2 });
        put_u16(&mut b, 10, HEADER_LEN as u16);
        put_u32(&mut b, 12, self.ref_count);
        b[16..32].copy_from_slice(&self.set_id);
        let cid = self.chain_id.as_bytes();
        let n = cid.len().min(32);
        b[32..32 + n].copy_from_slice(&cid[..n]);
        put_u64(&mut b, 64, self.seq);
        b[72..104].copy_from_slice(&self.prev_sha256);
        put_u32(&mut b, 104, self.salts.0);
        put_u32(&mut b, 108, self.salts.1);
        put_u32(&mut b, 112, self.first_frame);
        put_u32(&mut b, 116, self.last_frame);
        put_u32(&mut b, 120, self.end_checksum.0);
        put_u32(&mut b, 124, self.end_checksum.1);
        put_u32(&mut b, 128, self.page_size);
        put_u32(&mut b, 132, self.page_count_before);
        put_u32(&mut b, 136, self.page_count_after);
        put_u32(&mut b, 140, self.txn_count);
        put_u64(&mut b, 144, self.first_txn);
        put_u64(&mut b, 152, self.state_before);
        put_u64(&mut b, 160, self.state_after);
        put_u64(&mut b, 168, self.first_time_us as u64);
        put_u64(&mut b, 176, self.last_time_us as u64);
        put_u64(&mut b, 184, self.body_len);
        put_u64(&mut b, 192, self.body_raw_len);
        let crc = crc32fast::hash(&b[..200]);
        put_u32(&mut b, 200, crc);
        b
    }

    /// Decode and validate header bytes read from `path` (named in errors).
    ///
    /// # Errors
    /// `Corrupt` naming the field that is wrong.
    pub fn decode(path: &std::path::Path, b: &[u8]) -> Result<Self> {
        let bad = |what: String| Error::corrupt(path, what);
        if b.len() < HEADER_LEN {
            return Err(bad(format!(
                "file is {} bytes, shorter than a bundle header ({HEADER_LEN})",
                b.len()
            )));
        }
        if b[..8] != MAGIC {
            return Err(bad("not a walbundle bundle (magic bytes differ)".into()));
        }
        let version = get_u16(b, 8);
        if !(1..=VERSION).contains(&version) {
            return Err(bad(format!(
                "bundle format version {version}; this walbundle reads versions 1 to {VERSION}"
            ))
            .hint("use the walbundle release that wrote this set, or a newer one"));
        }
        if usize::from(get_u16(b, 10)) != HEADER_LEN {
            return Err(bad(format!(
                "header length field is {}, expected {HEADER_LEN}",
                get_u16(b, 10)
            )));
        }
        let crc = crc32fast::hash(&b[..200]);
        if crc != get_u32(b, 200) {
            return Err(bad(
                "header CRC32 does not match: the header is damaged".into()
            ));
        }
        let mut set_id = [0u8; 16];
        set_id.copy_from_slice(&b[16..32]);
        let cid_end = b[32..64].iter().position(|&c| c == 0).unwrap_or(32);
        let chain_id = std::str::from_utf8(&b[32..32 + cid_end])
            .map_err(|_| bad("chain id is not ASCII".into()))?
            .to_string();
        let mut prev_sha256 = [0u8; 32];
        prev_sha256.copy_from_slice(&b[72..104]);
        let h = Self {
            set_id,
            chain_id,
            seq: get_u64(b, 64),
            prev_sha256,
            salts: (get_u32(b, 104), get_u32(b, 108)),
            first_frame: get_u32(b, 112),
            last_frame: get_u32(b, 116),
            end_checksum: (get_u32(b, 120), get_u32(b, 124)),
            page_size: get_u32(b, 128),
            page_count_before: get_u32(b, 132),
            page_count_after: get_u32(b, 136),
            txn_count: get_u32(b, 140),
            first_txn: get_u64(b, 144),
            state_before: get_u64(b, 152),
            state_after: get_u64(b, 160),
            first_time_us: get_u64(b, 168) as i64,
            last_time_us: get_u64(b, 176) as i64,
            body_len: get_u64(b, 184),
            body_raw_len: get_u64(b, 192),
            ref_count: get_u32(b, 12),
        };
        match (version, h.ref_count) {
            (1, 0) => {}
            (1, n) => {
                return Err(bad(format!(
                    "reserved field at offset 12 is {n} in a version 1 bundle"
                )));
            }
            (_, 0) => {
                return Err(bad(
                    "a version 2 bundle lists no reference pages (it would be version 1)".into(),
                ));
            }
            (_, n) => {
                if n > h.page_count_before
                    || u64::from(n) * u64::from(h.page_size) > MAX_REF_BYTES
                    || u64::from(n) * 4 > h.body_len
                {
                    return Err(bad(format!(
                        "field `ref_count` is {n}: more reference pages than the {} pages before \
                         the bundle, {MAX_REF_BYTES} bytes or the body allow",
                        h.page_count_before
                    )));
                }
            }
        }
        if !(512..=65536).contains(&h.page_size) || !h.page_size.is_power_of_two() {
            return Err(bad(format!("field `page_size` is {}", h.page_size)));
        }
        if h.seq == 0 {
            return Err(bad("field `seq` is 0; bundles count from 1".into()));
        }
        if h.first_frame == 0 || h.last_frame < h.first_frame {
            return Err(bad(format!(
                "frame range {}..{} is empty or reversed",
                h.first_frame, h.last_frame
            )));
        }
        let frames = u64::from(h.last_frame - h.first_frame) + 1;
        if h.txn_count == 0 || u64::from(h.txn_count) > frames {
            return Err(bad(format!(
                "field `txn_count` is {}, but the bundle covers {frames} frames",
                h.txn_count
            )));
        }
        if h.first_txn == 0
            || h.first_txn
                .checked_add(u64::from(h.txn_count))
                .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(bad(format!(
                "field `first_txn` is {}: transactions count from 1 and stay below 2^63",
                h.first_txn
            )));
        }
        if h.body_len > i64::MAX as u64 {
            return Err(bad(format!("field `body_len` is {}", h.body_len)));
        }
        if h.body_raw_len > h.max_raw_len() {
            return Err(bad(format!(
                "field `body_raw_len` is {}, more than {frames} frames can hold ({})",
                h.body_raw_len,
                h.max_raw_len()
            )));
        }
        Ok(h)
    }

    /// The most body bytes an honest bundle covering these frames can hold.
    pub fn max_raw_len(&self) -> u64 {
        let frames = u64::from(self.last_frame.saturating_sub(self.first_frame)) + 1;
        frames * (u64::from(self.page_size) + 4)
            + u64::from(self.txn_count) * (RECORD_HEADER_LEN as u64 + 4)
    }

    /// Set id as 32 hex digits.
    pub fn set_id_hex(&self) -> String {
        crate::bundle::manifest::hex(&self.set_id)
    }

    /// Set-wide number of the last transaction.
    pub fn last_txn(&self) -> u64 {
        self.first_txn + u64::from(self.txn_count) - 1
    }
}

/// Parse 32 hex digits into 16 bytes.
pub fn set_id_bytes(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parse 64 hex digits into 32 bytes.
pub fn sha_bytes(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One committed transaction as the encoder receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    /// Capture time, µs since the epoch.
    pub time_us: i64,
    /// Database size in pages after commit.
    pub page_count: u32,
    /// Frame index of its commit frame.
    pub commit_frame: u32,
    /// State checksum after it.
    pub state_after: u64,
}

/// Streams transaction records into a compressed body held in memory-bounded zstd output.
pub struct BodyEncoder<W: Write = Vec<u8>> {
    enc: Stage<W>,
    /// Compress at [`BodyEncoder::finish_with_reference`], never before (reference pages).
    deferred: bool,
    /// Bytes kept free at the start of a staged body for the reference pages, so that the
    /// reference can be put just before the body without copying the body ([`Self::reserve_front`]).
    front: usize,
    level: i32,
    window_log: u32,
    raw_len: u64,
    crc: crc32fast::Hasher,
    page_size: u32,
    pending_pages: u32,
    declared_pages: u32,
}

/// Where the raw body goes: held in memory while it is small (most bundles), so no zstd context
/// (about 1.5 MiB of tables at level 3 with a 16 MiB window) exists per pending bundle; into a
/// streaming encoder once it passes [`STAGE_BYTES`]. Either way the compressed bytes are the
/// same: the staged bytes go through the same streaming encoder, and zstd's output does not
/// depend on how its input is split.
enum Stage<W: Write> {
    Staged(Vec<u8>, W),
    Streaming(zstd::stream::write::Encoder<'static, W>),
    /// Deferred compression: the raw body so far in an unnamed temporary file.
    Spilled(std::io::BufWriter<std::fs::File>, W),
    Empty,
}

/// Raw body bytes held before a compressor is set up.
pub const STAGE_BYTES: usize = 256 << 10;
/// Raw body bytes a deferred encoder holds in memory before it spills to a temporary file
/// (capture seals bundles at 8 MiB, so only a single larger transaction spills).
pub const DEFER_BYTES: usize = 12 << 20;

/// Match-table size (log2 entries) of encoders with a reference, at most.
const REF_HASH_LOG: u32 = 19;

/// Match-table size (log2 entries) for a reference and a body of `span` bytes together: one
/// entry per 32 bytes, between 2^17 and [`REF_HASH_LOG`]. On the small preset's bundles (about
/// 3 MB of body against 0.7 MB of reference each) 2^17 compresses 1.6x faster than 2^19 for
/// 0.1% more bytes, and capture's memory drops by 3 – 4 MB; a 16 MiB span (a burst's full
/// bundle and its reference) keeps 2^19, which it needs (see [`reference_encoder`]).
fn reference_hash_log(span: u64) -> u32 {
    ceil_log2(span).saturating_sub(5).clamp(17, REF_HASH_LOG)
}

/// The smallest `k` with 2^`k` ≥ `n` (0 for 0 and 1).
fn ceil_log2(n: u64) -> u32 {
    64 - n.saturating_sub(1).leading_zeros()
}

/// The window (log2) that lets the end of a `raw_len` body reach the start of a reference of
/// `ref_len` bytes, at least `window_log`, within what readers accept.
fn reference_window(ref_len: usize, raw_len: u64, window_log: u32) -> u32 {
    let need = ceil_log2((ref_len as u64 + raw_len).max(1 << 10));
    need.max(window_log).clamp(10, super::image::MAX_WINDOW_LOG)
}

/// The zstd level a body compressed against its reference in memory is given for `level`:
/// level 1 becomes zstd's level -1. Such a body is mostly long matches into the reference and
/// into itself, plus the random bytes an application wrote; level -1 finds the same matches
/// (its minimum match is 6 bytes, not 7) and does not try to Huffman-code literals, which
/// random bytes defeat anyway. Measured on bodies capture wrote for the peer harness
/// (docs/performance.md): on the small preset's 22 bundles 0.1% smaller at 70 – 85% of level
/// 1's time; on the burst's 42, 0.05% smaller at 88 – 95%. A streamed body (one larger than
/// memory holds) and one with no reference keep level 1: there level -1 stored 0.5% more of
/// the burst.
fn prefix_level(level: i32) -> i32 {
    if level == 1 { -1 } else { level }
}

/// One frame of `body` compressed against `reference` held as a zstd prefix in the same buffer
/// just before it: zstd then sees one contiguous window (its fast path) rather than a separate
/// dictionary (measured: twice as fast at the same size). Decodes with `reference` as a
/// raw-content dictionary like any other version 2 frame.
fn compress_with_prefix(
    joined: &[u8],
    ref_len: usize,
    level: i32,
    window_log: u32,
) -> io::Result<Vec<u8>> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let e = |c: usize| io::Error::other(zstd::zstd_safe::get_error_name(c));
    let (prefix, src) = joined.split_at(ref_len);
    let tables = reference_hash_log(joined.len() as u64);
    let mut cctx = CCtx::create();
    for p in [
        CParameter::CompressionLevel(prefix_level(level)),
        CParameter::WindowLog(reference_window(ref_len, src.len() as u64, window_log)),
        CParameter::HashLog(tables),
        CParameter::ChainLog(tables),
        CParameter::ChecksumFlag(false),
        CParameter::DictIdFlag(false),
        CParameter::ContentSizeFlag(true),
    ] {
        cctx.set_parameter(p).map_err(e)?;
    }
    cctx.ref_prefix(prefix).map_err(e)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(src.len()));
    cctx.compress2(&mut out, src).map_err(e)?;
    Ok(out)
}

/// An encoder that compresses against `reference` (a raw-content dictionary) a body of
/// `raw_len` bytes, its window wide enough to reach the reference from the body's end (zstd
/// sizes its buffers by the pledged length, so small bundles stay small).
fn reference_encoder<'r, W: Write>(
    w: W,
    level: i32,
    window_log: u32,
    reference: &'r [u8],
    raw_len: u64,
) -> io::Result<zstd::stream::write::Encoder<'r, W>> {
    // A prefix is raw content whatever its first bytes are (a dictionary starting with zstd's
    // dictionary magic would be parsed as a trained one), as in `compress_with_prefix`.
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(w, level, reference)?;
    enc.include_checksum(false)?;
    enc.include_dictid(false)?;
    enc.window_log(reference_window(reference.len(), raw_len, window_log))?;
    // The default match tables (2^17 entries at level 3, 2^14 at level 1) forget most of a
    // reference of megabytes before the body comes to use it. Measured on 16 MiB windows of the
    // peer harness's burst workload (against no reference at level 3 = 1.00 size, 1.00 CPU):
    // default tables 0.93; 2^20 at level 3 0.77 at 5.1x the CPU; 2^19 at level 1 0.77 at 2.4x;
    // 2^18 at level 1 0.82 at 1.7x. zstd shrinks the tables again for small inputs.
    enc.set_parameter(zstd::stream::raw::CParameter::HashLog(REF_HASH_LOG))?;
    enc.set_parameter(zstd::stream::raw::CParameter::ChainLog(REF_HASH_LOG))?;
    enc.set_pledged_src_size(Some(raw_len))?;
    Ok(enc)
}

fn encoder<W: Write>(
    w: W,
    level: i32,
    window_log: u32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut enc = zstd::stream::write::Encoder::new(w, level)?;
    enc.include_checksum(false)?;
    if window_log > 0 {
        enc.window_log(window_log.clamp(10, super::image::MAX_WINDOW_LOG))?;
    }
    Ok(enc)
}

impl BodyEncoder<Vec<u8>> {
    /// A new body at zstd `level`.
    ///
    /// # Errors
    /// Only if zstd cannot be set up.
    pub fn new(page_size: u32, level: i32) -> io::Result<Self> {
        BodyEncoder::to_writer(Vec::new(), page_size, level, 0)
    }
}

impl<W: Write> BodyEncoder<W> {
    /// A body compressed into `w` (a file, for bundles larger than memory should hold), at zstd
    /// `level` with a window of 2^`window_log` bytes (0: zstd's default for the level). A window
    /// spanning the whole bundle lets zstd find the pages consecutive transactions rewrite
    /// (measured: 7% smaller than level 3's default window on the Litestream-comparison
    /// workload); readers accept windows up to 2^27.
    ///
    /// # Errors
    /// Only if zstd cannot be set up.
    pub fn to_writer(w: W, page_size: u32, level: i32, window_log: u32) -> io::Result<Self> {
        Ok(Self {
            enc: Stage::Staged(Vec::new(), w),
            deferred: false,
            front: 0,
            level,
            window_log,
            raw_len: 0,
            crc: crc32fast::Hasher::new(),
            page_size,
            pending_pages: 0,
            declared_pages: 0,
        })
    }

    /// As [`BodyEncoder::to_writer`], but nothing is compressed before
    /// [`BodyEncoder::finish_with_reference`]: the raw body waits in memory (up to
    /// [`DEFER_BYTES`]), then in an unnamed temporary file, so that the bundle's reference pages
    /// — known only once its last transaction is in — can shape the compression.
    ///
    /// # Errors
    /// Only if zstd cannot be set up.
    pub fn deferred(w: W, page_size: u32, level: i32, window_log: u32) -> io::Result<Self> {
        let mut e = Self::to_writer(w, page_size, level, window_log)?;
        e.deferred = true;
        Ok(e)
    }

    /// Keep room for `front` bytes of reference pages before a deferred body, before anything
    /// is written (zeroed now): at [`Self::finish_with_pages`] a reference that fits goes there,
    /// just before the body, so the body is not copied behind it. A guess: a reference that
    /// does not fit costs that one copy, as with no room.
    pub fn reserve_front(&mut self, front: usize) {
        if let Stage::Staged(buf, _) = &mut self.enc
            && self.deferred
            && buf.is_empty()
        {
            let front = front.min(MAX_REF_BYTES as usize);
            buf.resize(front, 0);
            self.front = front;
        }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.raw_len += b.len() as u64;
        self.write_raw(b)
    }

    fn write_raw(&mut self, b: &[u8]) -> io::Result<()> {
        let hold = if self.deferred {
            DEFER_BYTES
        } else {
            STAGE_BYTES
        };
        match &mut self.enc {
            Stage::Streaming(e) => return e.write_all(b),
            Stage::Spilled(f, _) => return f.write_all(b),
            Stage::Staged(buf, _) if buf.len() - self.front + b.len() <= hold => {
                buf.extend_from_slice(b);
                return Ok(());
            }
            _ => {}
        }
        if self.deferred {
            let Stage::Staged(buf, w) = std::mem::replace(&mut self.enc, Stage::Empty) else {
                return Err(io::Error::other("bundle body encoder used after a failure"));
            };
            let mut f = std::io::BufWriter::with_capacity(1 << 20, tempfile::tempfile()?);
            f.write_all(&buf[self.front..])?;
            f.write_all(b)?;
            self.enc = Stage::Spilled(f, w);
            return Ok(());
        }
        let mut e = self.start_stream()?;
        e.write_all(b)?;
        self.enc = Stage::Streaming(e);
        Ok(())
    }

    /// The streaming encoder, fed what was staged so far.
    fn start_stream(&mut self) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
        match std::mem::replace(&mut self.enc, Stage::Empty) {
            Stage::Staged(buf, w) => {
                let mut e = encoder(w, self.level, self.window_log)?;
                e.write_all(&buf[self.front..])?;
                Ok(e)
            }
            Stage::Streaming(e) => Ok(e),
            Stage::Spilled(..) | Stage::Empty => {
                Err(io::Error::other("bundle body encoder used after a failure"))
            }
        }
    }

    /// Start a transaction record of `n_pages` pages.
    pub fn begin_txn(&mut self, meta: &TxnMeta, n_pages: u32) -> io::Result<()> {
        debug_assert_eq!(self.pending_pages, self.declared_pages);
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0] = TAG_TXN;
        put_u32(&mut h, 4, n_pages);
        put_u64(&mut h, 8, meta.time_us as u64);
        put_u32(&mut h, 16, meta.page_count);
        put_u32(&mut h, 20, meta.commit_frame);
        put_u64(&mut h, 24, meta.state_after);
        self.crc = crc32fast::Hasher::new();
        self.pending_pages = 0;
        self.declared_pages = n_pages;
        self.put(&h)
    }

    /// Add a page to the open record.
    pub fn page(&mut self, pgno: u32, data: &[u8]) -> io::Result<()> {
        debug_assert_eq!(data.len(), self.page_size as usize);
        self.pending_pages += 1;
        self.put(&pgno.to_le_bytes())?;
        self.put(data)
    }

    /// Close the open record with its CRC32.
    pub fn end_txn(&mut self) -> io::Result<()> {
        let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
        self.raw_len += 4;
        self.write_raw(&crc.to_le_bytes())
    }

    /// Uncompressed bytes so far.
    pub fn raw_len(&self) -> u64 {
        self.raw_len
    }

    /// Finish: (compressed body, raw length).
    ///
    /// # Errors
    /// Only on zstd failure.
    pub fn finish(self) -> io::Result<(W, u64)> {
        self.finish_with_reference(&[], Vec::new())
    }

    /// Whether the raw body waits in a temporary file (it outgrew [`DEFER_BYTES`]).
    pub fn is_spilled(&self) -> bool {
        matches!(self.enc, Stage::Spilled(..))
    }

    /// Finish a body whose reference pages are `refs` (ascending), their contents in the state
    /// before the bundle concatenated in `reference`: writes the page list, then the frame
    /// compressed against `reference`. With no reference pages this is exactly
    /// [`BodyEncoder::finish`] (a version 1 body). Returns (output, raw length of the frame).
    ///
    /// # Errors
    /// On zstd or temporary-file failure, or reference pages given to an encoder that already
    /// streamed (not [`BodyEncoder::deferred`]).
    pub fn finish_with_reference(self, refs: &[u32], reference: Vec<u8>) -> io::Result<(W, u64)> {
        if reference.len() != refs.len() * self.page_size as usize {
            return Err(io::Error::other(
                "reference pages and their contents disagree",
            ));
        }
        let ps = self.page_size as usize;
        self.finish_with_pages(refs, reference.chunks(ps.max(1)))
    }

    /// [`BodyEncoder::finish_with_reference`] with the reference pages given one by one (each
    /// `page_size` bytes, in the order of `refs`): they go straight into the room
    /// [`BodyEncoder::reserve_front`] kept before the body, if they fit.
    ///
    /// # Errors
    /// As [`BodyEncoder::finish_with_reference`].
    pub fn finish_with_pages<'a>(
        mut self,
        refs: &[u32],
        pages: impl IntoIterator<Item = &'a [u8]>,
    ) -> io::Result<(W, u64)> {
        let raw_len = self.raw_len;
        let ps = self.page_size as usize;
        let disagree = || io::Error::other("reference pages and their contents disagree");
        if refs.is_empty() {
            if let Stage::Spilled(..) = self.enc {
                // Deferred with nothing to refer to: the raw body goes through a plain encoder.
                return self.compress_spilled(&[], &[]);
            }
            let e = self.start_stream()?;
            return Ok((e.finish()?, raw_len));
        }
        let ref_len = refs.len() * ps;
        match std::mem::replace(&mut self.enc, Stage::Empty) {
            Stage::Staged(mut buf, mut w) => {
                for p in refs {
                    w.write_all(&p.to_le_bytes())?;
                }
                let front = self.front;
                if ref_len > front {
                    // No room (or not enough) before the body: one copy of it behind the pages.
                    let mut joined = Vec::with_capacity(ref_len + buf.len() - front);
                    joined.resize(ref_len, 0);
                    joined.extend_from_slice(&buf[front..]);
                    buf = joined;
                }
                let at = front.saturating_sub(ref_len);
                let mut pages = pages.into_iter();
                for room in buf[at..at + ref_len].chunks_mut(ps.max(1)) {
                    match pages.next() {
                        Some(p) if p.len() == ps => room.copy_from_slice(p),
                        _ => return Err(disagree()),
                    }
                }
                if pages.next().is_some() {
                    return Err(disagree());
                }
                let frame = compress_with_prefix(&buf[at..], ref_len, self.level, self.window_log)?;
                drop(buf);
                w.write_all(&frame)?;
                Ok((w, raw_len))
            }
            other @ Stage::Spilled(..) => {
                self.enc = other;
                let mut reference = Vec::with_capacity(ref_len);
                for p in pages {
                    reference.extend_from_slice(p);
                }
                if reference.len() != ref_len {
                    return Err(disagree());
                }
                self.compress_spilled(refs, &reference)
            }
            Stage::Streaming(_) | Stage::Empty => Err(io::Error::other(
                "reference pages need a deferred body encoder",
            )),
        }
    }

    /// Compress a spilled raw body (against `reference`, if any) into the output.
    fn compress_spilled(mut self, refs: &[u32], reference: &[u8]) -> io::Result<(W, u64)> {
        use std::io::{Seek, SeekFrom};
        let raw_len = self.raw_len;
        let Stage::Spilled(f, mut w) = std::mem::replace(&mut self.enc, Stage::Empty) else {
            return Err(io::Error::other("bundle body encoder used after a failure"));
        };
        let mut f = f.into_inner().map_err(io::IntoInnerError::into_error)?;
        f.seek(SeekFrom::Start(0))?;
        for p in refs {
            w.write_all(&p.to_le_bytes())?;
        }
        // A body this large streams: the compressor's window buffer is as large as the
        // window, so it stays the configured one (the reference then helps the body's start).
        let mut e = if refs.is_empty() {
            encoder(w, self.level, self.window_log)?
        } else {
            let mut e = reference_encoder(w, self.level, self.window_log, reference, raw_len)?;
            if self.window_log > 0 {
                e.window_log(self.window_log.clamp(10, super::image::MAX_WINDOW_LOG))?;
            }
            e
        };
        std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, f), &mut e)?;
        Ok((e.finish()?, raw_len))
    }
}

/// Finish a bundle written to `file` (at `path`) as: 208 placeholder bytes, then the body from
/// [`BodyEncoder::to_writer`]. Writes the header (body lengths filled in) over the placeholder,
/// hashes the file, appends the trailer, and fsyncs. Returns the digest and the file's length.
///
/// # Errors
/// `Io` naming `path`.
pub fn finish_file(
    mut header: BundleHeader,
    file: &mut std::fs::File,
    path: &std::path::Path,
    raw_len: u64,
) -> Result<([u8; 32], u64)> {
    use crate::sys::{read_at, write_all_at};
    use std::io::{Seek, SeekFrom};
    let io = |e| Error::io(path, "writing bundle", e);
    let end = file.seek(SeekFrom::End(0)).map_err(io)?;
    header.body_len = end - HEADER_LEN as u64;
    header.body_raw_len = raw_len;
    write_all_at(file, &header.encode(), 0).map_err(io)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; usize::try_from(end).unwrap_or(usize::MAX).clamp(1, 1 << 20)];
    let mut off = 0u64;
    while off < end {
        let n = read_at(file, &mut buf, off).map_err(io)?;
        if n == 0 {
            return Err(Error::corrupt(path, "bundle shrank while being written"));
        }
        let n = n.min(usize::try_from(end - off).unwrap_or(usize::MAX));
        sha.update(&buf[..n]);
        off += n as u64;
    }
    let digest: [u8; 32] = sha.finalize().into();
    let total = end + TRAILER_LEN as u64;
    let mut t = Vec::with_capacity(TRAILER_LEN);
    t.extend_from_slice(&TRAILER_MAGIC);
    t.extend_from_slice(&total.to_le_bytes());
    t.extend_from_slice(&digest);
    write_all_at(file, &t, end).map_err(io)?;
    crate::fault::io::sync_file(file, path).map_err(io)?;
    Ok((digest, total))
}

/// Assemble a bundle file from its header (body lengths filled in here) and compressed body.
/// Returns the bytes and the bundle's digest (SHA-256 of everything before the trailer).
pub fn assemble(mut header: BundleHeader, body: &[u8], raw_len: u64) -> (Vec<u8>, [u8; 32]) {
    header.body_len = body.len() as u64;
    header.body_raw_len = raw_len;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(body);
    let digest: [u8; 32] = Sha256::digest(&out).into();
    let total = (out.len() + TRAILER_LEN) as u64;
    out.extend_from_slice(&TRAILER_MAGIC);
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&digest);
    (out, digest)
}

/// A decoded transaction record (pages are streamed to the caller, not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    /// Capture time, µs.
    pub time_us: i64,
    /// Pages after commit.
    pub page_count: u32,
    /// Commit frame index.
    pub commit_frame: u32,
    /// State checksum after it.
    pub state_after: u64,
    /// Pages in the record.
    pub n_pages: u32,
}

/// A bundle read from disk and checked at file level: header CRC, length, trailer digest.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The header.
    pub header: BundleHeader,
    /// SHA-256 of everything before the trailer: what the next bundle's `prev_sha256` holds.
    pub digest: [u8; 32],
    /// Reference pages (ascending page numbers; empty in version 1): the body decodes against
    /// their contents in the state before the bundle, in this order.
    pub refs: Vec<u32>,
    /// The file (read again, streaming, by [`Bundle::replay`]).
    path: std::path::PathBuf,
}

/// Read and check a bundle file: size bounds, header, trailer, digest. Pages are not decoded.
///
/// # Errors
/// `Corrupt` naming the file and the part that is wrong; `Io` if unreadable.
pub fn read_bundle(path: &std::path::Path) -> Result<Bundle> {
    let mut f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::corrupt(path, "bundle file is missing")
        } else {
            Error::io(path, "opening bundle", e)
        }
    })?;
    let len = f
        .metadata()
        .map_err(|e| Error::io(path, "reading metadata", e))?
        .len();
    let mut head = [0u8; HEADER_LEN];
    let n = super::read_up_to(&mut f, &mut head).map_err(|e| Error::io(path, "reading", e))?;
    let header = BundleHeader::decode(path, &head[..n])?;
    let want = HEADER_LEN as u64 + header.body_len + TRAILER_LEN as u64;
    if len != want {
        return Err(Error::corrupt(
            path,
            format!(
                "file is {len} bytes; its header says {want} (header + body_len + trailer): truncated or padded"
            ),
        ));
    }
    // Streaming: hash everything before the trailer, then check the trailer. Memory stays one
    // buffer whatever the bundle's size.
    let t = len - TRAILER_LEN as u64;
    let mut sha = Sha256::new();
    sha.update(head);
    let mut list = vec![0u8; header.ref_count as usize * 4];
    if super::read_up_to(&mut f, &mut list).map_err(|e| Error::io(path, "reading", e))?
        != list.len()
    {
        return Err(Error::corrupt(path, "file changed size while being read"));
    }
    sha.update(&list);
    let mut rest = (&mut f).take(t - HEADER_LEN as u64 - list.len() as u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = rest
            .read(&mut buf)
            .map_err(|e| Error::io(path, "reading", e))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    let mut trailer = [0u8; TRAILER_LEN];
    if super::read_up_to(&mut f, &mut trailer).map_err(|e| Error::io(path, "reading", e))?
        != TRAILER_LEN
    {
        return Err(Error::corrupt(path, "file changed size while being read"));
    }
    if trailer[..8] != TRAILER_MAGIC {
        return Err(Error::corrupt(
            path,
            "trailer magic missing: the file is truncated or damaged",
        ));
    }
    if get_u64(&trailer, 8) != len {
        return Err(Error::corrupt(
            path,
            "trailer length field does not match the file length",
        ));
    }
    let digest: [u8; 32] = sha.finalize().into();
    if trailer[16..] != digest {
        return Err(Error::corrupt(
            path,
            "SHA-256 over the bundle does not match its trailer: damaged",
        ));
    }
    let refs: Vec<u32> = list.chunks_exact(4).map(|c| get_u32(c, 0)).collect();
    let lock = super::checksum::lock_byte_page(header.page_size);
    let mut last = 0u32;
    for &p in &refs {
        if p <= last || p > header.page_count_before || p == lock {
            return Err(Error::corrupt(
                path,
                format!(
                    "reference page {p} is out of order, beyond the {} pages before the bundle, \
                     or the lock-byte page",
                    header.page_count_before
                ),
            ));
        }
        last = p;
    }
    Ok(Bundle {
        header,
        digest,
        refs,
        path: path.to_path_buf(),
    })
}

impl Bundle {
    /// Decode the body against `reference` (the contents of [`Bundle::refs`] in the state
    /// before the bundle, concatenated; empty for a version 1 bundle), calling
    /// `on_txn(txn_number, record)` before each record's pages (return false to stop before this
    /// transaction) and `on_page(pgno, page)` for each page (it may take the page by swapping
    /// another buffer into `page`, of any length), then `on_commit(txn_number, record)`
    /// once the record's CRC has been checked (return false to stop after it).
    ///
    /// # Errors
    /// `Corrupt` naming `path` for any malformed or lying record, or a reference of the wrong
    /// length; errors from the callbacks.
    pub fn replay(
        &self,
        path: &std::path::Path,
        reference: &[u8],
        mut on_txn: impl FnMut(u64, &TxnRecord) -> Result<bool>,
        mut on_page: impl FnMut(u32, &mut Vec<u8>) -> Result<()>,
        mut on_commit: impl FnMut(u64, &TxnRecord) -> Result<bool>,
    ) -> Result<()> {
        let h = &self.header;
        if reference.len() as u64 != u64::from(h.ref_count) * u64::from(h.page_size) {
            return Err(Error::corrupt(
                path,
                format!(
                    "{} bytes of reference pages given for {} pages of {}",
                    reference.len(),
                    h.ref_count,
                    h.page_size
                ),
            ));
        }
        let mut file =
            std::fs::File::open(&self.path).map_err(|e| Error::io(path, "opening bundle", e))?;
        let list = u64::from(h.ref_count) * 4;
        std::io::Seek::seek(
            &mut file,
            std::io::SeekFrom::Start(HEADER_LEN as u64 + list),
        )
        .map_err(|e| Error::io(path, "reading bundle", e))?;
        let body = std::io::BufReader::with_capacity(1 << 17, file.take(h.body_len - list));
        let mut dec = if reference.is_empty() {
            zstd::stream::read::Decoder::with_buffer(body)
        } else {
            // A prefix, not a dictionary: zstd references the bytes where they are (a
            // dictionary is first copied into a table of its own, 3.5% of replay's main thread
            // on the burst preset's chain), and always as raw content, as section 16 says.
            zstd::stream::read::Decoder::with_ref_prefix(body, reference)
        }
        .map_err(|e| Error::io(path, "starting decompression", e))?;
        dec.window_log_max(super::image::MAX_WINDOW_LOG)
            .map_err(|e| Error::io(path, "configuring decoder", e))?;
        let mut dec = dec.single_frame().take(h.body_raw_len + 1);
        let zerr = |e: io::Error| Error::corrupt(path, format!("compressed body is damaged ({e})"));
        let page_size = h.page_size as usize;
        let mut page = vec![0u8; page_size];
        let mut raw_read: u64 = 0;
        let mut prev_commit: Option<(u32, i64)> = None;
        for i in 0..u64::from(h.txn_count) {
            let txn = h.first_txn + i;
            let mut rh = [0u8; RECORD_HEADER_LEN];
            if super::read_up_to(&mut dec, &mut rh).map_err(zerr)? != RECORD_HEADER_LEN {
                return Err(Error::corrupt(
                    path,
                    format!("body ends inside the header of transaction {txn}"),
                ));
            }
            if rh[0] != TAG_TXN {
                return Err(Error::corrupt(
                    path,
                    format!("record {i} has tag {:#04x}, not a transaction", rh[0]),
                ));
            }
            let rec = TxnRecord {
                n_pages: get_u32(&rh, 4),
                time_us: get_u64(&rh, 8) as i64,
                page_count: get_u32(&rh, 16),
                commit_frame: get_u32(&rh, 20),
                state_after: get_u64(&rh, 24),
            };
            let rec_len =
                RECORD_HEADER_LEN as u64 + u64::from(rec.n_pages) * (4 + page_size as u64) + 4;
            raw_read += rec_len;
            if raw_read > h.body_raw_len {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "transaction {txn} claims {} pages, more than `body_raw_len` leaves room for",
                        rec.n_pages
                    ),
                ));
            }
            if rec.commit_frame < h.first_frame || rec.commit_frame > h.last_frame {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "transaction {txn} commit frame {} outside the bundle's range",
                        rec.commit_frame
                    ),
                ));
            }
            if prev_commit.is_some_and(|(f, _)| rec.commit_frame <= f) {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "transaction {txn} commit frame {} does not follow the previous one's",
                        rec.commit_frame
                    ),
                ));
            }
            if i == 0 && rec.time_us != h.first_time_us {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "transaction {txn}'s capture time differs from the header's `first_time_us`"
                    ),
                ));
            }
            prev_commit = Some((rec.commit_frame, rec.time_us));
            let mut crc = crc32fast::Hasher::new();
            crc.update(&rh);
            if !on_txn(txn, &rec)? {
                return Ok(());
            }
            for _ in 0..rec.n_pages {
                let mut pg = [0u8; 4];
                if super::read_up_to(&mut dec, &mut pg).map_err(zerr)? != 4
                    || super::read_up_to(&mut dec, &mut page).map_err(zerr)? != page_size
                {
                    return Err(Error::corrupt(
                        path,
                        format!("body ends inside transaction {txn}"),
                    ));
                }
                crc.update(&pg);
                crc.update(&page);
                let pgno = u32::from_le_bytes(pg);
                if pgno == 0 || pgno > rec.page_count.max(1) {
                    return Err(Error::corrupt(
                        path,
                        format!(
                            "transaction {txn} writes page {pgno}, outside its database of {} pages",
                            rec.page_count
                        ),
                    ));
                }
                on_page(pgno, &mut page)?;
                // The callback may keep the page by swapping in a buffer of its own.
                page.resize(page_size, 0);
            }
            let mut c = [0u8; 4];
            if super::read_up_to(&mut dec, &mut c).map_err(zerr)? != 4 {
                return Err(Error::corrupt(
                    path,
                    format!("body ends before the CRC of transaction {txn}"),
                ));
            }
            if crc.finalize() != u32::from_le_bytes(c) {
                return Err(Error::corrupt(
                    path,
                    format!("CRC32 of transaction {txn}'s record does not match: damaged"),
                ));
            }
            if !on_commit(txn, &rec)? {
                return Ok(());
            }
        }
        if let Some((frame, time)) = prev_commit
            && (frame != h.last_frame || time != h.last_time_us)
        {
            return Err(Error::corrupt(
                path,
                "the last transaction's commit frame or capture time differs from the header's \
                 `last_frame` / `last_time_us`",
            ));
        }
        let mut extra = [0u8; 1];
        if super::read_up_to(&mut dec, &mut extra).map_err(zerr)? != 0 || raw_read != h.body_raw_len
        {
            return Err(Error::corrupt(
                path,
                "body holds more than its transactions (`body_raw_len` lies)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn header() -> BundleHeader {
        BundleHeader {
            set_id: [7; 16],
            chain_id: "20260101T000000Z-00000001".into(),
            seq: 1,
            prev_sha256: [1; 32],
            salts: (1, 2),
            first_frame: 1,
            last_frame: 3,
            end_checksum: (5, 6),
            page_size: 512,
            page_count_before: 2,
            page_count_after: 3,
            txn_count: 2,
            first_txn: 10,
            state_before: 11,
            state_after: 12,
            first_time_us: 100,
            last_time_us: 200,
            body_len: 0,
            body_raw_len: 0,
            ref_count: 0,
        }
    }

    #[test]
    fn round_trip_and_every_header_bit_flip_is_caught() {
        let h = header();
        let mut body = BodyEncoder::new(512, 3).unwrap();
        body.begin_txn(
            &TxnMeta {
                time_us: 100,
                page_count: 3,
                commit_frame: 2,
                state_after: 1,
            },
            2,
        )
        .unwrap();
        body.page(1, &[1u8; 512]).unwrap();
        body.page(3, &[3u8; 512]).unwrap();
        body.end_txn().unwrap();
        body.begin_txn(
            &TxnMeta {
                time_us: 200,
                page_count: 3,
                commit_frame: 3,
                state_after: 12,
            },
            1,
        )
        .unwrap();
        body.page(2, &[2u8; 512]).unwrap();
        body.end_txn().unwrap();
        let (b, raw) = body.finish().unwrap();
        let (bytes, _) = assemble(h.clone(), &b, raw);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.wbb");
        std::fs::write(&p, &bytes).unwrap();
        let bun = read_bundle(&p).unwrap();
        let mut seen = Vec::new();
        bun.replay(
            &p,
            &[],
            |_, _| Ok(true),
            |pg, d| {
                seen.push((pg, d[0]));
                Ok(())
            },
            |_, _| Ok(true),
        )
        .unwrap();
        assert_eq!(seen, vec![(1, 1), (3, 3), (2, 2)]);
        for i in 0..HEADER_LEN * 8 {
            let mut m = bytes.clone();
            m[i / 8] ^= 1 << (i % 8);
            std::fs::write(&p, &m).unwrap();
            assert!(read_bundle(&p).is_err(), "header bit {i} flip not caught");
        }
    }

    /// Match tables for a reference grow with what they index, up to 2^19.
    #[test]
    fn reference_match_tables_grow_with_the_span() {
        assert_eq!(super::reference_hash_log(0), 17);
        assert_eq!(super::reference_hash_log(512 << 10), 17);
        assert_eq!(super::reference_hash_log(4 << 20), 17);
        assert_eq!(super::reference_hash_log((4 << 20) + 1), 18);
        assert_eq!(super::reference_hash_log(8 << 20), 18);
        assert_eq!(super::reference_hash_log(16 << 20), 19);
        assert_eq!(super::reference_hash_log(u64::MAX), 19);
    }

    /// A deferred body (with `room` kept before it, if any) holding one transaction, at time
    /// 100, of pages 1..=`pages` with the contents `page` gives.
    fn one_txn_body(
        ps: usize,
        pages: u32,
        room: Option<usize>,
        page: impl Fn(u32) -> Vec<u8>,
    ) -> BodyEncoder {
        let mut body = BodyEncoder::deferred(Vec::new(), ps as u32, 1, 24).unwrap();
        if let Some(front) = room {
            body.reserve_front(front);
        }
        let meta = TxnMeta {
            time_us: 100,
            page_count: pages,
            commit_frame: pages,
            state_after: 1,
        };
        body.begin_txn(&meta, pages).unwrap();
        for p in 1..=pages {
            body.page(p, &page(p)).unwrap();
        }
        body.end_txn().unwrap();
        body
    }

    /// Room reserved before a deferred body changes no byte of what it encodes, whether the
    /// reference fits the room, fills it exactly, does not fit, or the body spills anyway; and
    /// pages of the wrong size or number are refused.
    #[test]
    fn reserved_room_changes_no_byte_of_the_body() {
        let ps = 4096usize;
        let encode = |room: Option<usize>, pages: u32, refs: &[u32]| {
            let body = one_txn_body(ps, pages, room, |p| {
                (0..ps).map(|i| ((i / 7) as u32 ^ p) as u8).collect()
            });
            let reference: Vec<u8> = (0..refs.len() * ps).map(|i| (i / 5) as u8).collect();
            body.finish_with_pages(refs, reference.chunks(ps)).unwrap()
        };
        let spill = (DEFER_BYTES / ps) as u32 + 2;
        for (pages, refs) in [(5u32, vec![1u32, 2, 3]), (5, vec![]), (spill, vec![1, 2])] {
            let want = encode(None, pages, &refs);
            let fill = refs.len() * ps;
            for room in [0, ps, fill, fill + 3 * ps] {
                assert!(
                    encode(Some(room), pages, &refs) == want,
                    "{pages} pages, room {room:?}"
                );
            }
        }
        let body = || {
            let mut b = BodyEncoder::deferred(Vec::new(), ps as u32, 1, 24).unwrap();
            b.reserve_front(8 * ps);
            b
        };
        let short = vec![0u8; ps - 1];
        assert!(body().finish_with_pages(&[1], [short.as_slice()]).is_err());
        let one = vec![0u8; ps];
        assert!(body().finish_with_pages(&[1, 2], [one.as_slice()]).is_err());
        let three = [one.as_slice(), one.as_slice(), one.as_slice()];
        assert!(body().finish_with_pages(&[1, 2], three).is_err());
    }

    /// A deferred body with reference pages round-trips in memory and spilled to a temporary
    /// file (past DEFER_BYTES), and decodes only against its reference.
    #[test]
    fn reference_pages_round_trip_in_memory_and_spilled() {
        let ps = 4096usize;
        // The second reference begins with zstd's dictionary magic: it is still raw content
        // (format §16), never parsed as a trained dictionary.
        let cases = [3u32, (DEFER_BYTES / ps) as u32 + 10]
            .into_iter()
            .flat_map(|pages| [(pages, false), (pages, true)]);
        for (pages, magic) in cases {
            let refs = [1u32, 2];
            let mut reference: Vec<u8> = (0..2 * ps).map(|i| (i * 7 % 251) as u8).collect();
            if magic {
                reference[..4].copy_from_slice(&0xEC30_A437u32.to_le_bytes());
            }
            let page = |p: u32| -> Vec<u8> {
                let mut v = reference[(p as usize % 2) * ps..(p as usize % 2 + 1) * ps].to_vec();
                v[..4].copy_from_slice(&p.to_le_bytes());
                v
            };
            let body = one_txn_body(ps, pages, None, page);
            assert_eq!(body.is_spilled(), pages > 3);
            let (b, raw) = body
                .finish_with_reference(&refs, reference.clone())
                .unwrap();
            let h = BundleHeader {
                page_size: ps as u32,
                first_frame: 1,
                last_frame: pages,
                txn_count: 1,
                page_count_before: 2,
                page_count_after: pages,
                first_time_us: 100,
                last_time_us: 100,
                ref_count: 2,
                ..header()
            };
            let (bytes, _) = assemble(h, &b, raw);
            assert_eq!(get_u16(&bytes, 8), 2, "version 2");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.wbb");
            std::fs::write(&path, &bytes).unwrap();
            let bun = read_bundle(&path).unwrap();
            assert_eq!(bun.refs, refs);
            let mut n = 0u32;
            bun.replay(
                &path,
                &reference,
                |_, _| Ok(true),
                |p, d| {
                    assert!(d.as_slice() == page(p).as_slice(), "page {p}");
                    n += 1;
                    Ok(())
                },
                |_, _| Ok(true),
            )
            .unwrap();
            assert_eq!(n, pages);
            let other: Vec<u8> = reference.iter().map(|b| b ^ 0x5a).collect();
            let bad = bun.replay(
                &path,
                &other,
                |_, _| Ok(true),
                |_, _| Ok(()),
                |_, _| Ok(true),
            );
            assert!(bad.is_err(), "decoded against another reference");
            assert!(
                bun.replay(
                    &path,
                    &reference[..ps],
                    |_, _| Ok(true),
                    |_, _| Ok(()),
                    |_, _| Ok(true)
                )
                .is_err()
            );
        }
    }
}
