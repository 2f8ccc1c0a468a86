//! Generation images: the database file, page by page, as one zstd frame (`format/`
//! "Generation image"). A plain zstd frame on purpose: `zstd -d image.zst -o app.db` recovers
//! the database with no walbundle at hand.
//!
//! The encoder hashes what it compresses and what it writes; the decoder bounds its window and
//! its output by what the manifest honestly claims, and checks every hash and the state
//! checksum, so a damaged or hostile image is refused with the field that is wrong.

use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::checksum::StateChecksum;
use crate::bundle::manifest::{GenerationManifest, hex};
use crate::error::{Error, Result};

/// Largest zstd window the decoder accepts: 2^27 = 128 MiB, zstd's own default limit. An
/// honest walbundle image uses far less; a crafted one cannot make us allocate more.
pub const MAX_WINDOW_LOG: u32 = 27;

/// Bytes of pages the image decoder hands over at a time.
const DECODE_CHUNK_BYTES: usize = 1 << 20;

/// Chunks decoded ahead of the pages being hashed and written.
const DECODE_CHUNKS: usize = 4;

/// A reader that hashes and counts what passes through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    sha: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            sha: Sha256::new(),
            len: 0,
        }
    }
    /// Read the rest, then return bytes read and SHA-256 in hex.
    pub fn drain(mut self) -> io::Result<(u64, String)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.len, hex(&self.sha.finalize())))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// What an encoded image turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// Compressed bytes.
    pub size: u64,
    /// SHA-256 of the compressed bytes.
    pub sha256: String,
    /// Uncompressed bytes.
    pub raw_size: u64,
    /// SHA-256 of the uncompressed bytes.
    pub raw_sha256: String,
    /// State checksum of the pages.
    pub state: StateChecksum,
    /// Pages written.
    pub pages: u32,
}

/// What the encoder knows without hashing (hashes come from decoding what it wrote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedImage {
    /// Compressed bytes written.
    pub size: u64,
    /// Uncompressed bytes.
    pub raw_size: u64,
    /// State checksum of the pages given.
    pub state: StateChecksum,
    /// Pages given.
    pub pages: u32,
}

/// The zstd level of generation images unless told otherwise. Measured on 100 MB databases
/// (docs/performance.md): level 2 stores within 0.1% of level 3 on half-random data and 2% more
/// on text, at 70% of level 3's CPU; level 1 stores 24% more on text.
pub const DEFAULT_LEVEL: i32 = 2;

/// Streams pages into a compressed image. It computes the state checksum of what it is given,
/// but no SHA-256: those are taken from decoding the written image (which proves the artifact
/// rather than the intent), keeping the reading thread free to read.
pub struct ImageEncoder<W: Write> {
    enc: zstd::stream::write::Encoder<'static, CountingWriter<W>>,
    terms: Option<Vec<u64>>,
    state: StateChecksum,
    page_size: u32,
    pages: u32,
    raw: u64,
}

impl<W: Write> ImageEncoder<W> {
    /// An encoder at zstd `level` with `workers` compression threads (0: compress inline),
    /// pledging `page_count` pages so the frame records its content size.
    pub fn new(
        w: W,
        level: i32,
        workers: u32,
        page_size: u32,
        page_count: u32,
    ) -> io::Result<Self> {
        let mut enc =
            zstd::stream::write::Encoder::new(CountingWriter { inner: w, len: 0 }, level)?;
        enc.include_checksum(true)?;
        enc.include_contentsize(true)?;
        enc.set_pledged_src_size(Some(u64::from(page_size) * u64::from(page_count)))?;
        if workers > 0 {
            enc.multithread(workers)?;
            // Smaller jobs than zstd's default (4 windows) keep memory flat and low.
            enc.set_parameter(zstd::stream::raw::CParameter::JobSize(2 << 20))?;
        }
        Ok(Self {
            enc,
            terms: None,
            state: StateChecksum::default(),
            page_size,
            pages: 0,
            raw: 0,
        })
    }

