//! Choosing what to replay: a base generation and the contiguous bundles after it, up to the
//! target. A plan never reaches across a missing or unreadable link: if the target lies beyond
//! one, planning fails, naming the first bad link and the newest point that *can* be restored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::bundle::manifest::GenerationManifest;
use crate::bundle::wbb::BundleHeader;
use crate::chain::{BackupSet, ChainInventory, Inventory};
use crate::error::{Error, ErrorKind, Result};

/// Which state to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The newest committed state the set holds.
    Latest,
    /// The state after transaction number `n` (as `list` shows it).
    Txn(u64),
    /// The last transaction captured at or before this time.
    Time(jiff::Timestamp),
}

/// Where replay stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Stop {
    /// After this transaction number.
    Txn(u64),
    /// After the last transaction captured at or before this time (µs since the epoch).
    TimeUs(i64),
}

/// One bundle to replay.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedBundle {
    /// Sequence.
    pub seq: u64,
    /// File (its location, in an object store).
    pub path: PathBuf,
    /// Its key in the set's store.
    #[serde(skip)]
    pub key: String,
    /// Transactions it holds.
    pub txns: (u64, u64),
}

/// What a restore will replay.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    /// The set folder.
    pub set: PathBuf,
    /// Chain the state belongs to.
    pub chain_id: String,
    /// Base generation (its bundle sequence).
    pub generation_seq: u64,
    /// Transaction number of the base.
    pub base_txn: u64,
    /// Time of the base state.
    pub base_time: String,
    /// Page size.
    pub page_size: u32,
    /// Image of the base.
    pub image: PathBuf,
    /// Its key in the set's store.
    #[serde(skip)]
    pub image_key: String,
    /// The set's store, which every artifact is read through.
    #[serde(skip)]
    pub(crate) objects: Arc<dyn crate::store::Store>,
    /// Bundles to replay, in order.
    pub bundles: Vec<PlannedBundle>,
    /// Where to stop.
    pub stop: Stop,
    /// With `--until-break`: why the plan stops short of what was asked.
    pub partial: Option<String>,
    #[serde(skip)]
    pub(crate) base: GenerationManifest,
    #[serde(skip)]
    pub(crate) set_id: String,
}

/// A chain's restorable extent.
#[derive(Debug, Clone)]
pub struct ChainExtent<'a> {
    /// The chain.
    pub chain: &'a ChainInventory,
    /// Its base (generation 0, or the newest intact generation).
    pub base: &'a GenerationManifest,
    /// Bundles contiguous from the base, readable headers.
    pub run: Vec<(&'a crate::chain::BundleEntry, &'a BundleHeader)>,
    /// The first bad link after the run, if any: (what, path).
    pub broken: Option<(String, PathBuf)>,
    /// The highest transaction any artifact of the chain claims (beyond a break too).
    pub claimed_end: u64,
}

impl ChainExtent<'_> {
    /// Last transaction restorable through the run.
    pub fn end_txn(&self) -> u64 {
        self.run.last().map_or(self.base.txn, |(_, h)| h.last_txn())
    }
}

/// The extent holding the set's newest state: the newest chain's last extent. Chains are
/// ordered by when they started (their ids) and, within one second, by their base's
/// transaction — not by transaction numbers at their ends: in an object store a bundle a killed
/// capture had in flight may land after a new chain started, making the older chain end at a
/// higher number than the newer chain began with, though the newer one, a snapshot of the
/// live database, holds the newer state.
pub fn newest_extent<'a, 'b>(exts: &'b [ChainExtent<'a>]) -> Option<&'b ChainExtent<'a>> {
    exts.iter().max_by_key(|e| {
        let started = e.chain.id.get(..16).unwrap_or(&e.chain.id);
        let base = e.chain.base().map_or(0, |m| m.txn);
        (started, base, e.claimed_end.max(e.end_txn()))
    })
}

