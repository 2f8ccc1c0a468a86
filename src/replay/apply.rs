//! Applying a plan to a staged file: the base image written sequentially, then each bundle's
//! transactions page by page with positional writes, every link and checksum checked on the way.
//!
//! Pages are held in memory across bundles (up to [`DIRTY_LIMIT`]) and written once per
//! flush, newest version only, contiguous pages in one write: a page that consecutive bundles
//! rewrite reaches the file once. A flush is written by a writer thread while replay decodes
//! the next pages (at most one flush at a time; its pages stay readable as reference pages
//! until it is done). Memory is bounded by twice that limit, the bundles fetched ahead, and
//! one 8-byte state term per page of the database — never by the chain's length.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use super::plan::{RestorePlan, Stop};
use crate::bundle::checksum::{StateChecksum, page_term, term_or_zero};
use crate::bundle::image::decode_image;
use crate::bundle::wbb::{self, read_bundle};
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::store::local_copy;

/// What replay reached.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// Transaction number of the restored state.
    pub txn: u64,
    /// Capture time of that transaction (RFC 3339), or the base's state time.
    pub time: String,
    /// Pages in the result.
    pub page_count: u32,
    /// State checksum of the result.
    pub state_checksum: String,
    /// Bundles applied (wholly or in part).
    pub bundles_applied: usize,
    /// Transactions applied on top of the base.
    pub txns_applied: u64,
}

/// Pages replay holds before writing them, kept from bundle to bundle.
#[derive(Default)]
struct Held {
    /// Newest version of every page written since the last flush.
    dirty: std::collections::BTreeMap<u32, Vec<u8>>,
    /// Lowest page count reached since the last flush: the file is cut there first, so pages
    /// that come back later without being written read as zeros, as they do in SQLite.
    min_count: u32,
    /// Bytes held in `dirty`.
    dirty_bytes: usize,
    /// The output file's length, in pages, as last flushed.
    file_pages: u32,
    /// Page buffers a flush emptied, reused for the next pages held (no allocation and no
    /// fresh memory a page: their number never passes what `DIRTY_LIMIT` lets `dirty` and the
    /// flush in flight hold).
    spare: Vec<Vec<u8>>,
    /// The flush being written on another thread while replay goes on (at most one).
    inflight: Option<InFlight>,
}

/// A flush handed to a writer thread: its pages stay readable here until it is done.
struct InFlight {
    pages: std::sync::Arc<std::collections::BTreeMap<u32, Vec<u8>>>,
    /// The flush cuts the file to this many pages before it writes, so a page above it that
    /// the flush does not write reads as zeros once it is done — and meanwhile may still read
    /// as its old bytes from the file.
    cut: Option<u32>,
    /// The writer (taken when waited for).
    job: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// Where a page's newest version is ([`Held::lookup`]).
enum Found<'a> {
    Held(&'a [u8]),
    Zeros,
    InFile,
}

/// Cut `f` to `cut` pages if given, write `pages` (runs of consecutive pages in one call,
/// at most [`WRITE_PIECE`] bytes each), then set its length to `len` pages if given.
fn write_pages(
    f: &File,
    pages: &std::collections::BTreeMap<u32, Vec<u8>>,
    ps: u32,
    cut: Option<u32>,
    len: Option<u32>,
) -> std::io::Result<()> {
    let len_of = |pages: u32| u64::from(pages) * u64::from(ps);
    if let Some(c) = cut {
        f.set_len(len_of(c))?;
    }
    // Runs of consecutive pages, each written with one vectored call (no copy into a buffer).
    let mut run: Vec<&[u8]> = Vec::with_capacity(WRITE_PIECE / ps as usize);
    let mut run_start = 0u32;
    let mut next = 0u32;
    for (&pgno, page) in pages {
        if !run.is_empty() && (pgno != next || (run.len() + 1) * ps as usize > WRITE_PIECE) {
            crate::sys::write_all_vectored_at(f, &run, len_of(run_start - 1))?;
            run.clear();
        }
        if run.is_empty() {
            run_start = pgno;
        }
        run.push(page);
        next = pgno + 1;
    }
    if !run.is_empty() {
        crate::sys::write_all_vectored_at(f, &run, len_of(run_start - 1))?;
    }
    if let Some(l) = len {
        f.set_len(len_of(l))?;
    }
    Ok(())
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // A replay that fails mid-way still lets its writer finish before the staged file goes.
        if let Some(job) = self.job.take() {
            let _ = job.join();
        }
    }
}

