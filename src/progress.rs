//! Progress reporting for long operations. The library reports; the binary decides whether
//! anyone sees it (a bar on a terminal, nothing when piped or under `--json`).

/// Receives progress of one long operation at a time.
pub trait Progress: Send + Sync {
    /// A phase starts: `label` with `total` units (bytes), 0 if unknown.
    fn begin(&self, _label: &str, _total: u64) {}
    /// `n` more units done.
    fn advance(&self, _n: u64) {}
    /// The phase is over.
    fn end(&self) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
