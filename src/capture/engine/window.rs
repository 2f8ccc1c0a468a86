//! The pin and window protocol: where capture's read mark stands, when it moves (leapfrogging
//! between the two readers), and how capture steps out of the way of the application's own
//! blocking checkpoints. walbundle never takes the write lock.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Capturer {
    /// Keep the pin out of the application's way (called every poll):
    /// - another process holds the checkpoint and the write lock: [`Self::step_aside`];
    /// - everything is captured and backfilled but the pin is not on the fully backfilled WAL:
    ///   move it there, which lets the WAL restart once;
    /// - the WAL's committed frames exceed `max_wal_bytes`: try to let it restart — flush the
    ///   WAL and the database with no lock held, move the pin to the newest commit, backfill the
    ///   rest with a PASSIVE checkpoint on the idle reader, and if nothing was committed
    ///   meanwhile, move onto the fully backfilled WAL. It tries every poll; after
    ///   [`RESTART_TRIES`] failures in a row (a commit landed during each: the writer never
    ///   pauses that long) each further failure doubles the wait, up to `interval`, and a
    ///   success brings it back to every poll. Meanwhile the pin follows the newest commit every
    ///   poll, so the application's own auto-checkpoints copy the WAL in small steps and leave
    ///   capture's checkpoint a short residue. Under writes that never pause for those few
    ///   milliseconds the WAL keeps growing (restarting it anyway would take the write lock,
    ///   which walbundle never does); it restarts at the first pause;
    /// - otherwise, the pin is behind the newest commit (it caps what the application's own
    ///   checkpoints may backfill): move it there once per `interval`, or as soon as it trails
    ///   by 1,000 frames, so the application's checkpoints backfill in small steps.
    pub(super) fn tend_pin(&mut self) -> Result<()> {
        if self.shm.blocking_checkpoint() {
            return self.step_aside();
        }
        let Some(h) = self.last_shm else {
            return Ok(());
        };
        let live = u64::from(h.mx_frame) * (u64::from(self.cur.page_size) + FRAME_HEADER_LEN);
        // Bundles wait for an unreachable store: hold the WAL (the application's checkpoints
        // cannot restart it past the mark) until they are published, up to `max_wal_bytes`.
        if !self.unpublished.is_empty() && live <= self.opts.max_wal_bytes {
            return Ok(());
        }
        if self.can_free(&h) {
            return self.advance();
        }
        let bound = self.wal_bound();
        if live > bound
            && h.salts == self.cur.salts
            && self.cur.frame == h.mx_frame
            && self.last_restart_try.elapsed()
                >= restart_wait(self.restart_fails, self.opts.poll, self.opts.interval)
        {
            self.last_restart_try = Instant::now();
            // SQLite's checkpoint syncs the WAL and then the database while it holds the
            // checkpoint lock (an application's own checkpoint meanwhile gets SQLITE_BUSY at
            // once, whatever its busy timeout), and a commit that lands while it runs keeps the
            // WAL from restarting at its end. The database's sync is the long part: it writes
            // back every page the application's auto-checkpoints copied since the last full
            // backfill (they sync it only when they reach the WAL's end). So both files are
            // flushed first, with no lock held, while the application goes on committing; then
            // the pin moves to the newest commit and the checkpoint copies and syncs only what
            // is left. Measured at 200 commits/s: the lock held 2 – 3 ms instead of 14 – 16
            // (p50); with a try every poll the WAL restarts about 20 times in 6,000 commits and
            // peaks at 6 – 7 MB, where one try per interval with the whole copy inside the lock
            // let it grow to 100 MB.
            // Fresh headers throughout, not `last_shm`: that one must stay the header of the
            // last scan, or the idle fast path would skip commits made since it.
            if let Some((f, _)) = &self.wal {
                let _ = f.sync_data();
            }
            let _ = crate::sqlite::source::sync_main_file(&self.readers[1 - self.active]);
            if let Some(h) = self.shm.header()?
                && h.salts == self.cur.salts
                && self.is_behind(&h)
            {
                self.advance()?;
            }
            if let Some(h) = self.shm.header()?
                && h.salts == self.cur.salts
                && self.pin.mx == h.mx_frame
                && self.cur.frame == h.mx_frame
                && h.n_backfill < h.mx_frame
            {
                let idle = &self.readers[1 - self.active];
                // PASSIVE never takes the write lock and never waits; a busy checkpoint lock (the
                // application is checkpointing) is not an error.
                let t0 = Instant::now();
                let _ = idle.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                let took = us(t0.elapsed());
                self.stats.checkpoints += 1;
                self.stats.checkpoint_max_us = self.stats.checkpoint_max_us.max(took);
                debug(|| {
                    format!(
                        "own checkpoint: {took} us, from frame {} to {}",
                        h.n_backfill, h.mx_frame
                    )
                });
            }
            // Whether the try worked shows here: the WAL is fully backfilled at capture's
            // cursor, and the pin moves onto it (the application's next commit restarts it).
            let freed = match self.shm.header()? {
                Some(h2) if self.can_free(&h2) => {
                    self.advance()?;
                    true
                }
                _ => false,
            };
            self.restart_fails = if freed {
                0
            } else {
                self.restart_fails.saturating_add(1)
            };
            return Ok(());
        }
        // At most an interval behind, and never more than SQLite's own auto-checkpoint unit:
        // the application's auto-checkpoint runs inside a commit and backfills up to our mark,
        // so a far-behind mark would make that one commit copy a whole interval of a burst.
        // Past `max_wal_bytes`, every poll: the application's auto-checkpoints then copy nearly
        // all of the WAL in small steps, leaving capture's own attempt to restart it (above) a
        // short residue, whose shorter lock a steady writer's next commit lands in less often.
        let lag = if h.salts == self.pin.salts {
            h.mx_frame.saturating_sub(self.pin.mx)
        } else {
            h.mx_frame
        };
        if self.is_behind(&h)
            && (live > bound
                || self.last_move.elapsed() >= self.opts.interval
                || lag >= MARK_LAG_FRAMES)
        {
            self.advance()?;
        }
        Ok(())
    }

    /// The WAL size past which capture works to let the WAL restart: `max_wal_bytes` once the
    /// cycle is `min_wal_cycle` old, [`WAL_CAP_FACTOR`] times that before. Each restart costs
    /// capture a sync of the WAL and of the database and its bundle is sealed (a bundle holds
    /// one cycle); at 200 commits/s of the peer harness's small preset a 4 MiB WAL fills in
    /// about 2 s, and restarting it every 5 s instead took 12 – 17% off capture's CPU
    /// (docs/performance.md). A slow writer's WAL still restarts at `max_wal_bytes`.
    fn wal_bound(&self) -> u64 {
        if self.cycle_since.elapsed() >= self.opts.min_wal_cycle {
            self.opts.max_wal_bytes
        } else {
            self.opts.max_wal_bytes.saturating_mul(WAL_CAP_FACTOR)
        }
    }

    /// The pin is older than the newest commit (or in an older cycle).
    pub(super) fn is_behind(&self, h: &ShmHeader) -> bool {
        h.salts != self.pin.salts || h.mx_frame > self.pin.mx
    }

    /// Everything committed is captured and backfilled, and the pin may be what keeps the WAL
    /// from restarting.
    pub(super) fn can_free(&self, h: &ShmHeader) -> bool {
        !self.pin.full
            && h.n_backfill == h.mx_frame
            && h.mx_frame > 0
            && h.salts == self.cur.salts
            && self.cur.frame == h.mx_frame
    }

    /// Would moving the pin now help a waiting checkpointer (see [`Self::step_aside`])?
    pub(super) fn pin_wants_move(&self, h: &ShmHeader) -> bool {
        self.is_behind(h) || self.can_free(h)
    }

    /// Another process is running a FULL, RESTART or TRUNCATE checkpoint, holding the write
    /// lock (so nothing commits) while it waits for readers. Capture everything committed, move
    /// the pin to the newest frame (its backfill no longer waits for us), and once that is
    /// backfilled, onto the fully backfilled WAL (its restart no longer waits for us) — polling
    /// every millisecond until the locks are released or [`STEP_ASIDE_LIMIT`] passes.
    pub(super) fn step_aside(&mut self) -> Result<()> {
        let t0 = Instant::now();
        self.stats.step_asides += 1;
        let mut out_of_way: Option<Duration> = None;
        let mut moved_at = Instant::now();
        while t0.elapsed() < STEP_ASIDE_LIMIT {
            if let Err(g) = self.capture_new()? {
                return self.new_chain(g);
            }
            if let Some(h) = self.last_shm {
                // `full` is conservative: a reader that began while a checkpointer held read
                // lock 0, or just as backfill finished, sits on slot K although the header says
                // fully backfilled. If the checkpoint still waits, pin again (it lands on
                // slot 0 now).
                let stuck_full = self.pin.full && moved_at.elapsed() >= Duration::from_millis(10);
                if self.pin_wants_move(&h) || stuck_full {
                    self.advance()?;
                    moved_at = Instant::now();
                }
                let fresh = self.pin.salts == h.salts && self.pin.mx == h.mx_frame;
                if out_of_way.is_none() && fresh && self.pin.full {
                    out_of_way = Some(t0.elapsed());
                }
            }
            if !self.shm.blocking_checkpoint() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = us(out_of_way.unwrap_or_else(|| t0.elapsed()));
        self.stats.step_aside_max_us = self.stats.step_aside_max_us.max(took);
        debug(|| format!("step aside: {took} us"));
        Ok(())
    }

    /// Move the pin to the newest commit by leapfrogging: the idle reader takes a new pin, capture
    /// catches up under the old one (which still protects every frame), and the old reader lets
    /// go only if the new pin is safe to rely on:
    /// - it is in our cycle, or the WAL is empty at it and we are at (or may follow to) frame 0;
    /// - if it may be on the fully backfilled WAL (`full`), everything up to it is captured, since
    ///   the WAL may restart at it as soon as the old pin is gone.
    ///
    /// Otherwise the new transaction ends and the old pin stays.
    pub(super) fn advance(&mut self) -> Result<()> {
        let p = self.src.path.clone();
        let spare = 1 - self.active;
        let Some(p2) = begin_pinned(&self.readers[spare], &self.shm, &p)? else {
            return Ok(());
        };
        let caught_up = match self.capture_new() {
            Ok(x) => x,
            Err(e) => {
                let _ = end_read(&self.readers[spare], &p);
                return Err(e);
            }
        };
        if let Err(g) = caught_up {
            end_read(&self.readers[spare], &p)?;
            return self.new_chain(g);
        }
        let follows_empty = p2.mx == 0
            && p2.salts != self.cur.salts
            && (self.cur.frame == 0
                || (self.pin.full
                    && self.pin.salts == self.cur.salts
                    && self.pin.mx == self.cur.frame));
        if !self.may_take(&p2, follows_empty) {
            debug(|| {
                format!(
                    "advance refused: pin {:08x}/{} full {} vs cursor {:08x}/{}",
                    p2.salts.0, p2.mx, p2.full, self.cur.salts.0, self.cur.frame
                )
            });
            return end_read(&self.readers[spare], &p);
        }
        if follows_empty {
            // The WAL restarted and is empty (a TRUNCATE): the state is the database file,
            // which is the state at our cursor.
            self.enter_cycle(p2.salts)?;
        }
        self.take_pin(spare, p2)
    }

    /// Move the read mark to the newest commit in the middle of a scan, without catching up
    /// first: safe when the new pin is in our cycle and not on the fully backfilled WAL (any
    /// such pin keeps the WAL from restarting, so every frame of the cycle stays readable), or
    /// when capture already holds everything up to it.
    ///
    /// Not while [`Self::advance`] catches up: its new pin is then on the spare reader already
    /// (it takes over when the scan ends), and the spare has no second transaction to give.
    pub(super) fn move_mark(&mut self) -> Result<()> {
        let p = self.src.path.clone();
        let spare = 1 - self.active;
        if !self.readers[spare].is_autocommit() {
            return Ok(());
        }
        let Some(p2) = begin_pinned(&self.readers[spare], &self.shm, &p)? else {
            return Ok(());
        };
        if !self.may_take(&p2, false) {
            return end_read(&self.readers[spare], &p);
        }
        self.take_pin(spare, p2)
    }

    /// Whether the new pin `p2` may replace the active one with capture at its cursor: it is in
    /// our cycle (or the WAL restarted empty at it, `follows_empty`), and if it may be on the
    /// fully backfilled WAL, everything up to it is captured (the WAL may restart at it as soon
    /// as the old pin is gone).
    fn may_take(&self, p2: &Pin, follows_empty: bool) -> bool {
        let same = p2.salts == self.cur.salts || follows_empty;
        same && (!p2.full || follows_empty || self.cur.frame >= p2.mx)
    }

    /// The spare reader's new pin `p2` replaces the active one.
    pub(super) fn take_pin(&mut self, spare: usize, p2: Pin) -> Result<()> {
        end_read(&self.readers[self.active], &self.src.path)?;
        self.active = spare;
        self.pin = p2;
        self.last_move = Instant::now();
        self.stats.pin_moves += 1;
        Ok(())
    }
}

