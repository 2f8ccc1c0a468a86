//! Reading the WAL: committed frames up to the wal-index's `mxFrame`, each checked against the
//! running checksum and the cycle's salts, assembled into transactions (two passes over a
//! transaction's frames: the state checksum first, then its pages streamed into the bundle).

#[allow(clippy::wildcard_imports)]
use super::*;

impl Capturer {
    /// Read frames committed since the cursor into the pending bundle. Whatever keeps capture
    /// from moving past committed frames is timed: past [`STUCK_LIMIT`] it becomes a gap.
    pub(super) fn capture_new(&mut self) -> Result<Step> {
        let r = self.capture_inner()?;
        if r.is_err() {
            self.stuck = None;
            return Ok(r);
        }
        let Some(shm) = self.last_shm else {
            return Ok(Ok(()));
        };
        // Never stall silently: committed frames of our cycle that stay unread become a gap.
        if shm.salts == self.cur.salts && self.cur.frame < shm.mx_frame {
            let key = (self.cur.salts, self.cur.frame);
            match self.stuck {
                Some((s, f, since)) if (s, f) == key => {
                    if since.elapsed() > STUCK_LIMIT {
                        self.stuck = None;
                        return Ok(Err(Gap::new(format!(
                            "committed WAL frame {} stayed unreadable for {} s (the wal-index says \
                             {} frames are committed)",
                            self.cur.frame + 1,
                            STUCK_LIMIT.as_secs(),
                            shm.mx_frame
                        ))));
                    }
                }
                _ => self.stuck = Some((key.0, key.1, Instant::now())),
            }
        } else {
            self.stuck = None;
        }
        Ok(Ok(()))
    }

    pub(super) fn capture_inner(&mut self) -> Result<Step> {
        // The idle fast path: an unchanged wal-index header means nothing was committed and no
        // restart happened, so one `pread` answers the poll; the files' identity is still
        // checked every IDENTITY_EVERY (below).
        // Only when the last scan read everything that header announced.
        if let Some(last) = self.last_shm
            && last.salts == self.cur.salts
            && last.mx_frame == self.cur.frame
            && self.identity_at.elapsed() < IDENTITY_EVERY
            && self.shm.header()? == Some(last)
        {
            return Ok(Ok(()));
        }
        // The three files' identity (a `stat` of each name) is checked at least once per
        // IDENTITY_EVERY, busy or idle, not on every poll: between two checks capture reads
        // through the descriptors it holds, and what it reads there is proven frame by frame
        // (salts, running checksum) whatever happened to the names, so a replaced file is
        // found at most a second later and nothing read meanwhile is trusted without proof.
        // (Three `stat`s a poll were 1.5 – 2% of capture's CPU at 200 commits/s.)
        let check_identity = self.wal.is_none() || self.identity_at.elapsed() >= IDENTITY_EVERY;
        if check_identity {
            self.identity_at = Instant::now();
            let p = self.src.path.clone();
            match file_id(&p) {
                Ok(id) if id == self.db_id => {}
                Ok(_) => {
                    // Our descriptors still read the old file's WAL: take its last commits first.
                    if let (Some(h), Some((walf, wid))) = (self.shm.header()?, self.wal.take()) {
                        let res = self.capture_wal(&walf, h);
                        self.wal = Some((walf, wid));
                        res?.ok();
                    }
                    return Ok(Err(Gap::replaced(
                        "the database file was replaced (a different file now has its name)",
                    )));
                }
                // Between an unlink and a rename: look again at the next poll.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(())),
                Err(e) => return Err(Error::io(&p, "checking the database file", e)),
            }
            if !self.shm.is_current() {
                return Ok(Err(Gap::replaced(
                    "the wal-index (-shm) file was removed or replaced while walbundle had it open",
                )));
            }
        }
        let Some(shm) = self.shm.header()? else {
            debug(|| "capture: wal-index unreadable".into());
            return Ok(Ok(()));
        };
        self.last_shm = Some(shm);
        if check_identity {
            let had_wal = self.wal.as_ref().map(|(_, id)| *id);
            if self.open_wal()?.is_none() {
                if had_wal.is_some() {
                    return Ok(Err(Gap::replaced(
                        "the WAL file was removed while walbundle had it open",
                    )));
                }
                return Ok(Ok(()));
            }
            let now = self.wal.as_ref().map(|(_, id)| *id);
            if had_wal.is_some() && had_wal != now {
                return Ok(Err(Gap::replaced(
                    "the WAL file was replaced while walbundle had it open",
                )));
            }
        }
        let Some((walf, wid)) = self.wal.take() else {
            return Ok(Ok(()));
        };
        let res = self.capture_wal(&walf, shm);
        self.wal = Some((walf, wid));
        res
    }

