//! What walbundle knows about SQLite's own files, in one place: the WAL and wal-index formats,
//! a database's sidecar files, locating and opening a source, reading pages through
//! `sqlite_dbpage`, and probing SQLite's locks. Capture and restore both build on it; it builds on
//! nothing of walbundle's but errors and system calls.

pub mod source;
pub mod wal;
