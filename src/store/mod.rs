//! The one seam through which every byte reaches a destination.
//!
//! A destination offers what both a local folder ([`LocalStore`]) and an object store
//! ([`s3::S3Store`], with the `s3` feature) can honour — the [`Store`] trait: put-if-absent of a
//! complete object (never replace), get (whole, bounded, and ranged), a flat listing by prefix
//! with a start-after key, and deletion. Nothing is ever modified after it is published.
//! [`Location`] tells a local folder from an object-store URL and refuses schemes it does not
//! know.

mod local;
mod location;
#[cfg(feature = "s3")]
pub mod s3;
pub mod settings;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use local::*;
pub use location::Location;
pub use settings::S3Settings;

use crate::error::Result;

/// Prefix of every temporary name walbundle creates in a destination. Listings skip it.
pub const TEMP_PREFIX: &str = ".wbtmp-";

/// One object of a flat listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its key, relative to the store's root (`/`-separated).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Requests a store has sent, by kind (object stores bill per request; a local folder counts
/// its operations the same way, so figures compare).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Requests {
    /// Objects written (a multipart upload counts each part and the completion).
    pub put: u64,
    /// Objects or ranges read.
    pub get: u64,
    /// Listing pages.
    pub list: u64,
    /// Existence or size probes.
    pub head: u64,
    /// Objects deleted.
    pub delete: u64,
}

impl Requests {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.put + self.get + self.list + self.head + self.delete
    }
}

/// Request counters a store keeps.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    put: std::sync::atomic::AtomicU64,
    get: std::sync::atomic::AtomicU64,
    list: std::sync::atomic::AtomicU64,
    head: std::sync::atomic::AtomicU64,
    delete: std::sync::atomic::AtomicU64,
}

/// A kind of request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Put,
    Get,
    List,
    Head,
    Delete,
}

impl Counters {
    pub(crate) fn count(&self, kind: Kind) {
        use std::sync::atomic::Ordering::Relaxed;
        match kind {
            Kind::Put => self.put.fetch_add(1, Relaxed),
            Kind::Get => self.get.fetch_add(1, Relaxed),
            Kind::List => self.list.fetch_add(1, Relaxed),
            Kind::Head => self.head.fetch_add(1, Relaxed),
            Kind::Delete => self.delete.fetch_add(1, Relaxed),
        };
    }

    pub(crate) fn snapshot(&self) -> Requests {
        use std::sync::atomic::Ordering::Relaxed;
        Requests {
            put: self.put.load(Relaxed),
            get: self.get.load(Relaxed),
            list: self.list.load(Relaxed),
            head: self.head.load(Relaxed),
            delete: self.delete.load(Relaxed),
        }
    }
}