    /// Also keep each page's state-checksum term (8 bytes a page), for a capturer that must
    /// update the state from changed pages alone.
    pub fn collect_terms(&mut self, capacity: u32) {
        self.terms = Some(Vec::with_capacity(capacity as usize));
    }

    /// The collected terms (empty unless [`Self::collect_terms`] was called).
    pub fn take_terms(&mut self) -> Vec<u64> {
        self.terms.take().unwrap_or_default()
    }

    /// Append the next page (page numbers are implied: 1, 2, ...).
    pub fn write_page(&mut self, page: &[u8]) -> io::Result<()> {
        debug_assert_eq!(page.len(), self.page_size as usize);
        self.pages += 1;
        if let Some(t) = self.terms.as_mut() {
            t.push(super::checksum::term_or_zero(
                self.page_size,
                self.pages,
                page,
            ));
        }
        self.state.toggle(self.page_size, self.pages, page);
        self.raw += page.len() as u64;
        self.enc.write_all(page)
    }

    /// Finish the frame; returns the inner writer and what was written.
    pub fn finish(mut self) -> io::Result<(W, EncodedImage)> {
        self.terms = None;
        let cw = self.enc.finish()?;
        Ok((
            cw.inner,
            EncodedImage {
                size: cw.len,
                raw_size: self.raw,
                state: self.state,
                pages: self.pages,
            },
        ))
    }
}