/// Replay state shared by the per-page and per-transaction callbacks.
struct Live {
    held: Held,
    terms: Vec<u64>,
    state: StateChecksum,
    page_count: u32,
    txn: u64,
    time: String,
    txns_applied: u64,
    stopped: bool,
}

/// Hold at most this much of the newest page versions before writing them out (a second set
/// this large may be in flight on the writer thread). Measured on a 383 MB database replayed
/// from 105 bundles: 32 MiB held with no writer thread 1.45-1.58 s at 70 MB peak RSS; with
/// the writer, 32 MiB 1.16-1.30 s at 107 MB, 16 MiB 1.16-1.21 s at 80 MB.
const DIRTY_LIMIT: usize = 16 << 20;

/// Largest single write: the base image is written in pieces this large, and so are the
/// flushes' runs of contiguous pages. Linux gives a buffered write's span one page-cache folio,
/// and ext4 then handles a later 4 KiB write into it block by block over the whole folio:
/// 60,000 random page writes into a 380 MB file took 1.1 - 1.8 s when the file was written in
/// 1 MiB pieces, 0.17 - 0.22 s in 4 - 16 KiB pieces and 0.29 s in 64 KiB pieces (Linux 6.18,
/// ext4), while writing the file in 64 KiB pieces costs no more than in 1 MiB ones. Most of a
/// long chain's database is first written by a flush (the burst preset's base image is 5 MB
/// of 383) and later flushes rewrite single pages of it: with 1 MiB pieces,
/// `ext4_block_write_begin` took 9.5% of a restore's samples; with 64 KiB pieces 2.9%.
const WRITE_PIECE: usize = 64 << 10;

impl Held {
    fn new(page_count: u32) -> Self {
        Self {
            min_count: page_count,
            file_pages: page_count,
            ..Self::default()
        }
    }

    /// Wait for the flush in flight, if any, and take its page buffers back.
    fn wait(&mut self, out_path: &Path) -> Result<()> {
        let Some(mut w) = self.inflight.take() else {
            return Ok(());
        };
        match w.job.take().map(std::thread::JoinHandle::join) {
            None | Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => return Err(Error::io(out_path, "writing", e)),
            Some(Err(_)) => {
                return Err(Error::io(
                    out_path,
                    "writing",
                    std::io::Error::other("the writer thread failed"),
                ));
            }
        }
        if let Some(pages) = std::sync::Arc::get_mut(&mut w.pages) {
            self.spare.extend(std::mem::take(pages).into_values());
        }
        Ok(())
    }

