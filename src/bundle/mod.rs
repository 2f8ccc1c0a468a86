//! Bytes of the on-disk format that need no I/O: checksums and codecs.

pub mod checksum;
pub mod image;
pub mod manifest;
pub mod wbb;

/// Fill `buf` from `r` as far as it goes; returns the bytes read (fewer only at end of stream).
/// Decoders use it to tell a clean end from a truncated record.
pub(crate) fn read_up_to(f: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
