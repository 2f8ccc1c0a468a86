//! `walbundle list SET`: chains, generations, bundles, and the restorable range of each chain.
//! Reads manifests and bundle headers only (cheap on any set size).

use std::path::PathBuf;

use serde::Serialize;
use walbundle::bundle::manifest::Origin;
use walbundle::replay::plan::extents;
use walbundle::{BackupSet, Result};

use crate::Common;
use crate::ui;

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup set folder (DEST/<name>).
    pub set: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Serialize)]
struct GenRow {
    seq: u64,
    txn: Option<u64>,
    state_time: Option<String>,
    page_size: Option<u32>,
    page_count: Option<u32>,
    db_bytes: Option<u64>,
    stored_bytes: Option<u64>,
    check: Option<String>,
    origin: Option<Origin>,
    error: Option<String>,
}

#[derive(Serialize)]
struct BundleRow {
    seq: u64,
    first_txn: Option<u64>,
    last_txn: Option<u64>,
    first_time: Option<String>,
    last_time: Option<String>,
    bytes: u64,
    error: Option<String>,
}

#[derive(Serialize)]
struct ChainRow {
    id: String,
    /// Why this chain started (from its first snapshot).
    reason: Option<String>,
    previous_chain: Option<String>,
    generations: Vec<GenRow>,
    bundles: Vec<BundleRow>,
    /// Restorable range through contiguous, readable links (the newest, if a damaged bundle
    /// splits the chain and a compacted generation bridges it).
    restorable: Option<Range>,
    /// The first bad link after that range, if any.
    broken: Option<String>,
    /// Earlier restorable ranges of the chain, each ending at a bad link that a later
    /// generation bridges (the points between are lost).
    earlier: Vec<(Range, String)>,
    stored_bytes: u64,
}

#[derive(Serialize, Clone)]
struct Range {
    chain_id: String,
    first_txn: u64,
    first_time: String,
    last_txn: u64,
    last_time: String,
}

#[derive(Serialize)]
struct Listing {
    set: PathBuf,
    set_id: String,
    name: String,
    source: walbundle::bundle::manifest::SourceIdentity,
    chains: Vec<ChainRow>,
    restorable: Vec<Range>,
    unrelated: Vec<String>,
    stored_bytes: u64,
}