/// What every destination honours. Keys are relative, `/`-separated, and never start with `/`.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Where `key` is, for messages: a file path, or `s3://bucket/prefix/key`.
    fn location(&self, key: &str) -> PathBuf;

    /// Publish `data` under `key` if nothing is there. `Refused` if something is — unless it
    /// holds exactly `data` (a retried write whose first answer was lost), which is success.
    ///
    /// # Errors
    /// `Refused` as above; `Io` if the store cannot be written (after retries).
    fn put_new(&self, key: &str, data: &[u8]) -> Result<()>;

    /// Publish the local file `src` (complete, not changing) under `key` if nothing is there,
    /// streaming it (in parts on object stores); as [`Store::put_new`] otherwise.
    ///
    /// # Errors
    /// As [`Store::put_new`]; `Io` naming `src` if it cannot be read.
    fn put_new_file(&self, key: &str, src: &Path) -> Result<()>;

    /// All of `key`, refusing an object over `max` bytes (no honest one is larger, and a
    /// hostile one must not make us allocate without bound).
    ///
    /// # Errors
    /// `Io` with kind `NotFound` if missing; `Corrupt` if over `max`.
    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>>;

    /// `len` bytes of `key` from `offset` (fewer at its end).
    ///
    /// # Errors
    /// As [`Store::get`].
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// A stream of all of `key`.
    ///
    /// # Errors
    /// As [`Store::get`].
    fn reader(&self, key: &str) -> Result<Box<dyn Read + Send>>;

    /// Every object whose key starts with `prefix` (and sorts after `start_after`), sorted by
    /// key, without walbundle's temporaries.
    ///
    /// # Errors
    /// `Io` if the store cannot be listed.
    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<Object>>;

    /// Delete `key`; a missing one is fine (an interrupted earlier deletion).
    ///
    /// # Errors
    /// `Io` if the store refuses.
    fn delete(&self, key: &str) -> Result<()>;

    /// Requests sent so far, by kind.
    fn requests(&self) -> Requests;

    /// Abort the multipart uploads under `prefix` begun more than `older_than` ago and never
    /// completed (a writer killed in the middle of a large upload leaves its parts stored and
    /// billed, invisible to listings); returns how many. A folder has none.
    ///
    /// # Errors
    /// The store cannot be listed.
    fn abort_abandoned_uploads(
        &self,
        prefix: &str,
        older_than: std::time::Duration,
    ) -> Result<usize> {
        let _ = (prefix, older_than);
        Ok(0)
    }

    /// Tries per request from now on, one right after another (object stores: at least 1; 0
    /// restores the configured retries with their backoff; a folder ignores it). Capture lowers
    /// it so that an unreachable store never stalls its loop; it retries at every poll.
    fn set_patience(&self, attempts: u32) {
        let _ = attempts;
    }

    /// The file that holds `key`, when the store is a folder (readers then read it in place).
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        let _ = key;
        None
    }
}

/// A fresh path in the system temp folder for walbundle's own scratch use (`what`: what it is
/// for, `name`: the name it stands for), never reused: `.wbtmp-<what>-<pid>-<random>-<name>`.
pub fn scratch_path(what: &str, name: &str) -> PathBuf {
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    std::env::temp_dir().join(format!(
        "{TEMP_PREFIX}{what}-{}-{:016x}-{name}",
        std::process::id(),
        u64::from_le_bytes(r)
    ))
}

/// The tag and process id of a walbundle temporary named `.wbtmp-<tag>-<pid>-…` (the pid
/// `None` if that part is not a number); `None` for other names.
pub(crate) fn temp_owner(name: &str) -> Option<(&str, Option<u32>)> {
    let mut parts = name.strip_prefix(TEMP_PREFIX)?.splitn(3, '-');
    let tag = parts.next().unwrap_or("");
    Some((tag, parts.next().and_then(|p| p.parse().ok())))
}

/// How long ago the entry was last modified, if that can be told.
pub(crate) fn entry_age(e: &std::fs::DirEntry) -> Option<std::time::Duration> {
    e.metadata().ok()?.modified().ok()?.elapsed().ok()
}

/// What [`scratch_path`] names are for; [`clean_dead_scratch`] removes only these.
const SCRATCH_KINDS: [&str; 3] = ["fetch", "upload", "stage"];

/// Remove the scratch files and folders of [`scratch_path`] that walbundle processes which no
/// longer exist left in the system temp folder (a `kill -9` in the middle of a download or an
/// upload), once per process; returns how many. A name whose process is alive, or that changed
/// in the last ten minutes (a process of another PID namespace sharing the folder), stays.
pub fn clean_dead_scratch() -> usize {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut removed = 0;
    ONCE.call_once(|| {
        let dir = std::env::temp_dir();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some((kind, Some(pid))) = name.to_str().and_then(temp_owner) else {
                continue;
            };
            if !SCRATCH_KINDS.contains(&kind) || crate::sys::pid_alive(pid) {
                continue;
            }
            let recent = entry_age(&e).is_none_or(|age| age < std::time::Duration::from_secs(600));
            if recent {
                continue;
            }
            let p = e.path();
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed += usize::from(gone.is_ok());
        }
    });
    removed
}