/// Work out each chain's restorable runs: from the chain's base (its oldest readable
/// generation), bundles base+1, base+2, ... while each exists, has a readable header and links
/// by sequence. At a bad link, a readable generation at or after it (a compacted one) starts a
/// further extent of the same chain, so history beyond a damaged bundle stays restorable from
/// there; the points in between are not.
pub fn extents(inv: &Inventory) -> Vec<ChainExtent<'_>> {
    let mut out = Vec::new();
    for chain in &inv.chains {
        let Some(mut base) = chain.base() else {
            continue;
        };
        loop {
            let mut run = Vec::new();
            let mut broken = None;
            let mut break_seq = None;
            let mut expect = base.seq + 1;
            let mut claimed_end = base.txn;
            for b in &chain.bundles {
                if let Ok(h) = &b.header {
                    claimed_end = claimed_end.max(h.last_txn());
                } else {
                    claimed_end = u64::MAX; // a damaged bundle could hold anything
                }
                if broken.is_some() || b.seq <= base.seq {
                    continue;
                }
                if b.seq != expect {
                    broken = Some((
                        format!("bundle {expect} is missing (next present: {})", b.seq),
                        chain_path(chain, expect),
                    ));
                    break_seq = Some(expect);
                    continue;
                }
                match &b.header {
                    Ok(h) => {
                        run.push((b, h));
                        expect += 1;
                    }
                    Err(e) => {
                        broken =
                            Some((format!("bundle {} is damaged: {e}", b.seq), b.path.clone()));
                        break_seq = Some(b.seq);
                    }
                }
            }
            // A readable generation beyond the run's end means the bundles up to it are
            // missing at the end of the folder (no later bundle showed the gap): a break too.
            if broken.is_none()
                && let Some(g) = chain.generation_from(expect)
            {
                broken = Some((
                    format!("bundle {expect} is missing (generation {} follows)", g.seq),
                    chain_path(chain, expect),
                ));
                break_seq = Some(expect);
            }
            let bridge = break_seq.and_then(|at| chain.generation_from(at));
            if let Some(next) = bridge {
                // Points up to the bridge's own are this extent's claim (and lost); the rest
                // belong to the next extent.
                claimed_end = next.txn.saturating_sub(1);
            }
            out.push(ChainExtent {
                chain,
                base,
                run,
                broken,
                claimed_end,
            });
            match bridge {
                Some(next) => base = next,
                None => break,
            }
        }
    }
    out
}

fn chain_path(chain: &ChainInventory, seq: u64) -> PathBuf {
    chain
        .bundles
        .first()
        .and_then(|b| b.path.parent())
        .or_else(|| {
            chain
                .generations
                .first()
                .and_then(|g| g.image_path.parent()?.parent())
        })
        .map(|d| d.join(crate::bundle::wbb::file_name(seq)))
        .unwrap_or_default()
}

fn broken_error(set: &BackupSet, ext: &ChainExtent<'_>, asked: &str) -> Error {
    let (what, path) = ext.broken.clone().unwrap_or_default();
    Error::new(
        ErrorKind::Corrupt,
        format!(
            "cannot restore {asked}: the chain {} is broken at its first bad link: {what}",
            ext.chain.id
        ),
    )
    .at(if path.as_os_str().is_empty() {
        set.dir().to_path_buf()
    } else {
        path
    })
    .hint(format!(
        "the newest point before the break is txn {} (restore it with --txn {}); \
         `walbundle verify` names every problem",
        ext.end_txn(),
        ext.end_txn()
    ))
}

/// Choose what to replay for `target`.
///
/// # Errors
/// `Corrupt` if the target lies beyond a broken link or the set has nothing restorable; `Usage`
/// if the target is outside every chain.
pub fn plan(set: &BackupSet, target: &Target) -> Result<RestorePlan> {
    plan_with(set, target, false)
}

