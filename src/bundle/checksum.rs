//! The database *state checksum*: a 64-bit digest of a database image that can be updated from
//! the pages a transaction changes, without reading the rest (LTX's idea; see `format/`
//! "State checksum").
//!
//! `state = XOR over every page p of the image, except the lock-byte page, of
//! XXH3-64(page bytes, seed = p)`. XOR makes the update cheap: replacing page p removes the old
//! page's term and adds the new one's; truncation removes the terms of the dropped pages.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Offset of SQLite's lock byte ("pending byte"); the page holding it is never read or written.
pub const PENDING_BYTE: u64 = 0x4000_0000;

/// Page number of the lock-byte page for `page_size`.
pub fn lock_byte_page(page_size: u32) -> u32 {
    // page_size is a power of two in 512..=65536, so this is at most 2^21 + 1.
    u32::try_from(PENDING_BYTE / u64::from(page_size.max(1))).unwrap_or(u32::MAX - 1) + 1
}

/// The term one page contributes.
pub fn page_term(pgno: u32, page: &[u8]) -> u64 {
    xxh3_64_with_seed(page, u64::from(pgno))
}

/// The term page `pgno` contributes, 0 for the lock-byte page (which never contributes).
pub fn term_or_zero(page_size: u32, pgno: u32, page: &[u8]) -> u64 {
    if pgno == lock_byte_page(page_size) {
        0
    } else {
        page_term(pgno, page)
    }
}

/// A running state checksum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateChecksum(pub u64);

impl StateChecksum {
    /// Add (or, applied twice, remove) page `pgno`'s content. The lock-byte page is ignored.
    pub fn toggle(&mut self, page_size: u32, pgno: u32, page: &[u8]) {
        if pgno != lock_byte_page(page_size) {
            self.0 ^= page_term(pgno, page);
        }
    }

    /// Hex form used in manifests (16 lowercase digits).
    pub fn to_hex(self) -> String {
        format!("{:016x}", self.0)
    }

    /// Parse the hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Self)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn lock_byte_page_numbers() {
        assert_eq!(lock_byte_page(4096), 262_145);
        assert_eq!(lock_byte_page(65536), 16_385);
        assert_eq!(lock_byte_page(512), 2_097_153);
    }

    #[test]
    fn toggle_is_its_own_inverse_and_order_free() {
        let (a, b) = (vec![1u8; 512], vec![2u8; 512]);
        let mut s = StateChecksum::default();
        s.toggle(512, 1, &a);
        s.toggle(512, 2, &b);
        let mut t = StateChecksum::default();
        t.toggle(512, 2, &b);
        t.toggle(512, 1, &a);
        assert_eq!(s, t);
        s.toggle(512, 2, &b);
        s.toggle(512, 1, &a);
        assert_eq!(s, StateChecksum::default());
        assert_eq!(StateChecksum::from_hex(&t.to_hex()), Some(t));
    }
}
