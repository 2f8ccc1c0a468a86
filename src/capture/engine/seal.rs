//! Writing bundles: the pending bundle streams into a temporary file in the chain folder and is
//! sealed (trailer, fsync) and published under its final name.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Capturer {
    /// Publish the pending bundle, if any.
    pub(super) fn seal(&mut self) -> Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let t0 = Instant::now();
        let tmp = p.tmp.clone();
        let res = (|| -> Result<(BundleHeader, [u8; 32], u64)> {
            let (w, raw) = p.body.finish().ctx(&tmp, "compressing")?;
            let mut f = w
                .into_inner()
                .map_err(|e| Error::io(&tmp, "writing bundle", e.into_error()))?;
            let header = p.header;
            let (digest, len) = wbb::finish_file(header.clone(), &mut f, &tmp, raw)?;
            Ok((header, digest, len))
        })();
        let (header, digest, len) = match res {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let seq = header.seq;
        let (first, last) = (header.first_txn, header.last_txn());
        let frames = (header.first_frame, header.last_frame);
        let key = format!("{}/{}", self.cur.chain_id, wbb::file_name(seq));
        self.set.publish_file(&tmp, &key)?;
        let bytes_len = len;
        self.cur.next_seq = seq + 1;
        self.cur.prev_digest = digest;
        self.last_seal = Instant::now();
        self.stats.seal_max_us = self.stats.seal_max_us.max(us(t0.elapsed()));
        debug(|| format!("seal {seq}: {} us, {len} bytes", us(t0.elapsed())));
        self.stats.sealed_txn = last;
        self.stats.last_seal_us = now_us();
        self.stats.bundles += 1;
        self.stats.requests = self.set.objects().requests();
        self.stats.bundle_bytes += bytes_len;
        self.events.push(Event::Bundle {
            chain_id: self.cur.chain_id.clone(),
            seq,
            txns: (first, last),
            bytes: bytes_len,
            frames,
        });
        Ok(())
    }
}

/// A bundle being filled: streamed into a temporary file in the chain folder, so memory does
/// not grow with the bundle.
pub(super) struct Pending {
    pub(super) body: BodyEncoder<std::io::BufWriter<File>>,
    pub(super) tmp: std::path::PathBuf,
    pub(super) header: BundleHeader,
    pub(super) txns: u32,
    pub(super) started: Instant,
}
