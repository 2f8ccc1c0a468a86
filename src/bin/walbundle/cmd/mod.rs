//! One file per verb; each parses nothing itself and calls the library.

pub mod capture;
pub mod compact;
pub mod demo;
pub mod generate;
pub mod list;
pub mod restore;
pub mod schedule;
pub mod snapshot;
pub mod status;
pub mod verify;
