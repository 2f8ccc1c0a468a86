//! Bundles that waited for an object store: a capture that was stopped (killed, crashed, the
//! machine rebooted) while the store could not be reached left them sealed in the set's spool on
//! this machine ([`BackupSet::spool`]). The next capture publishes them before it decides where
//! the chain ends, so that history is never silently dropped: each only where it continues its
//! chain (the next sequence number, linked to its predecessor's digest) — one the chain in the
//! set already goes past was published before and is simply removed — and anything that cannot
//! be placed is removed with a warning that says why.

#[allow(clippy::wildcard_imports)]
use super::*;

/// What the spool of a set holds for one chain: its bundles by sequence.
type Spooled = Vec<(u64, String)>;

impl Capturer {
    /// Publish what the spool holds, oldest first; `true` if anything reached the store (the
    /// caller then lists the set again).
    ///
    /// # Errors
    /// `Io` if the store cannot be reached (the bundles stay for the next try) or the spool
    /// cannot be read.
    pub(super) fn drain_spool(&mut self, inv: &crate::chain::Inventory) -> Result<bool> {
        let Some(spool) = self.set.spool() else {
            return Ok(false);
        };
        let mut published = 0u64;
        let mut txns: Option<(u64, u64)> = None;
        for (chain_id, is_dir) in spool.list_names("")? {
            if !is_dir || !crate::chain::layout::is_chain_id(&chain_id) {
                continue;
            }
            // Bundles a killed capture was still writing were never sealed: not history.
            spool.clean_stale_temps(&chain_id)?;
            let mut bundles: Spooled = spool
                .list_names(&chain_id)?
                .into_iter()
                .filter_map(|(name, _)| wbb::parse_file_name(&name).map(|seq| (seq, name)))
                .collect();
            bundles.sort_unstable();
            let chain = inv.chains.iter().find(|c| c.id == chain_id);
            let done = self.drain_chain(&spool, &chain_id, chain, &bundles)?;
            published += done.0;
            if let Some((a, b)) = done.1 {
                txns = Some(txns.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
            }
            let _ = spool.remove_dir_if_empty(&chain_id);
        }
        if let Some((a, b)) = txns {
            self.events.push(Event::Warning {
                message: format!(
                    "published {published} bundle(s) (txns {a}..{b}) that an earlier capture \
                     sealed while the store could not be reached; they had waited in {}",
                    spool.root().display()
                ),
            });
        }
        Ok(published > 0)
    }

    /// Publish the spooled `bundles` of chain `chain_id` (`chain`: what the set holds of it);
    /// returns how many were published and their transactions.
    fn drain_chain(
        &mut self,
        spool: &crate::store::LocalStore,
        chain_id: &str,
        chain: Option<&crate::chain::ChainInventory>,
        bundles: &Spooled,
    ) -> Result<(u64, Option<(u64, u64)>)> {
        let set_id = self.set.record().set_id.clone();
        let mut tail = match chain {
            Some(c) => chain_tail(c, self.set.objects().as_ref())?,
            None => None,
        };
        let mut published = 0;
        let mut txns: Option<(u64, u64)> = None;
        for (seq, name) in bundles {
            let key = format!("{chain_id}/{name}");
            let path = spool.path(&key);
            let drop_it = |me: &mut Self, why: String| -> Result<()> {
                me.events.push(Event::Warning {
                    message: format!(
                        "{}: removed from the spool without publishing it: {why}",
                        path.display()
                    ),
                });
                spool.remove_file(&key)
            };
            let b = match wbb::read_bundle(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    drop_it(self, format!("it is damaged ({e})"))?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let h = &b.header;
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            if h.set_id_hex() != set_id {
                // Another set once lived at this URL (the bucket was emptied and a new set made):
                // not ours to publish, and not ours to delete either.
                self.events.push(Event::Warning {
                    message: format!(
                        "{}: left in the spool: it belongs to set {}, but {} is set {set_id}",
                        path.display(),
                        h.set_id_hex(),
                        self.set.dir().display()
                    ),
                });
                continue;
            }
            let Some((end_seq, end_digest)) = tail else {
                if chain.is_some() {
                    // The chain's end in the set cannot be read: nothing to link to now, but
                    // `verify` names that damage, and these stay for a capture after a repair.
                    self.events.push(Event::Warning {
                        message: format!(
                            "{}: left in the spool: the newest bundle of chain {chain_id} in the \
                             set is damaged, so it cannot be linked to (run `walbundle verify`)",
                            path.display()
                        ),
                    });
                    continue;
                }
                drop_it(
                    self,
                    format!(
                        "its chain {chain_id} is no longer in the set (retired by compaction or \
                         by hand), so nothing can link to it"
                    ),
                )?;
                continue;
            };
            if *seq <= end_seq {
                // Published already: bundles are published strictly in order, and the chain in
                // the set goes on past it (the file outlived its upload, or retention has since
                // retired it: either way it must not go up again).
                spool.remove_file(&key)?;
                continue;
            }
            if *seq != end_seq + 1 || h.prev_sha256 != end_digest {
                drop_it(
                    self,
                    format!(
                        "it does not continue the chain, which ends at bundle {end_seq} \
                         (sequence or predecessor digest differ)"
                    ),
                )?;
                continue;
            }
            match self.set.publish_file(&path, &key) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Refused => {
                    self.events.push(Event::Warning {
                        message: format!(
                            "{}: removed from the spool: the set holds other bytes under that \
                             name ({e})",
                            path.display()
                        ),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            }
            tail = Some((*seq, b.digest));
            published += 1;
            self.stats.bundles += 1;
            self.stats.bundle_bytes += len;
            let t = (h.first_txn, h.last_txn());
            txns = Some(txns.map_or(t, |(a, _)| (a, t.1)));
            self.events.push(Event::Bundle {
                chain_id: chain_id.to_string(),
                seq: *seq,
                txns: t,
                bytes: len,
                frames: (h.first_frame, h.last_frame),
            });
        }
        Ok((published, txns))
    }
}

/// Where chain `c` ends in the set: the sequence number and digest the next bundle must link to
/// (the newest bundle, else the base generation); `None` if that cannot be read.
fn chain_tail(
    c: &crate::chain::ChainInventory,
    objects: &dyn crate::store::Store,
) -> Result<Option<(u64, [u8; 32])>> {
    let Some(last) = c.bundles.last() else {
        return Ok(c.base().map(|m| (m.seq, m.link())));
    };
    Ok(super::resume::read_readable(objects, &last.key)?.map(|b| (last.seq, b.digest)))
}