    pub(super) fn capture_wal(&mut self, wal: &File, shm: ShmHeader) -> Result<Step> {
        let Some(hdr) = WalHeader::read(wal).ctx(self.src.wal_path(), "reading WAL header")? else {
            return Ok(Ok(())); // empty or being reset: nothing committed in it yet
        };
        if hdr.salts != self.cur.salts {
            // A cycle counts once the wal-index says frames are committed in it.
            if shm.salts != hdr.salts || shm.mx_frame == 0 {
                return Ok(Ok(()));
            }
            // A new WAL cycle. Without a gap only if the pin was taken with the WAL fully
            // backfilled at exactly our position: then the restart dropped only frames we hold.
            if !(self.pin.full && self.pin.salts == self.cur.salts && self.pin.mx == self.cur.frame)
            {
                return Ok(Err(Gap::new(format!(
                    "the WAL restarted (salts {:08x}/{:08x} -> {:08x}/{:08x}) at a moment walbundle \
                     cannot prove it held every frame (captured through frame {}; read mark at \
                     frame {}{})",
                    self.cur.salts.0,
                    self.cur.salts.1,
                    hdr.salts.0,
                    hdr.salts.1,
                    self.cur.frame,
                    self.pin.mx,
                    if self.pin.full {
                        ", WAL fully backfilled"
                    } else {
                        ""
                    }
                ))));
            }
            if hdr.page_size != self.cur.page_size {
                return Ok(Err(Gap::new(format!(
                    "page size changed from {} to {}",
                    self.cur.page_size, hdr.page_size
                ))));
            }
            self.enter_cycle(hdr.salts)?;
        }
        if shm.salts != hdr.salts {
            return Ok(Ok(())); // the WAL file is a moment ahead of (or behind) its index
        }
        if shm.mx_frame < self.cur.frame {
            return Ok(Err(Gap::new(format!(
                "the wal-index now ends at frame {}, before the last captured frame {}: the \
                 source lost committed frames",
                shm.mx_frame, self.cur.frame
            ))));
        }
        if shm.mx_frame == self.cur.frame {
            return Ok(Ok(()));
        }
        self.scan(wal, &hdr, shm.mx_frame)
    }

    /// Follow a WAL restart that the pin proves lost nothing: seal the bundle of the old cycle
    /// and continue at frame 0 of cycle `salts`.
    pub(super) fn enter_cycle(&mut self, salts: (u32, u32)) -> Result<()> {
        self.seal()?;
        let changed = salts != self.cur.salts;
        if changed {
            self.cycle_since = Instant::now();
        }
        self.cycle_frames.clear();
        self.cur.salts = salts;
        self.cur.frame = 0;
        self.cur.cksum = (0, 0);
        // At most one restart can happen while the pin is held: any further one is a gap
        // until the pin moves into the new cycle.
        self.pin.full = false;
        if changed {
            self.stats.wal_restarts_followed += 1;
            self.events.push(Event::WalRestarted { salts });
        }
        Ok(())
    }

