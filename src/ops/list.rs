//! What a set holds, as a report: chains, generations, bundles, and each chain's restorable
//! ranges (`walbundle list`). Reads manifests and bundle headers only.

use std::path::PathBuf;

use serde::Serialize;

use crate::bundle::manifest::Origin;
use crate::replay::plan::extents;
use crate::{BackupSet, Result};

#[derive(Debug, Clone, Serialize)]
/// One generation of a chain (or why it cannot be read).
pub struct GenRow {
    pub seq: u64,
    pub txn: Option<u64>,
    pub state_time: Option<String>,
    pub page_size: Option<u32>,
    pub page_count: Option<u32>,
    pub db_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub check: Option<String>,
    pub origin: Option<Origin>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
/// One bundle of a chain (or why its header cannot be read).
pub struct BundleRow {
    pub seq: u64,
    pub first_txn: Option<u64>,
    pub last_txn: Option<u64>,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    pub bytes: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
/// One chain: its generations, bundles and restorable ranges.
pub struct ChainRow {
    pub id: String,
    /// Why this chain started (from its first snapshot).
    pub reason: Option<String>,
    pub previous_chain: Option<String>,
    pub generations: Vec<GenRow>,
    pub bundles: Vec<BundleRow>,
    /// Restorable range through contiguous, readable links (the newest, if a damaged bundle
    /// splits the chain and a compacted generation bridges it).
    pub restorable: Option<Range>,
    /// The first bad link after that range, if any.
    pub broken: Option<String>,
    /// Earlier restorable ranges of the chain, each ending at a bad link that a later
    /// generation bridges (the points between are lost).
    pub earlier: Vec<(Range, String)>,
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
/// A restorable range of transactions, every point in it restorable.
pub struct Range {
    pub chain_id: String,
    pub first_txn: u64,
    pub first_time: String,
    pub last_txn: u64,
    pub last_time: String,
}

#[derive(Debug, Clone, Serialize)]
/// What `walbundle list` shows: the set, its chains, and every restorable range.
pub struct Listing {
    pub set: PathBuf,
    pub set_id: String,
    pub name: String,
    pub source: crate::bundle::manifest::SourceIdentity,
    pub chains: Vec<ChainRow>,
    pub restorable: Vec<Range>,
    pub unrelated: Vec<String>,
    pub stored_bytes: u64,
    /// Bundles sealed on this host that wait in the set's spool for an object store that did
    /// not answer: no restore reaches their transactions until a capture publishes them.
    pub spooled: Vec<PathBuf>,
}

fn t(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// List the set.
///
/// # Errors
/// `Io` if a folder cannot be listed. Damaged files are reported in the listing, not errors.
pub fn list(set: &BackupSet) -> Result<Listing> {
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
        let range = |e: &crate::replay::plan::ChainExtent<'_>| Range {
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
        spooled: set.spooled(),
    };
    Ok(listing)
}