fn t(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub fn run(a: Args) -> Result<u8> {
    let set = BackupSet::open(&a.set)?;
    let inv = set.inventory()?;
    let exts = extents(&inv);
    let mut chains = Vec::new();
    let mut total = 0;
    for c in &inv.chains {
        let mut stored = 0;
        let generations = c
            .generations
            .iter()
            .map(|g| match &g.manifest {
                Ok(m) => {
                    stored += m.image.size;
                    GenRow {
                        seq: g.seq,
                        txn: Some(m.txn),
                        state_time: Some(m.state_time.clone()),
                        page_size: Some(m.page_size),
                        page_count: Some(m.page_count),
                        db_bytes: Some(m.image.raw_size),
                        stored_bytes: Some(m.image.size),
                        check: Some(m.check.clone()),
                        origin: Some(m.origin.clone()),
                        error: None,
                    }
                }
                Err(e) => GenRow {
                    seq: g.seq,
                    txn: None,
                    state_time: None,
                    page_size: None,
                    page_count: None,
                    db_bytes: None,
                    stored_bytes: None,
                    check: None,
                    origin: None,
                    error: Some(e.to_string()),
                },
            })
            .collect();
        let bundles = c
            .bundles
            .iter()
            .map(|b| {
                stored += b.size;
                match &b.header {
                    Ok(h) => BundleRow {
                        seq: b.seq,
                        first_txn: Some(h.first_txn),
                        last_txn: Some(h.last_txn()),
                        first_time: Some(t(h.first_time_us)),
                        last_time: Some(t(h.last_time_us)),
                        bytes: b.size,
                        error: None,
                    },
                    Err(e) => BundleRow {
                        seq: b.seq,
                        first_txn: None,
                        last_txn: None,
                        first_time: None,
                        last_time: None,
                        bytes: b.size,
                        error: Some(e.to_string()),
                    },
                }
            })
            .collect();
        let (reason, previous_chain) = match c.base().map(|m| &m.origin) {
            Some(Origin::Snapshot {
                reason,
                previous_chain,
                ..
            }) => (Some(reason.clone()), previous_chain.clone()),
            Some(Origin::Compaction { .. }) => (
                Some("history before its oldest generation was retired after compaction".into()),
                None,
            ),
            None => (None, None),
        };
        let range = |e: &walbundle::replay::plan::ChainExtent<'_>| Range {
            chain_id: c.id.clone(),
            first_txn: e.base.txn,
            first_time: e.base.state_time.clone(),
            last_txn: e.end_txn(),
            last_time: e
                .run
                .last()
                .map_or_else(|| e.base.state_time.clone(), |(_, h)| t(h.last_time_us)),
        };
        let mine: Vec<_> = exts.iter().filter(|e| e.chain.id == c.id).collect();
        let ext = mine.last();
        let restorable = ext.map(|e| range(e));
        let broken = ext.and_then(|e| e.broken.as_ref().map(|(what, _)| what.clone()));
        let earlier = mine[..mine.len().saturating_sub(1)]
            .iter()
            .map(|e| {
                let what = e.broken.as_ref().map(|b| b.0.clone()).unwrap_or_default();
                (range(e), what)
            })
            .collect();
        total += stored;
        chains.push(ChainRow {
            id: c.id.clone(),
            reason,
            previous_chain,
            generations,
            bundles,
            restorable,
            broken,
            earlier,
            stored_bytes: stored,
        });
    }
    let mut unrelated = inv.unrelated.clone();
    unrelated.extend(inv.chains.iter().flat_map(|c| c.unrelated.iter().cloned()));
    let rec = set.record();
    let listing = Listing {
        set: set.dir().to_path_buf(),
        set_id: rec.set_id.clone(),
        name: rec.name.clone(),
        source: rec.source.clone(),
        restorable: chains
            .iter()
            .flat_map(|c| {
                c.earlier
                    .iter()
                    .map(|e| e.0.clone())
                    .chain(c.restorable.clone())
            })
            .collect(),
        chains,
        unrelated,
        stored_bytes: total,
    };
    if a.common.json {
        ui::json(&listing);
        return Ok(0);
    }
    let mut s = format!(
        "set {} ({})\n  backs up {} on {}\n",
        listing.name,
        listing.set.display(),
        listing.source.path,
        listing.source.host
    );
    for c in &listing.chains {
        s.push_str(&format!(
            "\nchain {}: {}\n",
            c.id,
            c.reason.as_deref().unwrap_or("(no readable generation)")
        ));
        for g in &c.generations {
            if let Some(err) = &g.error {
                s.push_str(&format!("  generation {:>4}  DAMAGED: {err}\n", g.seq));
                continue;
            }
            let kind = match &g.origin {
                Some(Origin::Compaction { from_seq, .. }) => {
                    format!(", compacted from generation {from_seq}")
                }
                _ => String::new(),
            };
            s.push_str(&format!(
                "  generation {:>4}  txn {:>8}  {}  {} pages x {} B = {}, stored {}{kind}\n",
                g.seq,
                g.txn.unwrap_or(0),
                g.state_time.as_deref().unwrap_or(""),
                g.page_count.unwrap_or(0),
                g.page_size.unwrap_or(0),
                ui::bytes(g.db_bytes.unwrap_or(0)),
                ui::bytes(g.stored_bytes.unwrap_or(0)),
            ));
        }
        if let (Some(f), Some(l)) = (c.bundles.first(), c.bundles.last()) {
            let bytes: u64 = c.bundles.iter().map(|b| b.bytes).sum();
            s.push_str(&format!(
                "  bundles {}..={} ({}): txn {}..={}, {} .. {}, {}\n",
                f.seq,
                l.seq,
                c.bundles.len(),
                f.first_txn.unwrap_or(0),
                l.last_txn.unwrap_or(0),
                f.first_time.as_deref().unwrap_or("?"),
                l.last_time.as_deref().unwrap_or("?"),
                ui::bytes(bytes)
            ));
            for b in c.bundles.iter().filter(|b| b.error.is_some()) {
                s.push_str(&format!(
                    "  bundle {} DAMAGED: {}\n",
                    b.seq,
                    b.error.as_deref().unwrap_or("")
                ));
            }
        }
        for (r, what) in &c.earlier {
            s.push_str(&format!(
                "  restorable: txn {}..={} ({} .. {}); then LOST up to the next generation: {what}\n",
                r.first_txn, r.last_txn, r.first_time, r.last_time
            ));
        }
        match (&c.restorable, &c.broken) {
            (Some(r), None) => s.push_str(&format!(
                "  restorable: txn {}..={} ({} .. {}), any transaction in between\n",
                r.first_txn, r.last_txn, r.first_time, r.last_time
            )),
            (Some(r), Some(b)) => s.push_str(&format!(
                "  restorable: txn {}..={} only; BROKEN after that: {b}\n",
                r.first_txn, r.last_txn
            )),
            (None, _) => s.push_str("  restorable: nothing (no readable generation)\n"),
        }
    }
    s.push_str(&format!(
        "\n{} chain(s), {} stored\n",
        listing.chains.len(),
        ui::bytes(listing.stored_bytes)
    ));
    for u in &listing.unrelated {
        s.push_str(&format!("not walbundle's (left alone): {u}\n"));
    }
    ui::out(&s);
    Ok(0)
}