    /// Scan frames (cursor, bound], all committed, emitting each transaction at its commit frame.
    pub(super) fn scan(&mut self, wal: &File, hdr: &WalHeader, bound: u32) -> Result<Step> {
        let flen = hdr.page_size as usize + FRAME_HEADER_LEN as usize;
        // Frames are read several at a time, all at or below the committed frontier, and each
        // is then checked on its own (salts, running checksum): a run read while the WAL
        // restarts stops at the first frame that is not of this cycle, as one read a frame did.
        // The buffer is scratch, shared by the databases one thread captures (a process may
        // capture thousands), not kept per database.
        thread_local! {
            static SCAN_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let batch = (SCAN_READ_BYTES / flen).max(1);
        let mut block = SCAN_BUF.with_borrow_mut(std::mem::take);
        let left = bound.saturating_sub(self.cur.frame).max(1) as usize;
        let len = flen * batch.min(left);
        if block.len() < len {
            block.resize(len, 0);
        }
        let mut kept = Kept::take(hdr.page_size as usize);
        let res = self.scan_frames(wal, hdr, bound, &mut block[..len], &mut kept);
        SCAN_BUF.with_borrow_mut(|b| *b = block);
        kept.give_back();
        res
    }

    fn scan_frames(
        &mut self,
        wal: &File,
        hdr: &WalHeader,
        bound: u32,
        block: &mut [u8],
        kept: &mut Kept,
    ) -> Result<Step> {
        let ps = hdr.page_size as usize;
        let wp = self.src.wal_path();
        let flen = ps + FRAME_HEADER_LEN as usize;
        let (mut have, mut at) = (0usize, 0usize);
        // Frame 1 chains from the header the writer wrote for this cycle (the wal-index's own
        // running checksum is stale after a TRUNCATE).
        let mut cksum = if self.cur.frame == 0 {
            hdr.checksum
        } else {
            self.cur.cksum
        };
        // The open transaction's pages: frame index and, within a memory budget, the bytes
        // already read for the checksum (so each frame is read once, not twice).
        // The open transaction's pages: page number to its newest frame (8 bytes a page plus
        // the map's own overhead: the only part of memory that grows with the transaction), and
        // within TXN_KEEP_BYTES the bytes already read for the checksum, so most transactions
        // read each frame once.
        let mut txn_pages: HashMap<u32, u32> = HashMap::new();
        let mut i = self.cur.frame + 1;
        let mut next_look = i + MARK_LAG_FRAMES / 4;
        while i <= bound {
            if at == have {
                let want = (bound - i + 1) as usize * flen;
                let want = want.min(block.len());
                let n = pread_full(wal, &mut block[..want], hdr.frame_offset(i))
                    .ctx(&wp, "reading WAL frame")?;
                (have, at) = (n / flen, 0);
                if have == 0 {
                    debug(|| format!("scan: frame {i} short read {n} (bound {bound})"));
                    return Ok(Ok(())); // shorter than the index says: look again later
                }
            }
            let buf = &block[at * flen..(at + 1) * flen];
            at += 1;
            let fh = FrameHeader::parse(&buf[..24]);
            if fh.salts != hdr.salts {
                if fh.salts == (0, 0) && fh.checksum == (0, 0) {
                    // A frame at or below the committed frontier with a zeroed header. SQLite
                    // writes such frames only inside an uncommitted transaction (`iReCksum`),
                    // and its own recovery stops at one, so it is never trusted: look once
                    // more, then start a new chain from a snapshot (which reads the page
                    // through SQLite, whatever its WAL header says).
                    let at = (hdr.salts, i);
                    if self.zeroed == Some(at) {
                        self.zeroed = None;
                        self.stats.zeroed_frames += 1;
                        return Ok(Err(Gap::new(format!(
                            "committed WAL frame {i} has a zeroed header (salts and checksum 0), \
                             which SQLite's own recovery would stop at: a new chain starts from \
                             a snapshot instead of trusting it"
                        ))));
                    }
                    self.zeroed = Some(at);
                }
                debug(|| {
                    format!(
                        "scan: frame {i} salts {:08x} != header {:08x} (bound {bound})",
                        fh.salts.0, hdr.salts.0
                    )
                });
                return Ok(Ok(())); // being rewritten, or the WAL restarting: look again later
            }
            let c = wal_checksum(hdr.big_endian_cksum, &buf[..8], cksum);
            let c = wal_checksum(hdr.big_endian_cksum, &buf[24..], c);
            if c != fh.checksum || fh.pgno == 0 {
                return Ok(Err(Gap::new(format!(
                    "committed WAL frame {i} failed its checksum"
                ))));
            }
            cksum = c;
            txn_pages.insert(fh.pgno, i);
            let page = &buf[FRAME_HEADER_LEN as usize..];
            kept.keep(fh.pgno, page); // the newest version wins
            if fh.commit_size != 0 {
                let commit = Commit {
                    frame: i,
                    size: fh.commit_size,
                    cksum: c,
                };
                self.emit_txn(wal, hdr, &mut txn_pages, kept, commit)?;
                txn_pages.clear();
                kept.clear();
                // Bundles stay bounded however much a single scan finds (a backlog after a
                // burst): seal at this transaction boundary once the bundle is full.
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.body.raw_len() >= self.opts.max_bundle_bytes)
                {
                    self.seal()?;
                }
                // A long scan (a backlog after a burst) moves the read mark as it goes, so the
                // application's auto-checkpoint keeps backfilling in small steps meanwhile.
                if i >= next_look {
                    next_look = i + MARK_LAG_FRAMES / 4;
                    if let Some(h) = self.shm.header()?
                        && h.salts == hdr.salts
                        && self.pin.salts == hdr.salts
                        && h.mx_frame.saturating_sub(self.pin.mx) >= MARK_LAG_FRAMES
                    {
                        self.move_mark()?;
                    }
                }
            }
            i += 1;
        }
        self.zeroed = None;
        Ok(Ok(()))
    }