/// [`plan`], or with `until_break`, a plan that stops at the last verified point before the
/// first bad link when the target lies beyond it (`partial` then says why).
///
/// # Errors
/// As [`plan`], except for a broken link with `until_break`.
pub fn plan_with(set: &BackupSet, target: &Target, until_break: bool) -> Result<RestorePlan> {
    let mut partial: Option<String> = None;
    let mut on_break = |ext: &ChainExtent<'_>, asked: &str| -> Result<Stop> {
        let e = broken_error(set, ext, asked);
        if !until_break {
            return Err(e);
        }
        partial = Some(format!("{e}"));
        Ok(Stop::Txn(ext.end_txn()))
    };
    let inv = set.inventory()?;
    let exts = extents(&inv);
    if exts.is_empty() {
        let first = inv
            .chains
            .iter()
            .flat_map(|c| c.generations.iter())
            .find_map(|g| g.manifest.as_ref().err().map(ToString::to_string));
        let mut e =
            Error::new(ErrorKind::Corrupt, "the set holds no restorable generation").at(set.dir());
        if let Some(first) = first {
            e = e.context(format!("damaged generation ({first})"));
        }
        return Err(e.hint("`walbundle verify` names every problem"));
    }
    let (ext, stop, asked) = match target {
        Target::Latest => {
            let ext = newest_extent(&exts).expect("non-empty");
            let stop = if ext.broken.is_some() || ext.claimed_end > ext.end_txn() {
                on_break(ext, "the newest state")?
            } else {
                Stop::Txn(ext.end_txn())
            };
            (ext, stop, "the newest state".to_string())
        }
        Target::Txn(n) => {
            let Some(ext) = exts
                .iter()
                .find(|e| e.base.txn <= *n && *n <= e.claimed_end.max(e.end_txn()))
            else {
                let (lo, hi) = (
                    exts.iter().map(|e| e.base.txn).min().unwrap_or(0),
                    exts.iter().map(ChainExtent::end_txn).max().unwrap_or(0),
                );
                return Err(Error::usage(format!(
                    "the set has no restorable point at txn {n} (it holds txn {lo}..={hi})"
                ))
                .at(set.dir())
                .hint("`walbundle list` shows the restorable points"));
            };
            let stop = if *n > ext.end_txn() {
                on_break(ext, &format!("txn {n}"))?
            } else {
                Stop::Txn(*n)
            };
            (ext, stop, format!("txn {n}"))
        }
        Target::Time(t) => {
            let t_us = t.as_microsecond();
            let candidates: Vec<&ChainExtent<'_>> = exts
                .iter()
                .filter(|e| {
                    e.base
                        .state_time
                        .parse::<jiff::Timestamp>()
                        .is_ok_and(|b| b <= *t)
                })
                .collect();
            let Some(ext) = candidates
                .into_iter()
                .max_by_key(|e| (e.base.txn, e.chain.id.clone()))
            else {
                let oldest = exts
                    .iter()
                    .map(|e| e.base.state_time.clone())
                    .min()
                    .unwrap_or_default();
                return Err(Error::usage(format!(
                    "the set has no point at or before {t}; the oldest is {oldest}"
                ))
                .at(set.dir())
                .hint("`walbundle list` shows the restorable range"));
            };
            // Needed bundles: up to the last whose first transaction was captured by t.
            let needs_beyond_run =
                ext.broken.is_some() && ext.run.last().is_none_or(|(_, h)| h.last_time_us <= t_us);
            let stop = if needs_beyond_run {
                on_break(ext, &format!("the state at {t}"))?
            } else {
                Stop::TimeUs(t_us)
            };
            (ext, stop, format!("the state at {t}"))
        }
    };
    let _ = asked;
    let mut bundles = Vec::new();
    for (b, h) in &ext.run {
        let needed = match stop {
            Stop::Txn(n) => h.first_txn <= n,
            Stop::TimeUs(t) => h.first_time_us <= t,
        };
        if !needed {
            break;
        }
        bundles.push(PlannedBundle {
            seq: b.seq,
            path: b.path.clone(),
            key: b.key.clone(),
            txns: (h.first_txn, h.last_txn()),
        });
    }
    // Never restore less than asked because a newer generation is unreadable.
    if *target == Target::Latest
        && let Some(g) = inv
            .chains
            .iter()
            .filter(|c| c.id.as_str() >= ext.chain.id.as_str())
            .flat_map(|c| c.generations.iter())
            .find(|g| g.manifest.is_err())
        && let Err(why) = &g.manifest
    {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("a generation that may hold a newer state than txn {} is damaged: {why}", ext.end_txn()),
        )
        .at(set.dir())
        .hint(format!(
            "run `walbundle verify` for details; to restore the newest intact point instead, pass --txn {}",
            ext.end_txn()
        )));
    }
    let mut plan = plan_extent(set, ext).ok_or_else(|| {
        Error::corrupt(
            set.dir(),
            "the chain's base generation vanished while planning",
        )
    })?;
    plan.bundles = bundles;
    plan.stop = stop;
    plan.partial = partial;
    Ok(shortcut(plan, ext))
}

/// Start `plan` from the newest generation of its chain that lies on the planned path at or
/// before the stop (a compacted generation), so fewer bundles are replayed.
fn shortcut(mut plan: RestorePlan, ext: &ChainExtent<'_>) -> RestorePlan {
    let last_seq = plan.bundles.last().map_or(plan.generation_seq, |b| b.seq);
    let best = ext
        .chain
        .generations
        .iter()
        .filter_map(|g| g.manifest.as_ref().ok().map(|m| (g, m)))
        .filter(|(_, m)| {
            m.seq > plan.generation_seq
                && m.seq <= last_seq
                && match plan.stop {
                    Stop::Txn(n) => m.txn <= n,
                    Stop::TimeUs(t) => m
                        .state_time
                        .parse::<jiff::Timestamp>()
                        .is_ok_and(|s| s.as_microsecond() <= t),
                }
        })
        .max_by_key(|(_, m)| m.seq);
    if let Some((g, m)) = best {
        plan.generation_seq = m.seq;
        plan.base_txn = m.txn;
        plan.base_time = m.state_time.clone();
        plan.page_size = m.page_size;
        plan.image = g.image_path.clone();
        plan.image_key = g.image_key.clone();
        plan.base = m.clone();
        plan.bundles.retain(|b| b.seq > m.seq);
    }
    plan
}

