//! Fault injection and a durability journal for the destination, for the torture suite
//! (`tests/torture.rs`), in the spirit of redb's crash tests. Both are off unless their
//! environment variable is set; the cost when off is one cached lookup per durable operation.
//!
//! - `WALBUNDLE_FAULTS=<seed>:<one_in>`: each durable operation — creating a file, fsync of a
//!   file or folder, rename — fails with an I/O error with probability 1/`one_in`, decided by a
//!   hash of the seed and the operation's ordinal in this process (so a run is reproducible).
//! - `WALBUNDLE_FAULT_LOG=<file>`: every durable operation that succeeded is appended to the
//!   file as one line (`create P`, `sync P LEN`, `dirsync D`, `rename FROM TO`), so a test can
//!   `kill -9` the process and then simulate a power cut: undo every creation or rename whose
//!   folder was not fsynced after it, and cut every file back to its last fsynced length.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

struct Config {
    faults: Option<(u64, u64)>,
    log: Option<Mutex<std::fs::File>>,
}

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        let faults = std::env::var("WALBUNDLE_FAULTS").ok().and_then(|v| {
            let (s, n) = v.split_once(':')?;
            Some((s.parse().ok()?, n.parse::<u64>().ok()?.max(1)))
        });
        let log = std::env::var_os("WALBUNDLE_FAULT_LOG").and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
                .map(Mutex::new)
        });
        Config { faults, log }
    })
}

static OPS: AtomicU64 = AtomicU64::new(0);

/// Before a durable operation `what` on `path`: fail it if the injected schedule says so.
///
/// # Errors
/// The injected fault, naming the operation.
pub fn inject(what: &str, path: &Path) -> io::Result<()> {
    let Some((seed, one_in)) = config().faults else {
        return Ok(());
    };
    let n = OPS.fetch_add(1, Ordering::SeqCst);
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), seed);
    if h.is_multiple_of(one_in) {
        return Err(io::Error::other(format!(
            "injected fault (WALBUNDLE_FAULTS) in {what} of {}",
            path.display()
        )));
    }
    Ok(())
}

/// Record a durable operation that succeeded (see the module docs for the line format).
pub fn record(line: std::fmt::Arguments<'_>) {
    if let Some(log) = &config().log {
        let mut f = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(f, "{line}");
    }
}

/// fsync `file` (at `path`), with injection and journaling.
///
/// # Errors
/// The injected fault or the fsync's own error.
pub fn sync_file(file: &std::fs::File, path: &Path) -> io::Result<()> {
    inject("fsync", path)?;
    file.sync_all()?;
    if config().log.is_some() {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        record(format_args!("sync\t{}\t{len}", path.display()));
    }
    Ok(())
}

/// Create `path` as a new file (failing if it exists), with injection and journaling.
///
/// # Errors
/// The injected fault or the creation's own error.
pub fn create_new(path: &Path) -> io::Result<std::fs::File> {
    open_new(
        path,
        std::fs::OpenOptions::new().write(true).create_new(true),
    )
}

/// Open `path` with `opts` (which create it), with injection and journaling.
///
/// # Errors
/// The injected fault or the open's own error.
pub fn open_new(path: &Path, opts: &std::fs::OpenOptions) -> io::Result<std::fs::File> {
    inject("create", path)?;
    let f = opts.open(path)?;
    record(format_args!("create\t{}", path.display()));
    Ok(f)
}

/// Create folder `path`, with injection and journaling.
///
/// # Errors
/// The injected fault or the creation's own error.
pub fn create_dir(path: &Path) -> io::Result<()> {
    inject("create", path)?;
    std::fs::create_dir(path)?;
    record(format_args!("create\t{}", path.display()));
    Ok(())
}