    /// Take the reference pages of the pending bundle among the transaction's pages `order`
    /// (page number, newest frame): for each page the bundle has not written yet, its version
    /// in the state before the bundle — the newest frame of this WAL cycle capture has seen for
    /// it, else the page as the pinned reader sees it (`sqlite_dbpage`) — used only if its
    /// state-checksum term is the one capture holds for the page. Anything else (a frame
    /// overwritten by a restart, a page changed after the pin, a resumed capture that never saw
    /// the page's frame) is simply left out: a reference only helps compression, and the
    /// replayer checks every one against its own state.
    fn take_references(&mut self, wal: &File, hdr: &WalHeader, order: &[(u32, u32)]) -> Result<()> {
        let ps = hdr.page_size;
        let lock = lock_byte_page(ps);
        let Some(pend) = self.pending.as_mut() else {
            return Ok(());
        };
        // A bundle whose body outgrew memory (one huge transaction) streams through a window
        // its start alone can use: it keeps no references (memory stays flat).
        if pend.body.is_spilled() {
            pend.refs = std::collections::BTreeMap::new();
            return Ok(());
        }
        let mut buf = vec![0u8; ps as usize + FRAME_HEADER_LEN as usize];
        for &(pgno, _) in order {
            if !pend.touched.insert(pgno)
                || pgno > pend.min_count
                || pgno == lock
                || (pend.refs.len() as u64 + 1) * u64::from(ps) > CAPTURE_REF_BYTES
            {
                continue;
            }
            let Some(&want) = self.terms.get(pgno as usize - 1) else {
                continue;
            };
            let holds = |p: &[u8]| {
                p.len() == ps as usize && crate::bundle::checksum::page_term(pgno, p) == want
            };
            let body = FRAME_HEADER_LEN as usize..;
            // Only a page whose term is the one capture holds is taken.
            let mut page = None;
            if let Some(&f) = self.cycle_frames.get(&pgno) {
                let n = pread_full(wal, &mut buf, hdr.frame_offset(f)).unwrap_or(0);
                let fh = FrameHeader::parse(&buf[..24]);
                if n == buf.len() && fh.salts == hdr.salts && fh.pgno == pgno {
                    page = Some(&buf[body.clone()])
                        .filter(|p| holds(p))
                        .map(<[u8]>::to_vec);
                }
            } else if crate::sqlite::source::read_main_file(
                &self.readers[self.active],
                u64::from(pgno - 1) * u64::from(ps),
                &mut buf[body.clone()],
            ) {
                // Not written in this WAL cycle (as far as capture has seen): every older
                // version is backfilled, and no checkpoint copies a frame past capture's pin,
                // so the database file holds the page as of the bundle's start. Read raw, it
                // costs a third of a query. A page that does not check out (a resumed capture
                // that missed its frame, a copy under way) is read through SQLite below.
                page = Some(&buf[body.clone()])
                    .filter(|p| holds(p))
                    .map(<[u8]>::to_vec);
            }
            if page.is_none() {
                page = crate::sqlite::source::read_page(&self.readers[self.active], pgno)
                    .filter(|p| holds(p));
            }
            if let Some(p) = page {
                pend.refs.insert(pgno, p);
                self.stats.reference_pages += 1;
            }
        }
        Ok(())
    }

