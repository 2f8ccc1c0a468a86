//! A destination folder on a local (or mounted) file system. Publication is temp name in the
//! same folder → write → fsync → rename without replace → fsync the folder, so a sync client
//! that copies the folder at any instant sees either nothing or the whole file under its final
//! name. A *group* (a generation: its image and manifest) is staged under a temporary folder name
//! and renamed into place in one step, so its files appear together or not at all.
//!
//! Only this module calls fsync on destination files.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, IoContext, Result};
use crate::fault::io as fault;
use crate::sys;

use super::{Counters, Kind, Object, Requests, Store, TEMP_PREFIX};

/// Temporaries older than this are stale even if their writer's pid cannot be checked
/// (another host writing to a shared folder).
const STALE_AGE: Duration = Duration::from_secs(24 * 3600);

/// One entry of a listing.
#[derive(Debug, Clone)]
pub struct Entry {
    /// File or folder name (one path component).
    pub name: String,
    /// Whether it is a folder.
    pub is_dir: bool,
    /// Size in bytes (files).
    pub size: u64,
    /// Last modification time.
    pub modified: Option<SystemTime>,
}

/// A destination folder on a local (or mounted) file system.
#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
    owns: fn(&str) -> bool,
    counts: std::sync::Arc<Counters>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn host_tag() -> String {
    let h = xxhash_rust::xxh3::xxh3_64(sys::hostname().as_bytes());
    format!("{:08x}", h >> 32)
}

/// A temporary name (one path component) for something that will become, or stop being,
/// `final_name`.
pub fn temp_key_name(final_name: &str) -> String {
    temp_name(final_name)
}

fn temp_name(final_name: &str) -> String {
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    format!(
        "{TEMP_PREFIX}{}-{}-{:08x}-{final_name}",
        host_tag(),
        std::process::id(),
        u32::from_le_bytes(r)
    )
}

/// fsync a folder so a rename or creation inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fault::inject("fsync", dir)
        .and_then(|()| sync_dir_os(dir))
        .ctx(dir, "syncing folder")?;
    fault::record(format_args!("dirsync\t{}", dir.display()));
    Ok(())
}

/// Flush a folder's entries: `fsync` of the folder on Unix. Windows has no folder flush (a
/// folder cannot be opened as a file, and NTFS journals its metadata): what makes a name durable
/// there is the write-through move [`crate::sys::rename_noreplace`] does.
fn sync_dir_os(dir: &Path) -> std::io::Result<()> {
    if cfg!(windows) {
        return Ok(());
    }
    File::open(dir)?.sync_all()
}

impl LocalStore {
    /// A store rooted at `root` (which need not exist yet). `owns` tells the names the layer
    /// above writes (and so may delete when it cleans up a stale temporary folder); the store
    /// itself knows only its temporary names.
    pub fn new(root: impl Into<PathBuf>, owns: fn(&str) -> bool) -> Self {
        Self {
            root: root.into(),
            owns,
            counts: std::sync::Arc::default(),
        }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The local path of `key` (a `/`-separated relative name made by walbundle, never by input).
    pub fn path(&self, key: &str) -> PathBuf {
        let mut p = self.root.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p.push(part);
        }
        p
    }

    /// Create the root and any missing parents, fsyncing each parent whose entry was added.
    pub fn ensure_root(&self) -> Result<()> {
        ensure_dir_durable(&self.root)
    }

    /// Create folder `key` (and parents) durably if missing.
    pub fn ensure_dir(&self, key: &str) -> Result<()> {
        ensure_dir_durable(&self.path(key))
    }

    /// Publish `data` at `key`; fails with `AlreadyExists` (kind Refused) if it exists.
    pub fn put_new(&self, key: &str, data: &[u8]) -> Result<()> {
        self.publish_written(key, |f, tmp| f.write_all(data).ctx(tmp, "writing"))
    }

