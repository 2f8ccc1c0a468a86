//! Capture's events and statistics as log lines for people (the CLI prints them; an embedding
//! application may log them too).

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::progress::human_bytes;

impl Event {
    /// The event as one log line (without the database's name), or `None` for events that are
    /// not worth a line of their own (a WAL restart followed without a gap).
    pub fn describe(&self) -> Option<String> {
        Some(match self {
            Event::ChainStarted {
                chain_id,
                reason,
                txn,
            } => format!("new chain {chain_id} from a full snapshot (txn {txn}): {reason}"),
            Event::Resumed {
                chain_id,
                next_seq,
                txn,
            } => format!("continuing chain {chain_id} at bundle {next_seq} (after txn {txn})"),
            Event::Bundle {
                seq, txns, bytes, ..
            } => format!(
                "bundle {seq}: txn {}..={} ({})",
                txns.0,
                txns.1,
                human_bytes(*bytes)
            ),
            Event::WalRestarted { .. } => return None,
            Event::Warning { message } => format!("warning: {message}"),
            Event::Stopped { stats } => stats.describe(),
        })
    }
}

impl CaptureStats {
    /// A one-line summary of a run, for the log when capture stops.
    pub fn describe(&self) -> String {
        format!(
            "stopped: {} bundle(s), {} txn(s), {} written; {} read-mark moves, {} own PASSIVE \
             checkpoints, stepped aside for {} application checkpoint(s) (longest {:.1} ms)",
            self.bundles,
            self.txns,
            human_bytes(self.bundle_bytes),
            self.pin_moves,
            self.checkpoints,
            self.step_asides,
            self.step_aside_max_us as f64 / 1000.0
        )
    }
}
