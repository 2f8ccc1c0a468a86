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
        let header_ps = p.header.page_size as usize;
        let res = (|| -> Result<(BundleHeader, [u8; 32], u64)> {
            // A spilled body (one huge transaction) is compressed as version 1.
            let taken = if p.body.is_spilled() {
                std::collections::BTreeMap::new()
            } else {
                p.refs
            };
            let refs: Vec<u32> = taken.keys().copied().collect();
            // Room for the next bundle's reference is sized after the recent ones
            // (BodyEncoder::reserve_front): the largest, fading by an eighth a bundle, as a
            // bundle that starts a WAL cycle refers to more pages than the ones after it.
            let last = self.last_ref_bytes;
            self.last_ref_bytes = (refs.len() * header_ps).max(last - last / 8);
            let (w, raw) = p
                .body
                .finish_with_pages(&refs, taken.values().map(Vec::as_slice))
                .ctx(&tmp, "compressing")?;
            let mut f = w
                .into_inner()
                .map_err(|e| Error::io(&tmp, "writing bundle", e.into_error()))?;
            let mut header = p.header;
            header.ref_count = u32::try_from(refs.len()).unwrap_or(0);
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
        let key = format!("{}/{}", self.cur.chain_id, wbb::file_name(seq));
        // Sealed: for an object store it is now durable on this machine under its final name,
        // so neither an unreachable store nor the end of this process loses it.
        // (A failed rename removes the temporary itself.)
        let tmp = self.set.spool_file(&tmp, &key)?;
        // The chain continues from this bundle now; publication may wait for the store.
        self.cur.next_seq = seq + 1;
        self.cur.prev_digest = digest;
        self.last_seal = Instant::now();
        self.unpublished.push_back(Sealed {
            tmp,
            key,
            chain_id: self.cur.chain_id.clone(),
            seq,
            txns: (header.first_txn, header.last_txn()),
            frames: (header.first_frame, header.last_frame),
            first_time_us: header.first_time_us,
            len,
            started: t0,
        });
        self.publish_sealed()
    }

    /// Publish the sealed bundles in order. An object store that cannot be reached leaves them
    /// queued in the set's spool on this machine ([`BackupSet::spool`]) and capture goes on
    /// reading commits. A capture killed meanwhile loses none of them: the next one publishes
    /// the spool first (`spool.rs`). While any wait, the read mark also holds the WAL (up to
    /// `max_wal_bytes`), so that next capture can often continue the same chain.
    pub(super) fn publish_sealed(&mut self) -> Result<()> {
        while let Some(s) = self.unpublished.front() {
            match self.set.publish_file(&s.tmp, &s.key) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Io && self.set.is_remote() => {
                    if self.store_down_since.is_none() {
                        self.store_down_since = Some(Instant::now());
                        self.events.push(Event::Warning {
                            message: format!(
                                "cannot publish bundle {} ({e}); it waits in {} and capture goes \
                                 on; retrying every poll (a capture started later publishes it \
                                 too)",
                                s.seq,
                                s.tmp.display()
                            ),
                        });
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            let Some(s) = self.unpublished.pop_front() else {
                break;
            };
            if let Some(since) = self.store_down_since.take() {
                self.events.push(Event::Warning {
                    message: format!(
                        "the store answers again after {:.1} s; the bundles that waited are published",
                        since.elapsed().as_secs_f64()
                    ),
                });
            }
            let took = us(s.started.elapsed());
            self.stats.seal_max_us = self.stats.seal_max_us.max(took);
            debug(|| format!("seal {}: {took} us, {} bytes", s.seq, s.len));
            self.stats.sealed_txn = s.txns.1;
            self.stats.last_seal_us = now_us();
            self.stats.bundles += 1;
            self.stats.bundle_bytes += s.len;
            self.stats.requests = self.set.objects().requests();
            self.events.push(Event::Bundle {
                chain_id: s.chain_id,
                seq: s.seq,
                txns: s.txns,
                bytes: s.len,
                frames: s.frames,
            });
        }
        Ok(())
    }
}

/// A bundle sealed into a local file, to be published as `key`.
pub(super) struct Sealed {
    pub(super) tmp: std::path::PathBuf,
    pub(super) key: String,
    pub(super) chain_id: String,
    pub(super) seq: u64,
    pub(super) txns: (u64, u64),
    pub(super) frames: (u32, u32),
    /// Commit time of its first transaction (µs).
    pub(super) first_time_us: i64,
    pub(super) len: u64,
    pub(super) started: Instant,
}

/// A bundle being filled: its raw body waits in memory or an unnamed temporary file (up to
/// the bundle bound) and is compressed into a temporary file in the chain folder when sealed,
/// against its reference pages.
pub(super) struct Pending {
    pub(super) body: BodyEncoder<std::io::BufWriter<File>>,
    pub(super) tmp: std::path::PathBuf,
    pub(super) header: BundleHeader,
    pub(super) txns: u32,
    pub(super) started: Instant,
    /// Reference pages: the contents, in the state before the bundle, of pages it rewrites
    /// (checked against their state-checksum terms), at most [`wbb::MAX_REF_BYTES`].
    pub(super) refs: std::collections::BTreeMap<u32, Vec<u8>>,
    /// Pages the bundle wrote so far (a page's reference is taken at its first write only).
    pub(super) touched: std::collections::HashSet<u32>,
    /// The smallest database size the bundle has passed through: pages above it may have
    /// been truncated and regrown, so their terms no longer describe the state before.
    pub(super) min_count: u32,
}
