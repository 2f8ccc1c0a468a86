//! Reading SQLite's WAL file and wal-index (`-shm`) header from outside the pager.
//!
//! Everything here reads with `pread` on file descriptors; nothing maps the live WAL (a
//! TRUNCATE checkpoint or `journal_size_limit` can shrink it under a mapping and SIGBUS us).
//! The layouts are SQLite's (sqlite.org/walformat.html, `src/wal.c`); see
//! `shared/sqlite-wal-notes.md` for the facts checked against the source.
//!
//! SQLite's WAL header and frame headers are big-endian by definition, hence the scoped lint
//! exception below; the wal-index header is in the host's native order, also by definition.
#![allow(clippy::big_endian_bytes, clippy::host_endian_bytes)]

use std::fs::File;
use std::io;

use crate::sys::pread_full;

/// Length of the WAL file header.
pub const WAL_HEADER_LEN: u64 = 32;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: u64 = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
const WAL_VERSION: u32 = 3_007_000;

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

fn ne32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(w)
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `s`.
/// Words are read big-endian if `big_endian`, else little-endian.
pub fn wal_checksum(big_endian: bool, data: &[u8], s: (u32, u32)) -> (u32, u32) {
    let (mut s0, mut s1) = s;
    for chunk in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(chunk, 0), be32(chunk, 4))
        } else {
            let mut a = [0u8; 4];
            let mut b = [0u8; 4];
            a.copy_from_slice(&chunk[..4]);
            b.copy_from_slice(&chunk[4..]);
            (u32::from_le_bytes(a), u32::from_le_bytes(b))
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    (s0, s1)
}

/// The 32-byte WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Whether frame checksums read words big-endian (magic `...83`).
    pub big_endian_cksum: bool,
    /// Database page size.
    pub page_size: u32,
    /// Checkpoint sequence number (per connection, not monotonic: informational only).
    pub ckpt_seq: u32,
    /// Salt-1 and salt-2: together they identify one WAL cycle.
    pub salts: (u32, u32),
    /// Checksum over header bytes 0..24; seeds frame 1's checksum.
    pub checksum: (u32, u32),
}

impl WalHeader {
    /// Parse and validate a WAL header. `None` if it is not a valid header (empty or torn file,
    /// or a WAL being reset right now): the caller treats that as "no frames".
    pub fn parse(b: &[u8; 32]) -> Option<Self> {
        let magic = be32(b, 0);
        let big_endian_cksum = match magic {
            MAGIC_LE => false,
            MAGIC_BE => true,
            _ => return None,
        };
        if be32(b, 4) != WAL_VERSION {
            return None;
        }
        let page_size = be32(b, 8);
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        let checksum = (be32(b, 24), be32(b, 28));
        if wal_checksum(big_endian_cksum, &b[..24], (0, 0)) != checksum {
            return None;
        }
        Some(Self {
            big_endian_cksum,
            page_size,
            ckpt_seq: be32(b, 12),
            salts: (be32(b, 16), be32(b, 20)),
            checksum,
        })
    }

    /// Read and parse the header of an open WAL file.
    pub fn read(f: &File) -> io::Result<Option<Self>> {
        let mut b = [0u8; 32];
        if pread_full(f, &mut b, 0)? < 32 {
            return Ok(None);
        }
        Ok(Self::parse(&b))
    }

    /// File offset of frame `i` (1-based).
    pub fn frame_offset(&self, i: u32) -> u64 {
        WAL_HEADER_LEN + u64::from(i - 1) * (u64::from(self.page_size) + FRAME_HEADER_LEN)
    }
}

/// A 24-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Page number this frame writes.
    pub pgno: u32,
    /// Database size in pages after commit; non-zero only on a commit frame.
    pub commit_size: u32,
    /// Salts copied from the WAL header when the frame was written.
    pub salts: (u32, u32),
    /// Running checksum through this frame.
    pub checksum: (u32, u32),
}

impl FrameHeader {
    /// Parse a frame header (no validation).
    pub fn parse(b: &[u8]) -> Self {
        Self {
            pgno: be32(b, 0),
            commit_size: be32(b, 4),
            salts: (be32(b, 8), be32(b, 12)),
            checksum: (be32(b, 16), be32(b, 20)),
        }
    }

    /// Read frame `i`'s header; `None` if the file ends before it.
    pub fn read(f: &File, hdr: &WalHeader, i: u32) -> io::Result<Option<Self>> {
        let mut b = [0u8; 24];
        if pread_full(f, &mut b, hdr.frame_offset(i))? < 24 {
            return Ok(None);
        }
        Ok(Some(Self::parse(&b)))
    }
}

/// The wal-index header as SQLite's readers see it (`WalIndexHdr`), plus `nBackfill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmHeader {
    /// Counter incremented by each transaction.
    pub change: u32,
    /// Index of the last valid (committed) frame in the WAL.
    pub mx_frame: u32,
    /// Database size in pages.
    pub n_page: u32,
    /// Running checksum of frame `mx_frame` (or of the header, after a reset).
    pub frame_cksum: (u32, u32),
    /// Salts of the current WAL cycle (stored as the WAL header's big-endian bytes).
    pub salts: (u32, u32),
    /// Frames already copied back into the database file.
    pub n_backfill: u32,
}

impl ShmHeader {
    /// Read the wal-index header from an open `-shm` file. Both copies must be equal,
    /// initialised, and carry a valid checksum; otherwise `None` (being rewritten: retry).
    pub fn read(f: &File) -> io::Result<Option<Self>> {
        let mut b = [0u8; 136];
        if pread_full(f, &mut b, 0)? < 136 {
            return Ok(None);
        }
        let (h1, h2) = (&b[..48], &b[48..96]);
        if h1 != h2 || h1[12] == 0 {
            return Ok(None);
        }
        // Checksum over the first 40 bytes in native word order, stored natively at 40.
        let mut s0: u32 = 0;
        let mut s1: u32 = 0;
        for chunk in h1[..40].chunks_exact(8) {
            s0 = s0.wrapping_add(ne32(chunk, 0)).wrapping_add(s1);
            s1 = s1.wrapping_add(ne32(chunk, 4)).wrapping_add(s0);
        }
        if (s0, s1) != (ne32(h1, 40), ne32(h1, 44)) {
            return Ok(None);
        }
        Ok(Some(Self {
            change: ne32(h1, 8),
            mx_frame: ne32(h1, 16),
            n_page: ne32(h1, 20),
            frame_cksum: (ne32(h1, 24), ne32(h1, 28)),
            // aSalt holds the WAL header's bytes verbatim (wal.c: "Big-endian salt values").
            salts: (be32(h1, 32), be32(h1, 36)),
            n_backfill: ne32(&b, 96),
        }))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn header_checksum_round_trip() {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&MAGIC_LE.to_be_bytes());
        b[4..8].copy_from_slice(&WAL_VERSION.to_be_bytes());
        b[8..12].copy_from_slice(&4096u32.to_be_bytes());
        b[16..20].copy_from_slice(&7u32.to_be_bytes());
        let c = wal_checksum(false, &b[..24], (0, 0));
        b[24..28].copy_from_slice(&c.0.to_be_bytes());
        b[28..32].copy_from_slice(&c.1.to_be_bytes());
        let h = WalHeader::parse(&b).expect("valid");
        assert_eq!(h.page_size, 4096);
        assert_eq!(h.salts, (7, 0));
        b[20] ^= 1;
        assert!(
            WalHeader::parse(&b).is_none(),
            "a flipped salt bit must fail the checksum"
        );
    }
}