    /// Where the newest version of `pgno` is: held here or in the flush in flight, zeros (cut
    /// since, or by the flush in flight), or in the file.
    fn lookup(&self, pgno: u32) -> Found<'_> {
        if let Some(p) = self.dirty.get(&pgno) {
            return Found::Held(p);
        }
        if pgno > self.min_count {
            return Found::Zeros;
        }
        let Some(w) = &self.inflight else {
            return Found::InFile;
        };
        match w.pages.get(&pgno) {
            Some(p) => Found::Held(p),
            None if w.cut.is_some_and(|c| pgno > c) => Found::Zeros,
            None => Found::InFile,
        }
    }

    /// Hold `page` as the newest version of `pgno`, taking its buffer: `page` is left holding
    /// a spare one (the page's older version, or one a flush emptied) for the next page to be
    /// decoded into, so no page is copied.
    fn hold(&mut self, pgno: u32, page: &mut Vec<u8>) {
        use std::collections::btree_map::Entry;
        match self.dirty.entry(pgno) {
            Entry::Occupied(mut e) => std::mem::swap(e.get_mut(), page),
            Entry::Vacant(e) => {
                let len = page.len();
                let spare = self.spare.pop().unwrap_or_default();
                e.insert(std::mem::replace(page, spare));
                self.dirty_bytes += len;
            }
        }
    }

    /// Write the held pages on a writer thread while replay goes on: cut the file to the lowest
    /// size reached, write the newest version of each page in order, set the size to
    /// `page_count`. The previous flush is waited for first, so writes never overlap.
    fn flush(&mut self, page_count: u32, f: &File, ps: u32, out_path: &Path) -> Result<()> {
        self.wait(out_path)?;
        let cut = (self.min_count < self.file_pages).then_some(self.min_count);
        let len = (page_count != self.min_count.min(self.file_pages)
            || self.file_pages != page_count)
            .then_some(page_count);
        if self.dirty.is_empty() && cut.is_none() && len.is_none() {
            return Ok(()); // nothing to write: no writer
        }
        let pages = std::sync::Arc::new(std::mem::take(&mut self.dirty));
        let file = f.try_clone().ctx(out_path, "writing")?;
        let theirs = std::sync::Arc::clone(&pages);
        let job = std::thread::Builder::new()
            .name("restore-writer".into())
            .spawn(move || write_pages(&file, &theirs, ps, cut, len))
            .ctx(out_path, "starting the writer")?;
        self.inflight = Some(InFlight {
            pages,
            cut,
            job: Some(job),
        });
        self.dirty_bytes = 0;
        self.file_pages = page_count;
        self.min_count = page_count;
        Ok(())
    }
}

impl Live {
    fn flush(&mut self, f: &File, ps: u32, out_path: &Path) -> Result<()> {
        self.held.flush(self.page_count, f, ps, out_path)
    }
}

