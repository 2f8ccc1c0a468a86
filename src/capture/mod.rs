//! Reading the live source: its WAL and wal-index from outside the pager, and page-exact
//! snapshots tied to a WAL position.

pub mod engine;
pub mod heartbeat;
pub mod pin;
pub mod snapshot;
pub mod supervisor;