/// A plan that replays chain extent `ext` to its end (for `verify --deep`).
pub fn plan_extent(set: &BackupSet, ext: &ChainExtent<'_>) -> Option<RestorePlan> {
    let base_gen = ext
        .chain
        .generations
        .iter()
        .find(|g| g.seq == ext.base.seq)?;
    Some(RestorePlan {
        set: set.dir().to_path_buf(),
        chain_id: ext.chain.id.clone(),
        generation_seq: ext.base.seq,
        base_txn: ext.base.txn,
        base_time: ext.base.state_time.clone(),
        page_size: ext.base.page_size,
        image: base_gen.image_path.clone(),
        image_key: base_gen.image_key.clone(),
        objects: Arc::clone(set.objects()),
        bundles: ext
            .run
            .iter()
            .map(|(b, h)| PlannedBundle {
                seq: b.seq,
                path: b.path.clone(),
                key: b.key.clone(),
                txns: (h.first_txn, h.last_txn()),
            })
            .collect(),
        stop: Stop::Txn(ext.end_txn()),
        partial: None,
        base: ext.base.clone(),
        set_id: set.record().set_id.clone(),
    })
}

/// Parse a `--at` value: RFC 3339 (any offset, any fraction) or relative to now (`-10m`,
/// `-2h`, `-1d`, `-30s`, `-1h30m`).
///
/// # Errors
/// `Usage` describing both accepted forms.
pub fn parse_time(s: &str) -> Result<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let secs = parse_duration(rel).map_err(|_| bad_time(s))?;
        return jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(secs))
            .map_err(|_| bad_time(s));
    }
    Err(bad_time(s))
}

/// Parse a duration such as `30s`, `10m`, `2h`, `7d` or `1h30m` into seconds (at least 1).
///
/// # Errors
/// `Usage` naming the accepted form.
pub fn parse_duration(s: &str) -> Result<i64> {
    let bad = || {
        Error::usage(format!("cannot read duration {s:?}"))
            .hint("use a number with a unit: 30s, 10m, 2h, 7d, or combined (1h30m)")
    };
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

fn bad_time(s: &str) -> Error {
    Error::usage(format!("cannot read time {s:?}"))
        .hint("use RFC 3339 (2026-11-21T05:48:24Z, 2026-11-21T06:48:24.5+01:00) or a relative time (-10m, -2h, -1d)")
}

impl RestorePlan {
    /// Cut this plan before bundle `seq` (which failed while replaying): it will stop at the
    /// last transaction before that bundle, recording `why`. `None` if `seq` is not in the plan.
    #[must_use]
    pub fn cut_before(&self, seq: u64, why: String) -> Option<RestorePlan> {
        let i = self.bundles.iter().position(|b| b.seq == seq)?;
        let mut p = self.clone();
        p.bundles.truncate(i);
        let last = p.bundles.last().map_or(p.base_txn, |b| b.txns.1);
        p.stop = Stop::Txn(last);
        p.partial = Some(why);
        Some(p)
    }

    /// What restoring this plan to `out` would do, in a few lines (`restore --dry-run`).
    pub fn describe(&self, out: &Path) -> String {
        let stop = match self.stop {
            Stop::Txn(n) => format!("txn {n}"),
            Stop::TimeUs(t) => format!(
                "the last txn captured at or before {}",
                jiff::Timestamp::from_microsecond(t)
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            ),
        };
        let mut s = format!(
            "would restore {stop} to {}\n  base: chain {} generation {} (txn {}, {})\n",
            out.display(),
            self.chain_id,
            self.generation_seq,
            self.base_txn,
            self.base_time
        );
        match (self.bundles.first(), self.bundles.last()) {
            (Some(f), Some(l)) => s.push_str(&format!(
                "  then {} bundle(s): seq {}..={} (txn {}..={})\n",
                self.bundles.len(),
                f.seq,
                l.seq,
                f.txns.0,
                l.txns.1
            )),
            _ => s.push_str("  no bundles\n"),
        }
        s
    }
}
