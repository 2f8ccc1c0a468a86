//! Chain-granular retention for `snapshot --keep/--retain-days`, and retiring folders safely
//! (also used by compaction's finer retention, `compact.rs`).
//!
//! A chain is kept if *any* rule keeps it: it is among the `keep` newest, or its newest state is
//! younger than `retain_days`. The newest chain is always kept, and a chain whose manifests
//! cannot be read is never deleted (walbundle deletes only what it can prove is its own).
//!
//! Deletion is crash-safe: each generation folder is first renamed to a temporary name (so it
//! stops being a restore point in one step and listings ignore it), then its known files are
//! removed. Files walbundle did not write are left where they are.

use serde::Serialize;

use crate::chain::{BackupSet, Inventory};
use crate::error::{IoContext, Result};
use crate::store::LocalStore;

/// Which generations to keep.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetentionPolicy {
    /// Keep at least this many newest chains.
    pub keep: Option<usize>,
    /// Keep every chain whose newest state is younger than this many days.
    pub retain_days: Option<u64>,
}

impl RetentionPolicy {
    /// True if no rule was given (retention does nothing).
    pub fn is_empty(&self) -> bool {
        self.keep.is_none() && self.retain_days.is_none()
    }
}

/// A chain retention will retire.
#[derive(Debug, Clone, Serialize)]
pub struct Retire {
    /// Chain id.
    pub chain_id: String,
    /// Its newest state time.
    pub state_time: String,
    /// Why.
    pub reason: String,
}

/// Decide which chains to retire.
pub fn plan(inv: &Inventory, policy: &RetentionPolicy, now: jiff::Timestamp) -> Vec<Retire> {
    if policy.is_empty() {
        return Vec::new();
    }
    // Chains whose every generation manifest is valid, newest first by state.
    let mut chains: Vec<(&str, u64, jiff::Timestamp, String)> = inv
        .chains
        .iter()
        .filter(|c| !c.generations.is_empty() && c.generations.iter().all(|g| g.manifest.is_ok()))
        .filter_map(|c| {
            let m = c
                .generations
                .iter()
                .filter_map(|g| g.manifest.as_ref().ok())
                .max_by_key(|m| m.txn)?;
            let t: jiff::Timestamp = m.state_time.parse().ok()?;
            Some((c.id.as_str(), m.txn, t, m.state_time.clone()))
        })
        .collect();
    chains.sort_by(|a, b| (b.1, b.0).cmp(&(a.1, a.0)));
    let mut out = Vec::new();
    for (i, (id, _, t, ts)) in chains.iter().enumerate() {
        if i == 0 {
            continue;
        }
        let kept_by_count = policy.keep.is_some_and(|k| i < k);
        let age_days = now.duration_since(*t).as_secs() / 86_400;
        let kept_by_age = policy
            .retain_days
            .is_some_and(|d| age_days < i64::try_from(d).unwrap_or(i64::MAX));
        if !kept_by_count && !kept_by_age {
            let mut why = Vec::new();
            if let Some(k) = policy.keep {
                why.push(format!("not among the {k} newest"));
            }
            if let Some(d) = policy.retain_days {
                why.push(format!("older than {d} days"));
            }
            out.push(Retire {
                chain_id: (*id).to_string(),
                state_time: ts.clone(),
                reason: why.join(", "),
            });
        }
    }
    out
}

/// Retire `chains` from `set`, each as a whole (generations and bundles). The caller holds
/// the maintenance lock.
///
/// # Errors
/// `Io` if a deletion fails; what was already retired stays retired, the rest is untouched.
pub fn apply(set: &BackupSet, chains: &[Retire]) -> Result<()> {
    for r in chains {
        match set.store() {
            Ok(local) => retire_dir(local, "", &r.chain_id)?,
            Err(_) => retire_objects(set, &r.chain_id)?,
        }
    }
    Ok(())
}

/// Retire everything walbundle wrote under `prefix` (a chain, or a generation `chain/gen-…`) in
/// a set in an object store, where nothing can be renamed away in one step. The order keeps
/// what remains valid at every point a crash may stop it: bundles newest first (the chain
/// only gets shorter), then each generation's manifest before its image (an image no manifest
/// names is ignored), newest generation first.
///
/// # Errors
/// `Io` if a listing or deletion fails; what was deleted stays deleted.
pub(crate) fn retire_objects(set: &BackupSet, prefix: &str) -> Result<()> {
    use crate::chain::layout;
    let mut keys: Vec<(u8, std::cmp::Reverse<String>)> = Vec::new();
    for o in set.objects().list(&format!("{prefix}/"), None)? {
        let name = o.key.rsplit('/').next().unwrap_or_default();
        if !layout::is_own_name(name) {
            continue; // someone else's: left alone
        }
        let rank = if crate::bundle::wbb::parse_file_name(name).is_some() {
            0
        } else if name == layout::MANIFEST_FILE {
            1
        } else {
            2
        };
        keys.push((rank, std::cmp::Reverse(o.key)));
    }
    keys.sort();
    // Per generation, its manifest (rank 1) must go before its image (rank 2): sorting by rank
    // does that for every generation at once, newest keys first within a rank.
    for (_, std::cmp::Reverse(key)) in keys {
        set.objects().delete(&key)?;
        crate::fault::pause_point("retire:object");
    }
    Ok(())
}

/// Retire folder `name` inside `parent` (a chain at the root, or a generation in its chain):
/// renamed to a temporary name in one step, so it stops being part of the set at once, then its
/// files removed. A folder holding files walbundle did not write is not renamed (that would
/// hide them): walbundle's own files inside it are removed in place and the rest left alone.
///
/// # Errors
/// `Io` if the rename fails.
pub(crate) fn retire_dir(store: &LocalStore, parent: &str, name: &str) -> Result<()> {
    let key = if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    };
    let from = store.path(&key);
    if !from.exists() {
        return Ok(());
    }
    if has_foreign(&from) {
        store.remove_own_tree(&from);
        return Ok(());
    }
    let tmp = crate::store::temp_key_name(&format!("retired-{name}"));
    let to = store.path(&if parent.is_empty() {
        tmp
    } else {
        format!("{parent}/{tmp}")
    });
    crate::sys::rename_noreplace(&from, &to).ctx(&from, "retiring")?;
    crate::store::sync_dir(from.parent().unwrap_or(store.root()))?;
    crate::fault::pause_point("retire:renamed");
    store.remove_own_tree(&to);
    Ok(())
}

fn has_foreign(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !crate::chain::layout::is_own_name(&n) || (e.path().is_dir() && has_foreign(&e.path()))
        })
    })
}