pub(crate) fn time_string(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The contents of a version 2 bundle's reference pages `refs` in the state replay reached
/// (a held page, else zeros for a page cut since the last flush, else the output file with
/// zeros past its end), each checked against its state-checksum term so that a bundle never
/// decodes against bytes the capturer did not have.
///
/// # Errors
/// `Io` reading `out`; `Corrupt` naming the bundle at `bundle` if a page disagrees with the state.
fn reference_pages(
    refs: &[u32],
    live: &Live,
    out: &File,
    out_path: &Path,
    ps: u32,
    bundle: &Path,
) -> Result<Vec<u8>> {
    let mut reference = vec![0u8; refs.len() * ps as usize];
    for (&pgno, page) in refs.iter().zip(reference.chunks_exact_mut(ps as usize)) {
        match live.held.lookup(pgno) {
            Found::Held(held) => page.copy_from_slice(held),
            Found::Zeros => page.fill(0),
            Found::InFile => {
                let n = crate::sys::pread_full(out, page, u64::from(pgno - 1) * u64::from(ps))
                    .ctx(out_path, "reading")?;
                page[n..].fill(0);
            }
        }
        let want = live.terms.get(pgno as usize - 1).copied();
        if want != Some(term_or_zero(ps, pgno, page)) {
            return Err(Error::corrupt(
                bundle,
                format!(
                    "reference page {pgno} does not match the state replay reached: this bundle \
                     does not follow the state it was captured from"
                ),
            ));
        }
    }
    Ok(reference)
}

/// Replay `plan` into `out` (an empty file at `out_path`), checking everything. Every write
/// has reached `out` when this returns, but nothing is synced: a caller that publishes the file
/// syncs it (restore does, while the integrity check runs); scratch copies need not.
///
/// # Errors
/// `Corrupt` naming the artifact and the link or checksum that failed; `Io` for the output.
pub fn replay_into(
    plan: &RestorePlan,
    out: &mut File,
    out_path: &Path,
    progress: &dyn Progress,
) -> Result<Replayed> {
    replay_into_holding(plan, out, out_path, progress, DIRTY_LIMIT)
}

/// [`replay_into`], holding at most `hold_bytes` of page versions before a flush (the
/// default is [`DIRTY_LIMIT`]; a small value makes nearly every transaction wait on the flush
/// before it, which the model test uses to check reference pages read while one is in flight).
///
/// # Errors
/// As [`replay_into`].
pub fn replay_into_holding(
    plan: &RestorePlan,
    out: &mut File,
    out_path: &Path,
    progress: &dyn Progress,
    hold_bytes: usize,
) -> Result<Replayed> {
    let m = &plan.base;
    let ps = m.page_size;
    let mut terms: Vec<u64> = Vec::with_capacity(m.page_count as usize);
    // The bundles are fetched (from an object store, several at once) and their digests
    // checked on another thread, from the start: the first ones are ready by the time the
    // image is written, and each next one while one replays.
    let keys = plan.bundles.iter().map(|b| b.key.clone()).collect();
    let mut fetch = crate::store::Prefetch::start(
        &plan.objects,
        keys,
        crate::store::PARALLEL_REQUESTS,
        |copy| read_bundle(&copy.path),
    );
    progress.begin("restoring", m.image.raw_size);
    {
        // Written in pieces of WRITE_PIECE, not larger (see there).
        let mut w = BufWriter::with_capacity(WRITE_PIECE, &mut *out);
        let image = local_copy(plan.objects.as_ref(), &plan.image_key)?;
        decode_image(
            &image.path,
            m,
            |pgno, page| {
                terms.push(term_or_zero(ps, pgno, page));
                w.write_all(page).ctx(out_path, "writing")
            },
            |n| progress.advance(n),
        )
        .map_err(|e| image.relocate(e))?;
        w.flush().ctx(out_path, "writing")?;
    }
    progress.end();
    let mut state = StateChecksum::from_hex(&m.state_checksum).unwrap_or_default();
    let mut txn = m.txn;
    let mut time = m.state_time.clone();
    let mut page_count = m.page_count;
    let mut prev = m.link();
    let mut applied = 0usize;
    let mut txns_applied = 0u64;
    let zeros = vec![0u8; ps as usize];
    let set_id = wbb::set_id_bytes(&plan.set_id).unwrap_or([0; 16]);
    let mut done = matches!(plan.stop, Stop::Txn(n) if n <= txn);
    // Held pages, carried from bundle to bundle until they pass DIRTY_LIMIT.
    let mut held = Held::new(page_count);
    for (expect_seq, pb) in (m.seq + 1..).zip(plan.bundles.iter()) {
        if done {
            break;
        }
        let path = &pb.path;
        let (_copy, b) = fetch.next_ready().ok_or_else(|| {
            Error::corrupt(
                path,
                "bundle could not be fetched (the fetching thread ended)",
            )
        })??;
        let h = &b.header;
        let link = |what: String| Error::corrupt(path, what);
        if h.set_id != set_id {
            return Err(link(format!(
                "bundle belongs to set {}, not this set {}",
                h.set_id_hex(),
                plan.set_id
            )));
        }
        if h.chain_id != plan.chain_id {
            return Err(link(format!(
                "bundle belongs to chain {}, not {}",
                h.chain_id, plan.chain_id
            )));
        }
        if h.seq != expect_seq {
            return Err(link(format!(
                "bundle says sequence {}, expected {expect_seq}: reordered or duplicated",
                h.seq
            )));
        }
        if h.prev_sha256 != prev {
            return Err(link(format!(
                "previous-bundle hash does not match bundle {}'s digest: the chain is broken here",
                expect_seq - 1
            )));
        }
        if h.page_size != ps {
            return Err(link(format!(
                "page size {} differs from the chain's {ps}",
                h.page_size
            )));
        }
        if h.state_before != state.0 || h.page_count_before != page_count {
            return Err(link(format!(
                "state before ({:016x}, {} pages) is not the state replay reached ({}, {page_count} pages)",
                h.state_before,
                h.page_count_before,
                state.to_hex()
            )));
        }
        if h.first_txn != txn + 1 {
            return Err(link(format!(
                "first transaction {} does not follow {txn}",
                h.first_txn
            )));
        }
        let stop = plan.stop;
        let st = std::cell::RefCell::new(Live {
            held: std::mem::take(&mut held),
            terms: std::mem::take(&mut terms),
            state,
            page_count,
            txn,
            time: std::mem::take(&mut time),
            txns_applied,
            stopped: false,
        });
        let reference = reference_pages(&b.refs, &st.borrow(), out, out_path, ps, path);
        let f: &File = out;
        let res = reference.and_then(|reference| b.replay(
            path,
            &reference,
            |_, rec| {
                if let Stop::TimeUs(t) = stop
                    && rec.time_us > t
                {
                    st.borrow_mut().stopped = true;
                    return Ok(false);
                }
                Ok(true)
            },
            |pgno, page| {
                let mut s = st.borrow_mut();
                let i = pgno as usize - 1;
                while s.terms.len() <= i {
                    let q = s.terms.len() as u32 + 1;
                    let t = term_or_zero(ps, q, &zeros);
                    s.state.0 ^= t;
                    s.terms.push(t);
                }
                let t = if pgno == crate::bundle::checksum::lock_byte_page(ps) { 0 } else { page_term(pgno, page) };
                let old = s.terms[i];
                s.state.0 ^= old ^ t;
                s.terms[i] = t;
                s.held.hold(pgno, page);
                Ok(())
            },
            |n, rec| {
                let mut s = st.borrow_mut();
                let count = rec.page_count as usize;
                if count < s.terms.len() {
                    let dropped: u64 = s.terms[count..].iter().fold(0, |a, t| a ^ t);
                    s.state.0 ^= dropped;
                    s.terms.truncate(count);
                }
                while s.terms.len() < count {
                    let q = s.terms.len() as u32 + 1;
                    let t = term_or_zero(ps, q, &zeros);
                    s.state.0 ^= t;
                    s.terms.push(t);
                }
                if (count as u32) < s.held.min_count {
                    s.held.min_count = count as u32;
                }
                let dropped = s.held.dirty.split_off(&(count as u32 + 1));
                s.held.dirty_bytes -= dropped.len() * ps as usize;
                s.held.spare.extend(dropped.into_values());
                if s.state.0 != rec.state_after {
                    return Err(Error::corrupt(
                        path,
                        format!(
                            "state checksum after transaction {n} is {}, the bundle records {:016x}",
                            s.state.to_hex(),
                            rec.state_after
                        ),
                    ));
                }
                s.page_count = rec.page_count;
                if s.held.dirty_bytes > hold_bytes {
                    s.flush(f, ps, out_path)?;
                }
                s.txn = n;
                s.time = time_string(rec.time_us);
                s.txns_applied += 1;
                let more = match stop {
                    Stop::Txn(t) => n < t,
                    Stop::TimeUs(_) => true,
                };
                if !more {
                    s.stopped = true;
                }
                Ok(more)
            },
        ));
        let mut s = st.into_inner();
        if s.held.dirty_bytes > hold_bytes {
            s.flush(out, ps, out_path)?;
        }
        held = s.held;
        terms = s.terms;
        state = s.state;
        page_count = s.page_count;
        txn = s.txn;
        time = s.time;
        txns_applied = s.txns_applied;
        let stopped = s.stopped;
        res?;
        // --at: the bundle's transactions were applied up to the time, checked below.
        applied += 1;
        if !stopped {
            if state.0 != h.state_after || page_count != h.page_count_after {
                return Err(link(
                    "state after the bundle does not match its header".into(),
                ));
            }
        } else {
            done = true;
        }
        prev = b.digest;
        if let Stop::Txn(n) = plan.stop
            && txn >= n
        {
            done = true;
        }
    }
    if let Stop::Txn(n) = plan.stop
        && txn != n
    {
        return Err(Error::corrupt(
            &plan.set,
            format!("replay ended at txn {txn}, short of the planned txn {n}"),
        ));
    }
    held.flush(page_count, out, ps, out_path)?;
    held.wait(out_path)?;
    Ok(Replayed {
        txn,
        time,
        page_count,
        state_checksum: state.to_hex(),
        bundles_applied: applied,
        txns_applied,
    })
}