    /// Add one committed transaction (its pages, last version of each) to the pending bundle.
    pub(super) fn emit_txn(
        &mut self,
        wal: &File,
        hdr: &WalHeader,
        pages: &mut HashMap<u32, u32>,
        kept: &Kept,
        commit: Commit,
    ) -> Result<()> {
        let Commit {
            frame: commit_frame,
            size: commit_size,
            cksum,
        } = commit;
        let ps = hdr.page_size;
        let wp = self.src.wal_path();
        if self.pending.is_none() {
            let name = wbb::file_name(self.cur.next_seq);
            let (tmp, mut f) = self.set.temp_file(&self.cur.chain_id, &name)?;
            std::io::Write::write_all(&mut f, &[0u8; wbb::HEADER_LEN])
                .ctx(&tmp, "writing bundle")?;
            let mut body = BodyEncoder::deferred(
                std::io::BufWriter::with_capacity(1 << 20, f),
                ps,
                self.opts.level,
                self.opts.window_log,
            )
            .ctx(&tmp, "starting compression")?;
            if self.opts.reference_pages {
                // A quarter more than the recent bundles' references, in whole pages.
                let refs = self.last_ref_bytes;
                body.reserve_front((refs + refs / 4).next_multiple_of(ps as usize));
            }
            let header = BundleHeader {
                set_id: wbb::set_id_bytes(&self.set.record().set_id).unwrap_or([0; 16]),
                chain_id: self.cur.chain_id.clone(),
                seq: self.cur.next_seq,
                prev_sha256: self.cur.prev_digest,
                salts: hdr.salts,
                first_frame: self.cur.frame + 1,
                last_frame: 0,
                end_checksum: (0, 0),
                page_size: ps,
                page_count_before: self.cur.page_count,
                page_count_after: 0,
                txn_count: 0,
                first_txn: self.cur.next_txn,
                state_before: self.cur.state.0,
                state_after: 0,
                first_time_us: 0,
                last_time_us: 0,
                body_len: 0,
                body_raw_len: 0,
                ref_count: 0,
            };
            self.pending = Some(Pending {
                body,
                tmp,
                header,
                txns: 0,
                started: Instant::now(),
                refs: std::collections::BTreeMap::new(),
                touched: std::collections::HashSet::new(),
                min_count: self.cur.page_count,
            });
        }
        let mut order: Vec<(u32, u32)> = pages.drain().collect();
        order.shrink_to_fit();
        order.sort_unstable_by_key(|e| e.0);
        order.retain(|e| e.0 <= commit_size);
        // Frames are read again only for a transaction larger than the scan keeps.
        let mut buf = Vec::new();
        let lock = lock_byte_page(ps);
        if self.opts.reference_pages {
            self.take_references(wal, hdr, &order)?;
        }
        // Pages beyond the old size that this transaction does not write are zeros.
        let old = self.cur.page_count;
        let zeros = vec![0u8; ps as usize];
        let mut state = self.cur.state;
        if commit_size < old {
            for q in commit_size + 1..=old {
                state.0 ^= self.terms[q as usize - 1];
            }
            self.terms.truncate(commit_size as usize);
        } else {
            for q in old + 1..=commit_size {
                let t = term_or_zero(ps, q, &zeros);
                state.0 ^= t;
                self.terms.push(t);
            }
        }
        let time_us = now_us();
        let meta_state;
        {
            let pend = self
                .pending
                .as_mut()
                .ok_or_else(|| Error::usage("no pending bundle"))?;
            // Two passes, so memory does not grow with the transaction: the record carries the
            // state after the transaction before its pages, so the first pass computes every
            // page's term, the second streams the pages into the bundle. Pages the scan kept
            // (up to TXN_KEEP_BYTES) are not read again; the others are read twice, and must
            // read back the same both times.
            let changed = |frame: u32| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("WAL frame {frame} changed while being captured"),
                )
                .at(&wp)
            };
            let read_page = |buf: &mut Vec<u8>, pgno: u32, frame: u32| -> Result<()> {
                buf.resize(ps as usize + FRAME_HEADER_LEN as usize, 0);
                let n =
                    pread_full(wal, buf, hdr.frame_offset(frame)).ctx(&wp, "reading WAL frame")?;
                let again = FrameHeader::parse(&buf[..24]);
                if n < buf.len() || again.salts != hdr.salts || again.pgno != pgno {
                    return Err(changed(frame));
                }
                Ok(())
            };
            let term_of = |pgno: u32, page: &[u8]| {
                if pgno == lock {
                    0
                } else {
                    crate::bundle::checksum::page_term(pgno, page)
                }
            };
            let mut new_terms: Vec<u64> = Vec::with_capacity(order.len());
            for (pgno, frame) in &order {
                let t = if let Some(p) = kept.get(pgno) {
                    term_of(*pgno, p)
                } else {
                    read_page(&mut buf, *pgno, *frame)?;
                    term_of(*pgno, &buf[FRAME_HEADER_LEN as usize..])
                };
                new_terms.push(t);
            }
            for ((pgno, _), t) in order.iter().zip(&new_terms) {
                let slot = &mut self.terms[*pgno as usize - 1];
                state.0 ^= *slot ^ *t;
                *slot = *t;
            }
            meta_state = state;
            let meta = TxnMeta {
                time_us,
                page_count: commit_size,
                commit_frame,
                state_after: state.0,
            };
            let n_pages = u32::try_from(order.len()).unwrap_or(u32::MAX);
            pend.body
                .begin_txn(&meta, n_pages)
                .ctx(&wp, "compressing")?;
            for ((pgno, frame), t) in order.iter().zip(&new_terms) {
                // Kept bytes are the ones the term was computed from; a page read again must
                // read back the same.
                let page: &[u8] = if let Some(p) = kept.get(pgno) {
                    p
                } else {
                    read_page(&mut buf, *pgno, *frame)?;
                    let p = &buf[FRAME_HEADER_LEN as usize..];
                    if term_of(*pgno, p) != *t {
                        return Err(changed(*frame));
                    }
                    p
                };
                pend.body.page(*pgno, page).ctx(&wp, "compressing")?;
            }
            pend.body.end_txn().ctx(&wp, "compressing")?;
            pend.txns += 1;
            let h = &mut pend.header;
            if h.first_time_us == 0 {
                h.first_time_us = time_us;
            }
            h.last_time_us = time_us;
            h.last_frame = commit_frame;
            h.end_checksum = cksum;
            h.page_count_after = commit_size;
            h.txn_count = pend.txns;
            h.state_after = state.0;
        }
        if let Some(p) = self.pending.as_mut() {
            p.min_count = p.min_count.min(commit_size);
        }
        if self.cycle_frames.len() + order.len() <= CYCLE_FRAMES_MAX {
            self.cycle_frames.extend(order.iter().copied());
        }
        self.cur.state = meta_state;
        self.cur.page_count = commit_size;
        self.cur.frame = commit_frame;
        self.cur.cksum = cksum;
        self.cur.next_txn += 1;
        self.stats.txns += 1;
        self.stats.last_txn = self.cur.next_txn - 1;
        Ok(())
    }
}