/// A local file holding an object: the file itself in a local folder, else a temporary download
/// (removed on drop). Readers that need a file (seeking, reading twice) use it; errors that name
/// the download are turned back into the object's location by [`LocalCopy::relocate`].
#[derive(Debug)]
pub struct LocalCopy {
    /// The file to read.
    pub path: PathBuf,
    /// Where the object is, for messages.
    pub location: PathBuf,
    temporary: bool,
}

impl LocalCopy {
    /// `e`, naming the object's location instead of the download.
    pub fn relocate(&self, e: crate::Error) -> crate::Error {
        if self.temporary {
            e.relocated(&self.path, &self.location)
        } else {
            e
        }
    }
}

impl Drop for LocalCopy {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `f` applied to every item on up to `workers` threads, the results in the items' order (for
/// requests to an object store, whose latency dominates: a folder's callers stay sequential).
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let workers = workers.clamp(1, items.len().max(1));
    if workers == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                sc.spawn(|| {
                    let mut got = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        got.push((i, f(item)));
                    }
                    got
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Requests an object-store reader keeps in flight at once (listings stay one at a time).
pub const PARALLEL_REQUESTS: usize = 8;

/// Local copies of `keys` in order, each made ready by `ready` (a bundle's digest checked, say)
/// on a thread of their own, ahead of the caller: so a restore downloads and checks the next
/// bundles while it replays one. From an object store `depth` at a time, in parallel; from a
/// folder (whose objects are their own files) one at a time, at most `depth` ahead.
pub struct Prefetch<T> {
    rx: Option<std::sync::mpsc::Receiver<Result<(LocalCopy, T)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetch<T> {
    /// Start fetching `keys` of `store`.
    pub fn start(
        store: &std::sync::Arc<dyn Store>,
        keys: Vec<String>,
        depth: usize,
        ready: impl Fn(&LocalCopy) -> Result<T> + Send + Sync + 'static,
    ) -> Self {
        let depth = depth.max(1);
        let local = keys.first().is_none_or(|k| store.local_path(k).is_some());
        let (tx, rx) = std::sync::mpsc::sync_channel(depth);
        let store = std::sync::Arc::clone(store);
        let one = move |k: &String| {
            let copy = local_copy(store.as_ref(), k)?;
            let t = ready(&copy).map_err(|e| copy.relocate(e))?;
            Ok((copy, t))
        };
        let thread = std::thread::spawn(move || {
            let batch = if local { 1 } else { depth };
            for keys in keys.chunks(batch) {
                for got in parallel_map(keys, batch, &one) {
                    let failed = got.is_err();
                    // A receiver that is gone (the replay stopped early) ends the fetching.
                    if tx.send(got).is_err() || failed {
                        return;
                    }
                }
            }
        });
        Self {
            rx: Some(rx),
            thread: Some(thread),
        }
    }

    /// The next copy and what `ready` made of it, in the order of the keys.
    ///
    /// # Errors
    /// The object could not be fetched, or `ready` refused it.
    pub fn next_ready(&mut self) -> Option<Result<(LocalCopy, T)>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        drop(self.rx.take()); // unblocks a send
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `key` of `store` as a local file: the object's own file when the store is a folder, else a download into the system temp folder, streamed (memory stays one buffer).
///
/// # Errors
/// The object cannot be read; `Io` for the temporary file.
pub fn local_copy(store: &dyn Store, key: &str) -> Result<LocalCopy> {
    let location = store.location(key);
    if let Some(path) = store.local_path(key) {
        return Ok(LocalCopy {
            path,
            location,
            temporary: false,
        });
    }
    let copy = LocalCopy {
        path: scratch_path("fetch", key.rsplit('/').next().unwrap_or("object")),
        location,
        temporary: true,
    };
    let mut from = store.reader(key)?;
    let mut to = std::fs::File::create(&copy.path)
        .map_err(|e| crate::Error::io(&copy.path, "creating a temporary download", e))?;
    std::io::copy(&mut from, &mut to)
        .map_err(|e| crate::Error::io(&copy.location, "downloading", e))?;
    Ok(copy)
}
