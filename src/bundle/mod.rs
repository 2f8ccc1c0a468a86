//! Bytes of the on-disk format that need no I/O: checksums and codecs.

pub mod checksum;
pub mod image;
pub mod wbb;
