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