    /// Publish at `key` what `write` puts into a new temporary file beside it: fsync, rename
    /// without replacing, fsync the folder; on failure the temporary is removed.
    fn publish_written(
        &self,
        key: &str,
        write: impl FnOnce(&mut File, &Path) -> Result<()>,
    ) -> Result<()> {
        let final_path = self.path(key);
        let dir = final_path.parent().unwrap_or(&self.root).to_path_buf();
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let tmp = dir.join(temp_name(&name.unwrap_or_else(|| "file".into())));
        let res = (|| {
            let mut f = fault::create_new(&tmp).ctx(&tmp, "creating temporary file")?;
            write(&mut f, &tmp)?;
            fault::sync_file(&f, &tmp).ctx(&tmp, "syncing")?;
            drop(f);
            publish_rename(&tmp, &final_path)?;
            sync_dir(&dir)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// A new temporary file in folder `dir_key`, to be published later as `final_name` with
    /// [`LocalStore::publish_temp`] (for artifacts written in a stream, too large to hold).
    ///
    /// # Errors
    /// `Io` naming the folder.
    pub fn temp_file(&self, dir_key: &str, final_name: &str) -> Result<(PathBuf, File)> {
        let path = self.path(dir_key).join(temp_name(final_name));
        let f = fault::open_new(
            &path,
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true),
        )
        .ctx(&path, "creating temporary file")?;
        Ok((path, f))
    }

    /// Publish temporary file `tmp` (already written and fsynced) at `key`: rename without
    /// replacing, fsync the folder. On failure the temporary is removed.
    ///
    /// # Errors
    /// `Refused` if `key` exists; `Io` otherwise.
    pub fn publish_temp(&self, tmp: &Path, key: &str) -> Result<()> {
        self.counts.count(Kind::Put);
        let final_path = self.path(key);
        let dir = final_path.parent().unwrap_or(&self.root).to_path_buf();
        let res = publish_rename(tmp, &final_path).and_then(|()| sync_dir(&dir));
        if res.is_err() {
            let _ = fs::remove_file(tmp);
        }
        res
    }

    /// Stage a group of files to be published together as folder `key`.
    pub fn stage_dir(&self, key: &str) -> Result<StagedDir> {
        let final_path = self.path(key);
        let parent = final_path.parent().unwrap_or(&self.root).to_path_buf();
        ensure_dir_durable(&parent)?;
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let tmp = parent.join(temp_name(&name.unwrap_or_else(|| "group".into())));
        fault::create_dir(&tmp).ctx(&tmp, "creating staging folder")?;
        Ok(StagedDir {
            counts: std::sync::Arc::clone(&self.counts),
            files: std::sync::atomic::AtomicU64::new(0),
            tmp,
            final_path,
            parent,
            subdirs: Vec::new(),
            published: false,
        })
    }

    /// Open `key` for reading.
    pub fn open(&self, key: &str) -> Result<File> {
        let p = self.path(key);
        File::open(&p).ctx(&p, "opening")
    }

    /// Read all of `key`, refusing files larger than `max` bytes (a manifest has no honest
    /// reason to be large, and a hostile one must not make us allocate without bound).
    pub fn read_bounded(&self, key: &str, max: u64) -> Result<Vec<u8>> {
        let p = self.path(key);
        let f = File::open(&p).ctx(&p, "opening")?;
        let len = f.metadata().ctx(&p, "reading metadata")?.len();
        if len > max {
            return Err(Error::corrupt(
                &p,
                format!("file is {len} bytes, more than the {max} such a file can honestly hold"),
            ));
        }
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        f.take(max + 1).read_to_end(&mut buf).ctx(&p, "reading")?;
        Ok(buf)
    }

    /// Each entry of folder `key` but walbundle's temporaries, with its name, through `f`. A
    /// missing folder has none.
    fn each_entry<T>(
        &self,
        key: &str,
        mut f: impl FnMut(&fs::DirEntry, String) -> Result<T>,
    ) -> Result<Vec<T>> {
        let dir = self.path(key);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, "listing", e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.ctx(&dir, "listing")?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if !name.starts_with(TEMP_PREFIX) {
                out.push(f(&ent, name)?);
            }
        }
        Ok(out)
    }

    /// One-level listing of folder `key`, without walbundle's temporaries. A missing folder
    /// lists as empty.
    pub fn list(&self, key: &str) -> Result<Vec<Entry>> {
        let mut out = self.each_entry(key, |ent, name| {
            let md = ent.metadata().ctx(ent.path(), "reading metadata")?;
            Ok(Entry {
                name,
                is_dir: md.is_dir(),
                size: md.len(),
                modified: md.modified().ok(),
            })
        })?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Names in folder `key` and whether each is a folder, sorted, without reading each
    /// entry's metadata (the kind comes from the directory entry where the file system gives
    /// it): what a summary needs. Missing folder: empty.
    pub fn list_names(&self, key: &str) -> Result<Vec<(String, bool)>> {
        let mut out = self.each_entry(key, |ent, name| {
            let kind = ent.file_type().ctx(ent.path(), "reading metadata")?;
            Ok((name, kind.is_dir()))
        })?;
        out.sort();
        Ok(out)
    }

    /// Delete file `key`. Missing is fine (an interrupted earlier deletion).
    pub fn remove_file(&self, key: &str) -> Result<()> {
        let p = self.path(key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&p, "deleting", e)),
        }
    }

