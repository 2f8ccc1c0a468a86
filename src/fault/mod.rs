//! A seam for crash tests: named points in multi-step operations where a test can make the
//! process stop and wait, so `kill -9` lands exactly there instead of at a random moment.
//!
//! When the environment variable `WALBUNDLE_PAUSE_AT` equals a point's name, the process
//! writes that name into the file named by `WALBUNDLE_PAUSE_FILE` (if set) and sleeps for ten
//! minutes. Nothing happens otherwise; the variables are for tests only.
//!
//! [`io`] injects I/O failures and journals durable operations for the torture suite.

pub mod io;

/// Stop here if a test asked to (see the module docs).
pub fn pause_point(name: &str) {
    if std::env::var_os("WALBUNDLE_PAUSE_AT").is_some_and(|v| v == name) {
        if let Some(f) = std::env::var_os("WALBUNDLE_PAUSE_FILE") {
            let _ = std::fs::write(f, name);
        }
        std::thread::sleep(std::time::Duration::from_secs(600));
    }
}
