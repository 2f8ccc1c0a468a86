//! Where a chain ends and how capture continues it: resuming an existing chain (proving the
//! WAL still holds its last captured frame unchanged), starting a new chain from a snapshot when
//! continuity cannot be proven, and reopening every file when the database, WAL or wal-index was
//! replaced.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Capturer {
    /// The cursor of the newest chain that has a WAL position, if the set has one.
    pub(super) fn chain_end(
        inv: &crate::chain::Inventory,
        objects: &dyn crate::store::Store,
    ) -> Result<Option<Cursor>> {
        let mut best: Option<(u64, Cursor)> = None;
        for chain in &inv.chains {
            let Some(base) = chain.base() else { continue };
            let Some(wal) = base.wal else { continue };
            let cur = if let Some(last) = chain.bundles.last() {
                let Some(b) = read_readable(objects, &last.key)? else {
                    continue;
                };
                let h = &b.header;
                Cursor {
                    chain_id: chain.id.clone(),
                    next_seq: h.seq + 1,
                    prev_digest: b.digest,
                    state: StateChecksum(h.state_after),
                    page_size: h.page_size,
                    page_count: h.page_count_after,
                    next_txn: h.last_txn() + 1,
                    salts: h.salts,
                    frame: h.last_frame,
                    cksum: h.end_checksum,
                }
            } else {
                Cursor::at_generation(base, &wal)
            };
            let end = cur.next_txn;
            if best.as_ref().is_none_or(|(b, _)| end > *b) {
                best = Some((end, cur));
            }
        }
        Ok(best.map(|(_, c)| c))
    }

    /// Try to continue the newest chain. `Ok(Err(gap))` when continuity cannot be proven.
    pub(super) fn resume(&mut self, inv: &crate::chain::Inventory) -> Result<Step> {
        let Some(cur) = Self::chain_end(inv, self.set.objects().as_ref())? else {
            return Ok(Err(Gap::new("first capture of this database")));
        };
        if inv.max_txn() >= cur.next_txn {
            return Ok(Err(Gap::new(
                "the set's newest point is not the end of a capturable chain",
            )));
        }
        let p = self.src.path.clone();
        let Some(pin) = begin_pinned(self.r(), &self.shm, &p)? else {
            return Err(unpinnable(&p));
        };
        self.pin = pin;
        if let Err(g) = self.check_resume(&cur)? {
            end_read(self.r(), &p)?;
            return Ok(Err(g));
        }
        // Prove the state: every page's term through the pin (exactly at the cursor).
        let (terms, state) = read_terms(self.r(), &p, cur.page_size)?;
        if state != cur.state || terms.len() != cur.page_count as usize {
            end_read(self.r(), &p)?;
            return Ok(Err(Gap::new(format!(
                "the database's content at the last captured frame does not match the chain's \
                 state checksum ({} pages, {} vs {})",
                terms.len(),
                state.to_hex(),
                cur.state.to_hex()
            ))));
        }
        self.terms = terms;
        self.cycle_frames.clear();
        self.stats.chain_id = cur.chain_id.clone();
        self.stats.last_txn = cur.next_txn - 1;
        self.stats.sealed_txn = cur.next_txn - 1;
        self.events.push(Event::Resumed {
            chain_id: cur.chain_id.clone(),
            next_seq: cur.next_seq,
            txn: cur.next_txn - 1,
        });
        self.cur = cur;
        Ok(Ok(()))
    }

    /// With the pin just taken: is it exactly at the cursor, and does the WAL still hold the
    /// cursor's frame unchanged?
    pub(super) fn check_resume(&mut self, cur: &Cursor) -> Result<Step> {
        let p = self.src.path.clone();
        let page_size: u32 = self
            .r()
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .sql_ctx(&p, "reading page size")?;
        if page_size != cur.page_size {
            return Ok(Err(Gap::new(format!(
                "page size changed from {} to {page_size}",
                cur.page_size
            ))));
        }
        let wp = self.src.wal_path();
        let pin = self.pin;
        let wal = self.open_wal()?;
        let hdr = match wal {
            Some(f) => WalHeader::read(f).ctx(&wp, "reading WAL header")?,
            None => None,
        };
        if pin.mx == 0 && cur.frame == 0 && hdr.is_none_or(|x| x.salts == cur.salts) {
            return Ok(Ok(()));
        }
        let Some(hdr) = hdr else {
            return Ok(Err(Gap::new(
                "the WAL was reset since the last captured frame",
            )));
        };
        if hdr.salts != cur.salts || pin.salts != cur.salts {
            return Ok(Err(Gap::new(
                "the WAL restarted since the last capture (the application checkpointed while \
                 walbundle was not running)",
            )));
        }
        if hdr.page_size != cur.page_size {
            return Ok(Err(Gap::new(format!(
                "page size changed from {} to {}",
                cur.page_size, hdr.page_size
            ))));
        }
        if cur.frame > 0 {
            let f = wal.map(|f| FrameHeader::read(f, &hdr, cur.frame));
            let ok = matches!(f, Some(Ok(Some(fh))) if fh.salts == cur.salts && fh.checksum == cur.cksum);
            if !ok {
                return Ok(Err(Gap::new(format!(
                    "the WAL no longer holds the last captured frame {} unchanged (the source lost \
                     or rewrote frames, e.g. after power loss with synchronous=NORMAL)",
                    cur.frame
                ))));
            }
        }
        if pin.mx != cur.frame {
            return Ok(Err(Gap::new(format!(
                "{} frames were committed while walbundle was not running; their before-state \
                 cannot be proven",
                pin.mx.saturating_sub(cur.frame)
            ))));
        }
        Ok(Ok(()))
    }

    /// Seal what is pending (it holds only verified, committed transactions), then start a new
    /// chain from a full snapshot taken through the pin, so the chain continues from exactly
    /// there. With `gap.reopen`, every connection and descriptor is dropped and reopened first,
    /// so the snapshot reads the file now at the path, never a replaced one.
    pub(super) fn new_chain(&mut self, gap: Gap) -> Result<()> {
        self.seal()?;
        let p = self.src.path.clone();
        if gap.reopen {
            self.reopen()?;
        }
        for c in &self.readers {
            end_read(c, &p)?;
        }
        let mut opts = self.opts.snapshot.clone();
        opts.reason.clone_from(&gap.reason);
        let mut terms = Vec::new();
        let rep = snapshot_with(
            &self.set,
            &self.src,
            &opts,
            &NoProgress,
            Conns {
                r: &self.readers[self.active],
                shm: Some(&self.shm),
                keep_pin: true,
                terms: Some(&mut terms),
            },
        )?;
        let m = &rep.manifest;
        let Some(wal) = m.wal else {
            return Err(Error::usage("left WAL mode during the snapshot").at(&self.src.path));
        };
        self.terms = terms;
        self.cycle_frames.clear();
        self.cur = Cursor::at_generation(m, &wal);
        self.pin = pin_of(&wal);
        // If the WAL restarted since the pin (only possible when it was fully backfilled),
        // `capture_new` follows that restart; any other change is a gap it records.
        self.stats.chains_started += 1;
        self.stats.chain_id = m.chain_id.clone();
        self.stats.last_txn = m.txn;
        self.stats.sealed_txn = m.txn;
        self.events.push(Event::ChainStarted {
            chain_id: m.chain_id.clone(),
            reason: gap.reason.clone(),
            txn: m.txn,
        });
        Ok(())
    }

    /// The files changed identity: close everything on the old ones, then open the new ones.
    ///
    /// When the database was replaced, our connections are what kept the old `-wal` and `-shm`
    /// at their paths (the application's own last close would have checkpointed and deleted
    /// them; SQLite's close does not once the file has moved). SQLite pairs a WAL with whatever
    /// database file sits beside it, so leaving them would let the application's next open
    /// apply the old file's frames to the new one. If no other process uses them and they are
    /// still the files we had open, they are moved aside (renamed `…-wal.orphaned-<time>`,
    /// nothing deleted; their committed frames are already captured) and a warning says so;
    /// if another process is attached, they are left alone and the warning says what to do.
    pub(super) fn reopen(&mut self) -> Result<()> {
        let p = self.src.path.clone();
        for c in &self.readers {
            end_read(c, &p)?;
        }
        let wal_path = self.src.wal_path();
        let wal_id = self.wal.as_ref().map(|(_, id)| *id);
        let wal_same = wal_id.is_some_and(|id| file_id(&wal_path).is_ok_and(|x| x == id));
        let db_replaced = file_id(&p).is_ok_and(|id| id != self.db_id);
        let orphaned = db_replaced && wal_same && self.shm.is_current();
        let attached = orphaned && self.shm.others_attached();
        let shm_id = self.shm.id();
        self.readers.clear();
        self.wal = None;
        if orphaned && !attached {
            let stamp = now_us() / 1_000_000;
            let mut moved = Vec::new();
            for (path, id) in [(wal_path, wal_id), (self.src.shm_path(), Some(shm_id))] {
                if id.is_some_and(|id| file_id(&path).is_ok_and(|x| x == id)) {
                    let to = crate::sqlite::source::sidecar(&path, &format!(".orphaned-{stamp}"));
                    std::fs::rename(&path, &to)
                        .ctx(&path, "moving the replaced file's sidecar aside")?;
                    moved.push(to.display().to_string());
                }
            }
            self.events.push(Event::Warning {
                message: format!(
                    "{} was replaced while its old WAL and wal-index were still beside it (kept \
                     alive by walbundle's connections); SQLite would pair them with the new \
                     file, so they were moved aside: {} (their frames are captured; remove them \
                     when you like)",
                    p.display(),
                    moved.join(", ")
                ),
            });
        } else if attached {
            self.events.push(Event::Warning {
                message: format!(
                    "{} was replaced while its old WAL is still beside it and in use by another \
                     process; SQLite may pair that WAL with the new file. Close every \
                     connection and remove the -wal and -shm files before swapping a database \
                     file",
                    p.display()
                ),
            });
        }
        let (readers, shm) = open_readers(&self.src, self.opts.snapshot.busy_timeout)?;
        self.readers = readers;
        self.active = 0;
        self.shm = shm;
        self.db_id = file_id(&p).ctx(&p, "reading file identity")?;
        self.last_shm = None;
        self.stuck = None;
        self.zeroed = None;
        Ok(())
    }

    /// Our WAL descriptor, (re)opened when the file at the path changed; `None` if there is no
    /// WAL file.
    pub(super) fn open_wal(&mut self) -> Result<Option<&File>> {
        let wp = self.src.wal_path();
        let id = match file_id(&wp) {
            Ok(id) => id,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.wal = None;
                return Ok(None);
            }
            Err(e) => return Err(Error::io(&wp, "checking WAL", e)),
        };
        if self.wal.as_ref().is_none_or(|(_, old)| *old != id) {
            match File::open(&wp) {
                Ok(f) => self.wal = Some((f, id)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.wal = None;
                    return Ok(None);
                }
                Err(e) => return Err(Error::io(&wp, "opening WAL", e)),
            }
        }
        Ok(self.wal.as_ref().map(|(f, _)| f))
    }
}

/// The bundle at `key` of the set, read and checked (through a download for an object store);
/// `None` if it is damaged, which the caller treats as "no usable end here".
///
/// # Errors
/// The store cannot be read.
pub(super) fn read_readable(
    objects: &dyn crate::store::Store,
    key: &str,
) -> Result<Option<wbb::Bundle>> {
    match crate::store::local_copy(objects, key)
        .and_then(|c| wbb::read_bundle(&c.path).map_err(|e| c.relocate(e)))
    {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::Corrupt => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every page's state-checksum term through `r`'s current read transaction, and their XOR.
pub(super) fn read_terms(
    r: &Connection,
    p: &std::path::Path,
    page_size: u32,
) -> Result<(Vec<u64>, StateChecksum)> {
    let page_count: u32 = r
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .sql_ctx(p, "reading page count")?;
    let mut terms = Vec::with_capacity(page_count as usize);
    let mut state = StateChecksum::default();
    crate::sqlite::source::each_page(r, p, page_size, page_count, |pgno, page| {
        let t = term_or_zero(page_size, pgno, page);
        state.0 ^= t;
        terms.push(t);
        Ok(())
    })?;
    Ok((terms, state))
}
