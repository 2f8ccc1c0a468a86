//! walbundle's integration tests: one binary, real SQLite databases, real writer processes,
//! real files, the real `walbundle` executable. Unix only (Python writers, `kill -9`, POSIX
//! locks, tmpfs); what Windows users run is tested by `tests/windows.rs`, under Wine in CI.
#![cfg(unix)]

mod support;

mod app_contract;
mod bundle_corruption;
mod capture;
mod capture_review;
mod compact;
mod corruption;
mod errors;
mod fuzz_seeds;
mod golden;
mod layers;
mod model;
mod object_store;
mod ops;
mod resources;
mod retention;
mod snapshot;
mod store;
mod torture;