/// Failed tries in a row to let a large WAL restart before capture tries less often.
/// At 200 commits/s about one try in three succeeds; at 1,000 commits/s none does, and a try
/// every poll then only costs CPU (its flushes and checkpoint) for nothing.
pub(super) const RESTART_TRIES: u32 = 32;

/// The wait before the next try after `fails` failed tries in a row: a poll, then doubling up
/// to `interval`.
fn restart_wait(fails: u32, poll: Duration, interval: Duration) -> Duration {
    let Some(over) = fails.checked_sub(RESTART_TRIES - 1) else {
        return poll;
    };
    poll.saturating_mul(1 << over.min(16))
        .clamp(poll, interval.max(poll))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_tries_back_off_after_a_run_of_failures_up_to_the_interval() {
        let (poll, interval) = (Duration::from_millis(100), Duration::from_secs(1));
        for fails in 0..RESTART_TRIES {
            assert_eq!(restart_wait(fails, poll, interval), poll);
        }
        assert_eq!(restart_wait(RESTART_TRIES, poll, interval), poll * 2);
        assert_eq!(restart_wait(RESTART_TRIES + 1, poll, interval), poll * 4);
        assert_eq!(restart_wait(RESTART_TRIES + 3, poll, interval), interval);
        assert_eq!(restart_wait(u32::MAX, poll, interval), interval);
        // An interval shorter than the poll never makes the wait shorter than a poll.
        assert_eq!(
            restart_wait(u32::MAX, poll, Duration::from_millis(10)),
            poll
        );
    }
}
