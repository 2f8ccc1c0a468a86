//! A set's summary from names and a handful of small reads: what `status` and monitoring need,
//! at a cost that does not grow with the number of bundles.
//!
//! [`BackupSet::inventory`] opens and checks the header of every bundle; at a thousand sets with
//! thousands of bundles each that is millions of reads for a question asked every minute. The
//! summary lists each chain once, reads its generation manifests (a handful), and the header of
//! only the newest bundle of each chain's last contiguous run. Gaps are found from the names
//! (bundle sequence numbers are consecutive in a chain), as [`crate::replay::plan::extents`]
//! finds them. What it does not see is damage inside a file whose name is in sequence: that is
//! `verify`'s job, and status says so.

use super::{BackupSet, ChainInventory, layout};
use crate::error::Result;

/// The newest generation of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationSummary {
    /// Its chain.
    pub chain_id: String,
    /// Bundle sequence it sits at.
    pub seq: u64,
    /// The transaction it holds.
    pub txn: u64,
    /// Its state time (RFC 3339).
    pub state_time: String,
}

/// What a set holds, in brief.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetSummary {
    /// The generation with the highest transaction, across chains.
    pub newest_generation: Option<GenerationSummary>,
    /// Oldest and newest restorable transaction across chains.
    pub restorable: Option<(u64, u64)>,
    /// When the newest restorable transaction was captured (microseconds since the epoch), from
    /// the newest bundle's header, else the generation's state time.
    pub newest_time_us: Option<i64>,
    /// Gaps found from names (a bundle missing; the newest bundle's header unreadable).
    pub broken: Vec<String>,
    /// Number of bundle files seen.
    pub bundles: usize,
    /// Number of generation folders seen.
    pub generations: usize,
}

impl BackupSet {
    /// The names one level inside folder `dir` of the set (`""`: its root) and whether each is
    /// a folder, sorted: a directory read for a local set, one listing by prefix otherwise.
    fn names(&self, dir: &str) -> Result<Vec<(String, bool)>> {
        if let Ok(local) = self.store() {
            return local.list_names(dir);
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out: Vec<(String, bool)> = Vec::new();
        for o in self.objects().list(&prefix, None)? {
            let rest = &o.key[prefix.len()..];
            let (name, is_dir) = match rest.split_once('/') {
                Some((first, _)) => (first, true),
                None => (rest, false),
            };
            if out.last().is_none_or(|(n, _)| n != name) {
                out.push((name.to_string(), is_dir));
            }
        }
        Ok(out)
    }

    /// Summarize the set without reading every bundle (see the module docs).
    ///
    /// # Errors
    /// `Io` if a folder cannot be listed.
    pub fn summary(&self) -> Result<SetSummary> {
        let mut out = SetSummary::default();
        let mut newest: Option<(u64, i64)> = None; // (txn, time) of the newest chain
        for (name, is_dir) in self.names("")? {
            if !(is_dir && layout::is_chain_id(&name)) {
                continue;
            }
            let chain = self.chain_names(&name)?;
            out.bundles += chain.bundle_seqs.len();
            out.generations += chain.inv.generations.len();
            for g in &chain.inv.generations {
                if let Ok(m) = &g.manifest
                    && out.newest_generation.as_ref().is_none_or(|n| m.txn > n.txn)
                {
                    out.newest_generation = Some(GenerationSummary {
                        chain_id: m.chain_id.clone(),
                        seq: m.seq,
                        txn: m.txn,
                        state_time: m.state_time.clone(),
                    });
                }
            }
            let Some(first) = chain.inv.base() else {
                continue;
            };
            let (end_txn, end_time) = self.chain_end(&chain, &mut out.broken);
            let lo = out
                .restorable
                .map_or(first.txn, |(lo, _)| lo.min(first.txn));
            let hi = out.restorable.map_or(end_txn, |(_, hi)| hi.max(end_txn));
            out.restorable = Some((lo, hi));
            // Chains come in id order (start time): a later chain holds the newer state even
            // if an older one's number is higher (see `replay::plan::newest_extent`).
            newest = Some((end_txn, end_time));
        }
        out.newest_time_us = newest.map(|(_, t)| t);
        Ok(out)
    }

    /// A chain's generations (manifests read) and its bundle sequence numbers (names only).
    fn chain_names(&self, id: &str) -> Result<ChainNames> {
        let mut inv = ChainInventory {
            id: id.to_string(),
            ..Default::default()
        };
        let mut bundle_seqs = Vec::new();
        for (name, is_dir) in self.names(id)? {
            if let Some(seq) = crate::bundle::wbb::parse_file_name(&name).filter(|_| !is_dir) {
                bundle_seqs.push(seq);
            } else if let Some(seq) = layout::parse_generation_dir(&name).filter(|_| is_dir) {
                let key = format!("{id}/{name}");
                inv.generations.push(self.generation_entry(id, seq, &key)?);
            }
        }
        inv.generations.sort_by_key(|g| g.seq);
        bundle_seqs.sort_unstable();
        Ok(ChainNames { inv, bundle_seqs })
    }

    /// The newest restorable transaction of a chain and its time: walk the sequence numbers
    /// from the base as `extents` does (a gap ends a run; a readable generation at or after the
    /// gap starts the next), then read the header of the last run's newest bundle only.
    fn chain_end(&self, chain: &ChainNames, broken: &mut Vec<String>) -> (u64, i64) {
        let id = &chain.inv.id;
        let Some(mut base) = chain.inv.base() else {
            return (0, 0);
        };
        let seqs = &chain.bundle_seqs;
        let mut expect = base.seq + 1;
        let mut i = seqs.partition_point(|&s| s <= base.seq);
        let mut last = None; // newest bundle of the current run
        loop {
            let next = seqs.get(i).copied();
            if next == Some(expect) {
                last = Some(expect);
                expect += 1;
                i += 1;
                continue;
            }
            // A gap (a later bundle, or a generation beyond the run's end), or the end.
            let bridge = chain.inv.generation_from(expect);
            let gap = match (next, bridge) {
                (Some(n), _) => {
                    format!("chain {id}: bundle {expect} is missing (next present: {n})")
                }
                (None, Some(g)) => {
                    format!(
                        "chain {id}: bundle {expect} is missing (generation {} follows)",
                        g.seq
                    )
                }
                (None, None) => break,
            };
            broken.push(gap);
            let Some(g) = bridge else { break };
            // Walk on from the bridge.
            base = g;
            expect = g.seq + 1;
            last = None;
            i = seqs.partition_point(|&s| s <= base.seq);
        }
        // The newest bundle's header says where the run ends; an unreadable one ends it earlier.
        let mut seq = last;
        while let Some(s) = seq.filter(|&s| s > base.seq) {
            let key = format!("{id}/{}", crate::bundle::wbb::file_name(s));
            match super::read_placed_header(self.objects.as_ref(), &key, id, s) {
                Ok(h) => return (h.last_txn(), h.last_time_us),
                Err(e) => broken.push(format!("bundle {s} is damaged: {e}")),
            }
            seq = Some(s - 1);
        }
        (base.txn, base.state_time_us().unwrap_or(0))
    }
}

struct ChainNames {
    inv: ChainInventory,
    bundle_seqs: Vec<u64>,
}
