//! The capture heartbeat: `SET/.walbundle-capture.json`, rewritten (temp + rename) by a running
//! capture about every second and when it stops or fails, so `walbundle status` can tell a
//! current capture from a dead, stuck or failing one without talking to the process.
//!
//! It is a status file, not part of the backup: never fsynced, ignored by `verify` and
//! `restore`, and safe to delete.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// File name at the set's root.
pub use crate::chain::layout::HEARTBEAT_FILE as FILE;

/// What a capture process last said about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    /// "running", "stopped" or "failing".
    pub state: String,
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// The database captured.
    pub db: String,
    /// When this file was written (µs since the epoch).
    pub at_us: i64,
    /// When the capture process started (µs).
    pub started_us: i64,
    /// Current chain.
    pub chain_id: String,
    /// Newest transaction captured (sealed or pending).
    pub last_txn: u64,
    /// Newest transaction sealed into a published bundle or generation.
    pub sealed_txn: u64,
    /// When the newest bundle was sealed (µs; 0: none this run).
    pub last_seal_us: i64,
    /// Capture time of the oldest transaction captured but not yet sealed (µs; 0: none).
    pub oldest_unsealed_us: i64,
    /// Since when committed frames could not be read (µs; 0: not stuck).
    pub stuck_since_us: i64,
    /// Bundles sealed but not yet in the set: they wait in the spool on this machine for an
    /// object store that does not answer (0 for a local set).
    #[serde(default)]
    pub unpublished: u64,
    /// Commit time of the oldest transaction in those bundles (µs; 0: none wait).
    #[serde(default)]
    pub oldest_unpublished_us: i64,
    /// Bundles, transactions, bytes published this run.
    pub bundles: u64,
    /// Transactions captured this run.
    pub txns: u64,
    /// Bytes of bundles published this run.
    pub bundle_bytes: u64,
    /// Longest time this run took to step out of the way of the application's own blocking
    /// checkpoint, µs (walbundle never holds the write lock; this is how long its read mark
    /// may have delayed such a checkpoint).
    #[serde(default)]
    pub step_aside_max_us: u64,
    /// The last error (empty: none since the last success).
    pub last_error: String,
    /// When it happened (µs; 0: none).
    pub last_error_us: i64,
    /// Errors this run.
    pub errors: u64,
    /// Requests this run sent to the set's store, by kind.
    #[serde(default)]
    pub requests: crate::store::Requests,
}

impl Heartbeat {
    /// Seconds the oldest committed transaction not yet in the set has waited, as of
    /// `now_us`: since the oldest transaction sealed but waiting for the store, else the oldest
    /// captured-but-unsealed one, or since capture got stuck.
    pub fn lag_s(&self, now_us: i64) -> f64 {
        let since = [
            self.oldest_unpublished_us,
            self.oldest_unsealed_us,
            self.stuck_since_us,
        ]
        .into_iter()
        .filter(|&t| t > 0)
        .min();
        since.map_or(0.0, |t| (now_us - t).max(0) as f64 / 1e6)
    }
}

/// Write `hb` for the set at `set_dir` (best effort: a status file must never stop a capture).
/// It lives in the set's folder, or for a set in an object store on this machine
/// ([`crate::chain::state_dir_of`]): never an object rewritten every second.
pub fn write(set_dir: &Path, hb: &Heartbeat) {
    let Ok(bytes) = serde_json::to_vec_pretty(hb) else {
        return;
    };
    let set_dir = &crate::chain::state_dir_of(set_dir);
    if !set_dir.is_dir() {
        let _ = std::fs::create_dir_all(set_dir);
    }
    let tmp = set_dir.join(crate::store::temp_key_name(FILE));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, set_dir.join(FILE)).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Read the heartbeat of the set at `set_dir`, if there is a readable one.
pub fn read(set_dir: &Path) -> Option<Heartbeat> {
    let f = std::fs::File::open(crate::chain::state_dir_of(set_dir).join(FILE)).ok()?;
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(f, 1 << 16), &mut s).ok()?;
    serde_json::from_str(&s).ok()
}