/// The open transaction's pages as the scan read them (the newest version of each), up to
/// [`TXN_KEEP_BYTES`], so most transactions read each frame once. The bytes live in one
/// buffer that the databases a thread captures share between scans (kept up to
/// [`Kept::RETAIN`]): a page costs a copy, not an allocation.
pub(super) struct Kept {
    at: HashMap<u32, usize>,
    bytes: Vec<u8>,
    ps: usize,
}

thread_local! {
    static KEPT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Kept {
    /// Bytes of the buffer a thread keeps between scans; a larger transaction's is freed.
    const RETAIN: usize = 1 << 20;

    /// An empty set of pages of `ps` bytes, in this thread's buffer.
    fn take(ps: usize) -> Self {
        let mut bytes = KEPT_BUF.with_borrow_mut(std::mem::take);
        bytes.clear();
        Self {
            at: HashMap::new(),
            bytes,
            ps,
        }
    }

    /// Hand the buffer back to the thread.
    fn give_back(self) {
        if self.bytes.capacity() <= Self::RETAIN {
            KEPT_BUF.with_borrow_mut(|b| *b = self.bytes);
        }
    }

    /// Keep `page` as page `pgno`'s newest version, if it was kept before or fits the budget.
    fn keep(&mut self, pgno: u32, page: &[u8]) {
        if let Some(&i) = self.at.get(&pgno) {
            self.bytes[i..i + self.ps].copy_from_slice(page);
        } else if self.bytes.len() + self.ps <= TXN_KEEP_BYTES {
            self.at.insert(pgno, self.bytes.len());
            self.bytes.extend_from_slice(page);
        }
    }

    /// Page `pgno`'s kept bytes.
    pub(super) fn get(&self, pgno: &u32) -> Option<&[u8]> {
        self.at.get(pgno).map(|&i| &self.bytes[i..i + self.ps])
    }

    /// Forget every page (the transaction was emitted); the buffer stays.
    fn clear(&mut self) {
        self.at.clear();
        self.bytes.clear();
    }
}