    /// Remove folder `key` if it is empty; `Ok(false)` if it holds anything (left alone).
    pub fn remove_dir_if_empty(&self, key: &str) -> Result<bool> {
        let p = self.path(key);
        match fs::remove_dir(&p) {
            Ok(()) => {
                if let Some(parent) = p.parent() {
                    sync_dir(parent)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
            Err(e) => Err(Error::io(&p, "removing folder", e)),
        }
    }

    /// Remove walbundle temporaries in folder `key` left by dead writers: same host and the
    /// writer's pid is gone, or older than a day. Returns how many were removed.
    pub fn clean_stale_temps(&self, key: &str) -> Result<usize> {
        let dir = self.path(key);
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(0);
        };
        let mine = host_tag();
        let mut n = 0;
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some((host, pid)) = super::temp_owner(&name) else {
                continue;
            };
            let dead_here = host == mine && !sys::pid_alive(pid.unwrap_or(0));
            let old = super::entry_age(&ent).is_some_and(|age| age > STALE_AGE);
            if dead_here || old {
                let p = ent.path();
                let removed = if p.is_dir() {
                    self.remove_own_tree(&p)
                } else {
                    fs::remove_file(&p).is_ok()
                };
                if removed {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

impl LocalStore {
    /// Remove the files this store's owner names inside `dir` (recursively) and the folders that
    /// end up empty; anything else is left alone. True if `dir` itself is gone.
    pub(crate) fn remove_own_tree(&self, dir: &Path) -> bool {
        if let Ok(rd) = fs::read_dir(dir) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                let p = ent.path();
                if !(name.starts_with(TEMP_PREFIX) || (self.owns)(&name)) {
                    continue;
                }
                if p.is_dir() {
                    self.remove_own_tree(&p);
                } else {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        fs::remove_dir(dir).is_ok()
    }
}

/// Whether files `a` and `b` hold the same bytes (false if either cannot be read).
fn same_contents(a: &Path, b: &Path) -> bool {
    let (Ok(fa), Ok(fb)) = (File::open(a), File::open(b)) else {
        return false;
    };
    let same_len = match (fa.metadata(), fb.metadata()) {
        (Ok(x), Ok(y)) => x.len() == y.len(),
        _ => false,
    };
    if !same_len {
        return false;
    }
    let (mut ra, mut rb) = (io::BufReader::new(fa), io::BufReader::new(fb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = match ra.read(&mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return true;
        }
        if rb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

impl Store for LocalStore {
    fn location(&self, key: &str) -> PathBuf {
        self.path(key)
    }

    fn put_new(&self, key: &str, data: &[u8]) -> Result<()> {
        self.counts.count(Kind::Put);
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            ensure_dir_durable(dir)?;
        }
        match LocalStore::put_new(self, key, data) {
            Err(e) if e.kind() == crate::ErrorKind::Refused => {
                // The same bytes already there: a retried write, which is success.
                match fs::read(&path) {
                    Ok(held) if held == data => Ok(()),
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    fn put_new_file(&self, key: &str, src: &Path) -> Result<()> {
        self.counts.count(Kind::Put);
        let path = self.path(key);
        ensure_dir_durable(path.parent().unwrap_or(&self.root))?;
        let res = self.publish_written(key, |to, tmp| {
            let mut from = File::open(src).ctx(src, "opening")?;
            io::copy(&mut from, to).ctx(tmp, "writing").map(|_| ())
        });
        match res {
            // The same bytes already there: a retried write, which is success.
            Err(e) if e.kind() == crate::ErrorKind::Refused && same_contents(src, &path) => Ok(()),
            other => other,
        }
    }

    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>> {
        self.counts.count(Kind::Get);
        self.read_bounded(key, max)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        use std::io::{Seek, SeekFrom};
        self.counts.count(Kind::Get);
        let p = self.path(key);
        let mut f = File::open(&p).ctx(&p, "opening")?;
        f.seek(SeekFrom::Start(offset)).ctx(&p, "seeking")?;
        let mut buf = Vec::new();
        f.take(len).read_to_end(&mut buf).ctx(&p, "reading")?;
        Ok(buf)
    }

    fn reader(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        self.counts.count(Kind::Get);
        Ok(Box::new(self.open(key)?))
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<Object>> {
        self.counts.count(Kind::List);
        // Walk only the folder the prefix names (its part up to the last `/`).
        let base = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let mut out = Vec::new();
        let mut stack = vec![base.to_string()];
        while let Some(dir) = stack.pop() {
            for ent in LocalStore::list(self, &dir)? {
                let key = if dir.is_empty() {
                    ent.name.clone()
                } else {
                    format!("{dir}/{}", ent.name)
                };
                if ent.is_dir {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        stack.push(key);
                    }
                } else if key.starts_with(prefix) && start_after.is_none_or(|s| key.as_str() > s) {
                    out.push(Object {
                        key,
                        size: ent.size,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.counts.count(Kind::Delete);
        self.remove_file(key)
    }

    fn requests(&self) -> Requests {
        self.counts.snapshot()
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.path(key))
    }
}

/// Create `dir` and missing parents, fsyncing the parent of every folder created.
pub fn ensure_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(Error::io(dir, "creating folder", e)),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

fn publish_rename(tmp: &Path, final_path: &Path) -> Result<()> {
    sys::rename_noreplace(tmp, final_path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            Error::refused("already exists; published artifacts are never replaced").at(final_path)
        } else {
            Error::io(final_path, "publishing (rename)", e)
        }
    })
}

/// A folder being written under a temporary name; [`StagedDir::publish`] renames it into place.
/// Dropped unpublished, it removes itself.
#[derive(Debug)]
pub struct StagedDir {
    /// The store's counters: each staged file counts as one PUT when published.
    counts: std::sync::Arc<Counters>,
    files: std::sync::atomic::AtomicU64,
    tmp: PathBuf,
    final_path: PathBuf,
    parent: PathBuf,
    subdirs: Vec<PathBuf>,
    published: bool,
}

impl StagedDir {
    /// Create subfolder `name` inside the staged folder (fsynced at publication).
    pub fn mkdir(&mut self, name: &str) -> Result<()> {
        let p = self.tmp.join(name);
        fault::create_dir(&p).ctx(&p, "creating staging folder")?;
        self.subdirs.push(p);
        Ok(())
    }

    /// Create file `name` inside the staged folder.
    pub fn create_file(&self, name: &str) -> Result<StagedFile> {
        self.files
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.tmp.join(name);
        let f = fault::create_new(&path).ctx(&path, "creating")?;
        Ok(StagedFile {
            w: BufWriter::with_capacity(1 << 20, f),
            path,
            written: 0,
        })
    }

    /// Write a whole small file inside the staged folder and fsync it.
    pub fn write_file(&self, name: &str, data: &[u8]) -> Result<()> {
        let mut f = self.create_file(name)?;
        f.write_all(data).ctx(&f.path, "writing")?;
        f.finish()?;
        Ok(())
    }

    /// Path of a staged file (for reading it back before publishing).
    pub fn file_path(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }

    /// Where the folder will appear.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Publish what is staged into an object store under `key` instead of renaming it: every
    /// file, manifests (`manifest_name`) last, each put-if-absent — a reader ignores an image no
    /// manifest names, so the group becomes visible when its manifests are. The staging folder
    /// is removed afterwards either way.
    ///
    /// # Errors
    /// As [`Store::put_new_file`].
    pub fn publish_to(self, store: &dyn Store, key: &str, manifest_name: &str) -> Result<()> {
        let mut files = Vec::new();
        let mut stack = vec![(self.tmp.clone(), key.to_string())];
        while let Some((dir, k)) = stack.pop() {
            for ent in fs::read_dir(&dir).ctx(&dir, "listing")? {
                let ent = ent.ctx(&dir, "listing")?;
                let name = ent.file_name().to_string_lossy().into_owned();
                let sub = format!("{k}/{name}");
                if ent
                    .file_type()
                    .ctx(ent.path(), "reading metadata")?
                    .is_dir()
                {
                    stack.push((ent.path(), sub));
                } else {
                    files.push((name == manifest_name, sub, ent.path()));
                }
            }
        }
        files.sort();
        for (_, k, path) in &files {
            store.put_new_file(k, path)?;
        }
        Ok(())
    }

    /// fsync the staged folder, rename it into place (never over an existing one), fsync the
    /// parent.
    pub fn publish(mut self) -> Result<()> {
        for d in &self.subdirs {
            sync_dir(d)?;
        }
        sync_dir(&self.tmp)?;
        publish_rename(&self.tmp, &self.final_path)?;
        self.published = true;
        for _ in 0..self.files.load(std::sync::atomic::Ordering::Relaxed) {
            self.counts.count(Kind::Put);
        }
        sync_dir(&self.parent)
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// A file being written inside a [`StagedDir`].
#[derive(Debug)]
pub struct StagedFile {
    w: BufWriter<File>,
    path: PathBuf,
    written: u64,
}

impl StagedFile {
    /// Flush and fsync; returns the bytes written.
    pub fn finish(mut self) -> Result<u64> {
        self.w.flush().ctx(&self.path, "writing")?;
        fault::sync_file(self.w.get_ref(), &self.path).ctx(&self.path, "syncing")?;
        Ok(self.written)
    }

    /// The staged file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Write for StagedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}