/// Counts bytes written through it.
#[derive(Debug)]
pub struct CountingWriter<W> {
    inner: W,
    len: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decode the image at `path` described by `m`, handing each page to `sink(pgno, page)`, and
/// check sizes, both hashes and the state checksum. `progress(bytes)` is called per page.
///
/// # Errors
/// `Corrupt` naming `path` and what disagrees; `Io` on read failures; any error from `sink`.
pub fn decode_image(
    path: &Path,
    m: &GenerationManifest,
    sink: impl FnMut(u32, &[u8]) -> Result<()>,
    progress: impl FnMut(u64),
) -> Result<ImageSummary> {
    let s = decode_image_unchecked(
        path,
        m.page_size,
        m.page_count,
        Some(m.image.size),
        sink,
        progress,
    )?;
    s.matches(path, m)?;
    Ok(s)
}

impl ImageSummary {
    /// Require this decoded image to be the one manifest `m` describes.
    ///
    /// # Errors
    /// `Corrupt` naming `path` and the first field that disagrees.
    pub fn matches(&self, path: &Path, m: &GenerationManifest) -> Result<()> {
        if self.size != m.image.size {
            return Err(Error::corrupt(
                path,
                format!(
                    "image is {} bytes, manifest field `image.size` says {}",
                    self.size, m.image.size
                ),
            ));
        }
        if self.sha256 != m.image.sha256 {
            return Err(Error::corrupt(
                path,
                "SHA-256 of the image file does not match manifest `image.sha256`",
            ));
        }
        if self.raw_sha256 != m.image.raw_sha256 {
            return Err(Error::corrupt(
                path,
                "SHA-256 of the decompressed image does not match `image.raw_sha256`",
            ));
        }
        if self.state.to_hex() != m.state_checksum {
            return Err(Error::corrupt(
                path,
                format!(
                    "state checksum {} does not match manifest `state_checksum` {}",
                    self.state.to_hex(),
                    m.state_checksum
                ),
            ));
        }
        Ok(())
    }
}

/// Decode `page_count` pages of `page_size` from the image at `path` and compute (not check)
/// its hashes and state checksum. The frame must hold exactly that many bytes; with
/// `expected_size`, the file must be exactly that long.
///
/// # Errors
/// `Corrupt` for a short, long or undecodable image; `Io` on read failures.
pub fn decode_image_unchecked(
    path: &Path,
    page_size: u32,
    page_count: u32,
    expected_size: Option<u64>,
    mut sink: impl FnMut(u32, &[u8]) -> Result<()>,
    mut progress: impl FnMut(u64),
) -> Result<ImageSummary> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::corrupt(path, "image file is missing")
        } else {
            Error::io(path, "opening image", e)
        }
    })?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(path, "reading metadata", e))?
        .len();
    if let Some(want) = expected_size
        && file_len != want
    {
        return Err(Error::corrupt(
            path,
            format!("image is {file_len} bytes, manifest field `image.size` says {want}"),
        ));
    }
    // Two threads: one reads, hashes and decompresses the frame into chunks of pages; this one
    // hashes the pages, adds up the state checksum and hands them to `sink`. The chunks go
    // round between the two (at most DECODE_CHUNKS in use), so memory stays a few MiB.
    let ps = page_size as usize;
    let chunk_pages = (DECODE_CHUNK_BYTES / ps).max(1);
    let total = u64::from(page_size) * u64::from(page_count);
    let mut raw_sha = Sha256::new();
    let mut state = StateChecksum::default();
    let (size, sha256) = std::thread::scope(|s| -> Result<(u64, String)> {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>>>(DECODE_CHUNKS);
        let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let decoder = s.spawn(move || -> Result<(u64, String)> {
            let zerr = |e: io::Error| {
                Error::corrupt(
                    path,
                    format!("compressed stream is damaged or truncated ({e})"),
                )
            };
            let hr = HashingReader::new(file);
            let mut dec =
                zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 17, hr))
                    .map_err(|e| Error::io(path, "starting decompression", e))?;
            dec.window_log_max(MAX_WINDOW_LOG)
                .map_err(|e| Error::io(path, "configuring decoder", e))?;
            let mut dec = dec.single_frame();
            let mut left = total;
            while left > 0 {
                let want = usize::try_from(left.min((chunk_pages * ps) as u64)).unwrap_or(ps);
                let mut buf = free_rx.try_recv().unwrap_or_default();
                buf.resize(want, 0);
                let n = match super::read_up_to(&mut dec, &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = full_tx.send(Err(zerr(e)));
                        return Ok((0, String::new()));
                    }
                };
                buf.truncate(n);
                if full_tx.send(Ok(buf)).is_err() {
                    return Ok((0, String::new())); // the reader stopped (its sink failed)
                }
                if n < want {
                    return Ok((0, String::new())); // truncated: the reader says where
                }
                left -= n as u64;
            }
            drop(full_tx);
            // The frame must end exactly here: one more byte means the image lies about its size.
            let mut extra = [0u8; 1];
            if dec.read(&mut extra).map_err(zerr)? != 0 {
                return Err(Error::corrupt(
                    path,
                    format!("image decompresses to more than page_size x page_count ({total})"),
                ));
            }
            dec.finish()
                .into_inner()
                .drain()
                .map_err(|e| Error::io(path, "reading", e))
        });
        let mut pgno = 0u32;
        for chunk in &full_rx {
            let chunk = chunk?;
            for page in chunk.chunks_exact(ps) {
                pgno += 1;
                raw_sha.update(page);
                state.toggle(page_size, pgno, page);
                sink(pgno, page)?;
                progress(u64::from(page_size));
            }
            let _ = free_tx.send(chunk);
        }
        let decoded = decoder.join().unwrap_or_else(|_| {
            Err(Error::io(
                path,
                "decompressing",
                io::Error::other("the decoding thread failed"),
            ))
        })?;
        // The decoder stops at the first short chunk; a partial last page does not count.
        if pgno < page_count {
            return Err(Error::corrupt(
                path,
                format!(
                    "image ends at page {pgno} of {page_count} (manifest `page_count`): truncated"
                ),
            ));
        }
        Ok(decoded)
    })?;
    Ok(ImageSummary {
        size,
        sha256,
        raw_size: u64::from(page_size) * u64::from(page_count),
        raw_sha256: hex(&raw_sha.finalize()),
        state,
        pages: page_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: u32 = 4096;

    /// A plain zstd frame of `pages` pages, page `i` filled with byte `i`.
    fn image(pages: u32) -> tempfile::NamedTempFile {
        let raw: Vec<u8> = (1..=pages)
            .flat_map(|i| std::iter::repeat_n(i as u8, PS as usize))
            .collect();
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), zstd::encode_all(&raw[..], 1).unwrap()).unwrap();
        t
    }

    fn decode(t: &tempfile::NamedTempFile, pages: u32) -> (Result<ImageSummary>, Vec<u32>) {
        let mut seen = Vec::new();
        let r = decode_image_unchecked(
            t.path(),
            PS,
            pages,
            None,
            |pgno, page| {
                assert!(page.iter().all(|&b| b == pgno as u8), "page {pgno}");
                seen.push(pgno);
                Ok(())
            },
            |_| {},
        );
        (r, seen)
    }

    /// Pages come in order across the decoder's chunks, with the hashes of a one-pass decode.
    #[test]
    fn pages_across_chunks_in_order_with_their_hashes() {
        let per_chunk = (DECODE_CHUNK_BYTES / PS as usize) as u32;
        for pages in [
            0,
            1,
            per_chunk - 1,
            per_chunk,
            per_chunk + 1,
            3 * per_chunk + 7,
        ] {
            let t = image(pages);
            let (r, seen) = decode(&t, pages);
            let s = r.unwrap();
            assert_eq!(seen, (1..=pages).collect::<Vec<_>>());
            let raw: Vec<u8> = (1..=pages)
                .flat_map(|i| std::iter::repeat_n(i as u8, PS as usize))
                .collect();
            assert_eq!(s.raw_sha256, hex(&Sha256::digest(&raw)));
            let file = std::fs::read(t.path()).unwrap();
            assert_eq!(
                (s.size, s.sha256),
                (file.len() as u64, hex(&Sha256::digest(&file)))
            );
        }
    }

    /// A frame shorter or longer than the pages claimed is refused, saying where it ended,
    /// whether it ends at a chunk boundary or inside one.
    #[test]
    fn short_and_long_frames_are_refused() {
        let per_chunk = (DECODE_CHUNK_BYTES / PS as usize) as u32;
        for (have, claim) in [
            (per_chunk, per_chunk + 5),
            (per_chunk + 3, 2 * per_chunk),
            (0, 1),
        ] {
            let (r, seen) = decode(&image(have), claim);
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains(&format!("ends at page {have} of {claim}")),
                "{e}"
            );
            assert_eq!(seen.len() as u32, have);
        }
        let (r, _) = decode(&image(per_chunk + 1), per_chunk);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("more than page_size x page_count"), "{e}");
        // A partial page at the end.
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), zstd::encode_all(&[7u8; 5000][..], 1).unwrap()).unwrap();
        let e = decode_image_unchecked(t.path(), PS, 2, None, |_, _| Ok(()), |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("ends at page 1 of 2"), "{e}");
    }

    /// A damaged stream and a failing sink both stop the decode with their own error.
    #[test]
    fn damage_and_sink_errors_stop_the_decode() {
        let t = image(600);
        let mut b = std::fs::read(t.path()).unwrap();
        let n = b.len();
        b[n / 2] ^= 0x55;
        std::fs::write(t.path(), &b).unwrap();
        // Pages before the frame's checksum may be wrong; the decode as a whole fails.
        let r = decode_image_unchecked(t.path(), PS, 600, None, |_, _| Ok(()), |_| {});
        assert!(r.is_err());
        let t = image(600);
        let mut calls = 0;
        let r = decode_image_unchecked(
            t.path(),
            PS,
            600,
            None,
            |pgno, _| {
                calls += 1;
                if pgno == 300 {
                    Err(Error::usage("stop here"))
                } else {
                    Ok(())
                }
            },
            |_| {},
        );
        assert!(r.unwrap_err().to_string().contains("stop here"));
        assert_eq!(calls, 300);
    }
}
