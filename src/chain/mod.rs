//! Backup sets: where artifacts live, what they are named, and what a set holds.
//!
//! A set is one folder per database under a destination (`DEST/<name>`), holding a set record,
//! and one folder per *chain* — a stretch of history that walbundle can prove continuous. A chain
//! starts with a full snapshot (generation 0) and may later hold bundles and compacted
//! generations. See `format/README.md` for the layout a stranger could implement from.

pub mod layout;
pub mod summary;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::manifest::{
    GenerationManifest, MANIFEST_VERSION, MAX_MANIFEST_BYTES, SET_FORMAT, Sealed, SetRecord,
    SourceIdentity,
};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::store::{LocalStore, Location, Store};
use layout::{IMAGE_FILE, MANIFEST_FILE, SET_FILE};

/// [`BackupSet::state_dir`] of the set at `dir` (a folder, or an object-store URL).
pub fn state_dir_of(dir: &Path) -> PathBuf {
    if is_local(dir) {
        return dir.to_path_buf();
    }
    let base = crate::sys::state_home();
    let url = dir.to_string_lossy().replace("://", "/");
    base.join("walbundle").join("sets").join(url)
}

/// Whether `dir` names a local (or mounted) folder rather than an object-store URL.
pub fn is_local(dir: &Path) -> bool {
    matches!(Location::parse(dir), Ok(Location::Local(_)) | Err(_))
}

fn not_a_set(dir: &Path) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("has no {SET_FILE}: it is not a walbundle backup set (or its set record was lost)"),
    )
    .at(dir)
    .hint("point at DEST/<name>, the set `walbundle snapshot` reported")
}

/// The stores of the set at `loc` and how to name it: the folder (also as a [`LocalStore`]), or
/// the object store (configured from the standard AWS environment) and its URL.
fn stores(loc: &Location) -> Result<(Arc<dyn Store>, Option<LocalStore>, PathBuf)> {
    if let Location::Local(dir) = loc {
        let store = LocalStore::new(dir, layout::is_own_name);
        return Ok((Arc::new(store.clone()), Some(store), dir.clone()));
    }
    crate::store::clean_dead_scratch();
    Ok((object_store(loc)?, None, PathBuf::from(loc.display())))
}

/// The object store behind `loc` (configured by the settings registered for its URL, then the
/// standard AWS environment: [`crate::store::settings`]).
fn object_store(loc: &Location) -> Result<Arc<dyn Store>> {
    match loc {
        Location::Local(p) => Ok(Arc::new(LocalStore::new(p, layout::is_own_name))),
        #[cfg(feature = "s3")]
        Location::S3 { bucket, prefix } => {
            let url = loc.display();
            let cfg = crate::store::s3::S3Config::resolve(&crate::store::settings::for_url(&url))
                .map_err(|e| e.at(&url))?;
            Ok(Arc::new(crate::store::s3::S3Store::new(
                bucket, prefix, cfg,
            )?))
        }
        #[cfg(not(feature = "s3"))]
        other => Err(Error::usage(format!(
            "{}: this build of walbundle has no object-store support (cargo feature `s3`)",
            other.display()
        ))),
    }
}

/// The folder of set `name` under destination `dest`.
pub fn set_dir(dest: &Path, name: &str) -> PathBuf {
    dest.join(name)
}

/// The version string recorded in artifacts.
pub fn tool_version() -> String {
    format!("walbundle {}", env!("CARGO_PKG_VERSION"))
}

/// An opened backup set.
#[derive(Debug)]
pub struct BackupSet {
    /// Every read and write of the set's artifacts goes through this.
    objects: Arc<dyn Store>,
    /// The same set as a folder, for a local set (staging, locks, the heartbeat).
    local: Option<LocalStore>,
    /// The folder, or the object-store URL (`s3://bucket/prefix`) as a path, for messages.
    dir: PathBuf,
    record: SetRecord,
    lock: Option<File>,
    maintenance: Option<File>,
}

impl BackupSet {
    /// Open an existing set at `dir`.
    ///
    /// # Errors
    /// `Io` if the folder is missing or unreadable; `Corrupt` if its set record is damaged.
    pub fn open(dir: &Path) -> Result<Self> {
        let (objects, local, dir) = stores(&Location::parse(dir)?)?;
        if local.is_some() {
            let md = std::fs::metadata(&dir).ctx(&dir, "opening backup set")?;
            if !md.is_dir() {
                return Err(Error::usage("is not a folder; a backup set is a folder").at(&dir));
            }
        }
        Self::read_record(objects, local, dir)
    }

    /// Whether a set exists at `dir` (its set record does), in a folder or an object store.
    ///
    /// # Errors
    /// The location is not valid, or the store cannot be asked.
    pub fn exists(dir: &Path) -> Result<bool> {
        let (objects, local, _) = stores(&Location::parse(dir)?)?;
        if let Some(l) = local {
            return Ok(l.root().join(SET_FILE).is_file());
        }
        match objects.get(SET_FILE, MAX_MANIFEST_BYTES) {
            Ok(_) => Ok(true),
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The set whose stores are given, from its set record.
    fn read_record(
        objects: Arc<dyn Store>,
        local: Option<LocalStore>,
        dir: PathBuf,
    ) -> Result<Self> {
        let bytes = match objects.get(SET_FILE, MAX_MANIFEST_BYTES) {
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {
                return Err(not_a_set(&dir));
            }
            other => other?,
        };
        let record = SetRecord::from_sealed_bytes(&objects.location(SET_FILE), &bytes)?;
        Self::with_record(objects, local, dir, record)
    }

    fn with_record(
        objects: Arc<dyn Store>,
        local: Option<LocalStore>,
        dir: PathBuf,
        record: SetRecord,
    ) -> Result<Self> {
        if record.set_id.len() != 32 || !record.set_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::corrupt(
                objects.location(SET_FILE),
                "field `set_id` is not 32 hex digits",
            ));
        }
        Ok(Self {
            objects,
            local,
            dir,
            record,
            lock: None,
            maintenance: None,
        })
    }

    /// Open the set `name` under `dest` for `source`, creating it if it does not exist.
    ///
    /// # Errors
    /// `Refused` if the set exists for a different database, or the folder exists and is not a
    /// set; `Io` if the destination cannot be created.
    pub fn open_or_create(dest: &Path, name: &str, source: &SourceIdentity) -> Result<Self> {
        layout::check_set_name(name).map_err(|m| {
            Error::usage(m).hint("name the set yourself: --name NAME, or `name` in the config")
        })?;
        let (objects, local, dir) = stores(&Location::parse(dest)?.join(name))?;
        let exists = match &local {
            Some(store) => store.path(SET_FILE).exists(),
            None => !objects.list(SET_FILE, None)?.is_empty(),
        };
        if exists {
            let set = Self::read_record(Arc::clone(&objects), local, dir.clone())?;
            if &set.record.source != source {
                return Err(Error::refused(format!(
                    "this set backs up {} on host {}, not {} on host {}",
                    set.record.source.path, set.record.source.host, source.path, source.host
                ))
                .at(&dir)
                .hint(format!(
                    "give this database its own set with --name (e.g. --name {name}-2), \
                     or choose another --dest"
                )));
            }
            return Ok(set);
        }
        let non_empty = match &local {
            Some(_) if dir.exists() => std::fs::read_dir(&dir)
                .ctx(&dir, "listing")?
                .any(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.'))),
            Some(_) => false,
            None => !objects.list("", None)?.is_empty(),
        };
        if non_empty {
            return Err(Error::refused(
                "exists and is not a walbundle backup set; refusing to write into it",
            )
            .at(&dir)
            .hint("choose another set name with --name, or another --dest"));
        }
        if let Some(store) = &local {
            store.ensure_root()?;
        }
        let record = SetRecord {
            format: SET_FORMAT.into(),
            version: MANIFEST_VERSION,
            set_id: layout::new_set_id(),
            name: name.into(),
            source: source.clone(),
            created: jiff::Timestamp::now().to_string(),
            tool: tool_version(),
            self_sha256: String::new(),
        };
        match objects.put_new(SET_FILE, &record.to_sealed_bytes()) {
            Ok(()) => Self::with_record(objects, local, dir, record),
            // Another process created it first: use theirs if it is for the same source.
            Err(e) if e.kind() == ErrorKind::Refused => Self::open_or_create(dest, name, source),
            Err(e) => Err(e),
        }
    }

    /// Where this host keeps the set's locks and capture's heartbeat: the set's folder, or for
    /// a set in an object store a folder of this machine's (`$XDG_STATE_HOME/walbundle/sets/…`,
    /// else `~/.local/state/walbundle/sets/…`), so nothing is rewritten in the bucket while idle.
    pub fn state_dir(&self) -> PathBuf {
        state_dir_of(&self.dir)
    }

    /// Take the set's writer lock (one snapshotter or capturer at a time), or refuse. For a set
    /// in an object store the lock is this host's; two hosts writing one set are caught by
    /// put-if-absent (the second finds its names taken).
    ///
    /// # Errors
    /// `Busy` if another process holds it.
    pub fn lock_writer(&mut self) -> Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        let dir = &self.state_dir();
        crate::store::ensure_dir_durable(dir)?;
        // Unix: a lock on the folder itself. Windows cannot open a folder as a file: a lock
        // file in it instead.
        let f = if cfg!(windows) {
            let path = dir.join(layout::WRITER_LOCK);
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .ctx(&path, "opening the writer lock")?
        } else {
            File::open(dir).ctx(dir, "opening set folder for locking")?
        };
        if !crate::sys::try_lock_exclusive(&f).ctx(dir, "locking set")? {
            return Err(Error::new(
                ErrorKind::Busy,
                "another walbundle process is writing to this set (snapshot or capture)",
            )
            .at(&self.dir)
            .hint("wait for it to finish; a running `capture` already keeps the set current"));
        }
        self.lock = Some(f);
        Ok(())
    }

    /// Take the set's maintenance lock (one compactor or retention run at a time), or refuse
    /// naming the holder. It is an flock on [`layout::MAINTENANCE_LOCK`], so a holder that dies
    /// (even by `kill -9`) releases it at once: no stale lease to break. Capture does not take
    /// it: capture only appends, maintenance only replaces and retires older files.
    ///
    /// # Errors
    /// `Busy` if another process holds it.
    pub fn lock_maintenance(&mut self) -> Result<()> {
        use std::io::{Read, Seek, Write};
        if self.maintenance.is_some() {
            return Ok(());
        }
        let state = self.state_dir();
        crate::store::ensure_dir_durable(&state)?;
        let path = state.join(layout::MAINTENANCE_LOCK);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(&path, "opening the maintenance lock")?;
        if !crate::sys::try_lock_exclusive(&f).ctx(&path, "locking")? {
            let mut holder = String::new();
            let _ = Read::by_ref(&mut f).take(512).read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "another walbundle process is compacting or retiring files in this set ({})",
                    if holder.is_empty() {
                        "holder unknown"
                    } else {
                        holder
                    }
                ),
            )
            .at(&self.dir)
            .hint("wait for it to finish; the lock is released as soon as that process exits"));
        }
        let note = format!(
            "pid {} on {} since {}\n",
            std::process::id(),
            crate::sys::hostname(),
            jiff::Timestamp::now()
        );
        let _ = f.set_len(0);
        let _ = f.rewind();
        let _ = f.write_all(note.as_bytes());
        self.maintenance = Some(f);
        Ok(())
    }

    /// The set's folder, or its object-store URL (`s3://bucket/prefix/name`) as a path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every artifact of the set is read and written through this.
    pub fn objects(&self) -> &Arc<dyn Store> {
        &self.objects
    }

    /// Whether the set lives in an object store.
    pub fn is_remote(&self) -> bool {
        self.local.is_none()
    }

    /// The set as a local folder, for what needs one (staging in place, stale temporaries).
    ///
    /// # Errors
    /// `Usage` for a set in an object store, naming `what` cannot run there yet.
    pub fn store(&self) -> Result<&LocalStore> {
        self.local.as_ref().ok_or_else(|| {
            Error::usage(
                "this needs a set in a local or mounted folder; it does not run on object-store \
                 sets yet",
            )
            .at(&self.dir)
        })
    }

    /// A new temporary file for what will be published as `dir_key/final_name` with
    /// [`Self::publish_file`]: in the set's folder (the same file system, for a rename), or for
    /// a set in an object store in its spool folder ([`Self::spool`]), where
    /// [`Self::spool_file`] gives it its final name.
    ///
    /// # Errors
    /// `Io` naming the folder.
    pub fn temp_file(&self, dir_key: &str, final_name: &str) -> Result<(PathBuf, File)> {
        if let Some(l) = &self.local {
            return l.temp_file(dir_key, final_name);
        }
        let spool = self.spool_store();
        spool.ensure_dir(dir_key)?;
        spool.temp_file(dir_key, final_name)
    }

    /// For a set in an object store: the folder on this machine where sealed bundles wait
    /// until the store has them (`<state dir>/spool/<chain>/<bundle>`, see
    /// [`layout::SPOOL_DIR`]). A bundle there survives the capture process (a `kill -9`, a
    /// crash, a reboot): the next capture publishes it before anything else
    /// (`capture::Capturer::start`). `None` for a local set.
    pub fn spool(&self) -> Option<LocalStore> {
        self.is_remote().then(|| self.spool_store())
    }

    /// The bundles sealed on this host that wait in the set's spool for the store, oldest
    /// chain and sequence first (none for a local set, or when the spool cannot be read).
    pub fn spooled(&self) -> Vec<PathBuf> {
        let Some(spool) = self.spool() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (chain, is_dir) in spool.list_names("").unwrap_or_default() {
            if !is_dir || !layout::is_chain_id(&chain) {
                continue;
            }
            for (name, _) in spool.list_names(&chain).unwrap_or_default() {
                if crate::bundle::wbb::parse_file_name(&name).is_some() {
                    out.push(spool.path(&format!("{chain}/{name}")));
                }
            }
        }
        out
    }

    fn spool_store(&self) -> LocalStore {
        LocalStore::new(
            self.state_dir().join(layout::SPOOL_DIR),
            layout::is_own_name,
        )
    }

    /// Make the temporary `tmp` of [`Self::temp_file`] (written and fsynced) durable under the
    /// name it will be published as, `key`, and return where it now is: for a set in an object
    /// store, a rename into the spool and an fsync of its folder, so a bundle sealed while the
    /// store cannot be reached outlives this process; a local set's temporary stays where it is
    /// (its publication is itself a rename).
    ///
    /// # Errors
    /// `Io` naming the spool; `Refused` if the spool already holds `key`.
    pub fn spool_file(&self, tmp: &Path, key: &str) -> Result<PathBuf> {
        let Some(spool) = self.spool() else {
            return Ok(tmp.to_path_buf());
        };
        spool.publish_temp(tmp, key)?;
        Ok(spool.path(key))
    }

    /// Publish the file `tmp` of [`Self::temp_file`] (or [`Self::spool_file`]), written and
    /// fsynced, as `key`: a rename without replace, or one put-if-absent upload. The file is
    /// gone afterwards, except after an `Io` failure of an object store (unreachable: it waits
    /// in the spool for the next try, by this process or the next capture).
    ///
    /// # Errors
    /// `Refused` if `key` holds other bytes; `Io` otherwise.
    pub fn publish_file(&self, tmp: &Path, key: &str) -> Result<()> {
        if let Some(l) = &self.local {
            return l.publish_temp(tmp, key);
        }
        let res = self.objects.put_new_file(key, tmp);
        // An unreachable store (`Io`) leaves the file for the next try.
        if !matches!(&res, Err(e) if e.kind() == ErrorKind::Io) {
            let _ = std::fs::remove_file(tmp);
            if let (Some(spool), Some((dir, _))) = (self.spool(), key.rsplit_once('/')) {
                let _ = spool.remove_dir_if_empty(dir);
            }
        }
        res
    }

    /// Remove temporaries that dead writers left in the set's folder and in `chains`; none
    /// exist in an object store (an upload is one request). Returns how many were removed.
    ///
    /// # Errors
    /// `Io` if a folder cannot be listed.
    pub fn clean_stale_temps<'a>(
        &self,
        chains: impl IntoIterator<Item = &'a str>,
    ) -> Result<usize> {
        let Some(l) = &self.local else {
            return Ok(0);
        };
        let mut n = l.clean_stale_temps("")?;
        for c in chains {
            n += l.clean_stale_temps(c)?;
        }
        Ok(n)
    }

    /// Stage the folder `key` of the set (a new chain, a generation): in place in a local set,
    /// in the system temp folder for a set in an object store. [`Self::publish`] makes it
    /// appear.
    ///
    /// # Errors
    /// `Io` for the staging folder.
    pub fn stage(&self, key: &str) -> Result<crate::store::StagedDir> {
        if let Some(l) = &self.local {
            return l.stage_dir(key);
        }
        let scratch = crate::store::scratch_path("stage", key);
        LocalStore::new(&scratch, layout::is_own_name).stage_dir(key)
    }

    /// Publish a group staged by [`Self::stage`] as `key`: one rename into place in a folder;
    /// in an object store, its files one by one with its manifests written last.
    ///
    /// # Errors
    /// `Refused` if `key` exists (a lost race); `Io` otherwise. Nothing of the group is
    /// visible then.
    pub fn publish(&self, staged: crate::store::StagedDir, key: &str) -> Result<()> {
        if self.local.is_some() {
            return staged.publish();
        }
        let root = staged.final_path().parent().map(Path::to_path_buf);
        let res = staged.publish_to(self.objects.as_ref(), key, MANIFEST_FILE);
        if let Some(root) = root {
            let _ = std::fs::remove_dir_all(root);
        }
        res
    }

    /// The set record.
    pub fn record(&self) -> &SetRecord {
        &self.record
    }

    /// Scan the set: chains, generations (manifests parsed, errors kept), and unrelated files.
    /// One listing of the whole set (one LIST per 1,000 objects on an object store).
    ///
    /// # Errors
    /// `Io` if the set cannot be listed. Damaged manifests are not errors here: they are
    /// recorded in the inventory for `verify` and `list` to report.
    pub fn inventory(&self) -> Result<Inventory> {
        let mut inv = Inventory::default();
        let mut chains: std::collections::BTreeMap<String, Vec<(String, u64)>> =
            std::collections::BTreeMap::new();
        for o in self.objects.list("", None)? {
            match o.key.split_once('/') {
                None if layout::is_set_file(&o.key) => {}
                Some((first, rest)) if layout::is_chain_id(first) => chains
                    .entry(first.to_string())
                    .or_default()
                    .push((rest.to_string(), o.size)),
                None => inv.unrelated.push(o.key),
                Some((first, _)) => {
                    if inv.unrelated.last().map(String::as_str) != Some(first) {
                        inv.unrelated.push(first.to_string());
                    }
                }
            }
        }
        for (id, entries) in chains {
            inv.chains.push(self.chain_inventory(&id, entries)?);
        }
        Ok(inv)
    }

    fn chain_inventory(&self, id: &str, entries: Vec<(String, u64)>) -> Result<ChainInventory> {
        let mut chain = ChainInventory {
            id: id.to_string(),
            ..Default::default()
        };
        // Generation folders seen, and whether each has its manifest.
        let mut gens: std::collections::BTreeMap<u64, bool> = std::collections::BTreeMap::new();
        let mut bundles: Vec<(u64, String, u64)> = Vec::new();
        for (rest, size) in entries {
            let key = format!("{id}/{rest}");
            if let Some(seq) = crate::bundle::wbb::parse_file_name(&rest) {
                bundles.push((seq, key, size));
                continue;
            }
            let (first, file) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
            match layout::parse_generation_dir(first) {
                Some(seq) if !file.is_empty() => {
                    *gens.entry(seq).or_default() |= file == MANIFEST_FILE;
                }
                _ => {
                    let foreign = format!("{id}/{first}");
                    if chain.unrelated.last() != Some(&foreign) {
                        chain.unrelated.push(foreign);
                    }
                }
            }
        }
        // Headers: a read of a local file each, or a ranged GET each (several in flight).
        let workers = if self.is_remote() {
            crate::store::PARALLEL_REQUESTS
        } else {
            1
        };
        let headers = crate::store::parallel_map(&bundles, workers, |(seq, key, _)| {
            read_placed_header(self.objects.as_ref(), key, id, *seq)
        });
        for ((seq, key, size), header) in bundles.into_iter().zip(headers) {
            chain.bundles.push(BundleEntry {
                seq,
                path: self.objects.location(&key),
                key,
                size,
                header,
            });
        }
        for (seq, has_manifest) in gens {
            // In an object store a generation is published by its manifest, written last: an
            // image no manifest names is an upload that never finished, not a generation.
            if !has_manifest && self.is_remote() {
                continue;
            }
            let key = format!("{id}/{}", layout::generation_dir(seq));
            chain
                .generations
                .push(self.generation_entry(id, seq, &key)?);
        }
        chain.bundles.sort_by_key(|b| b.seq);
        Ok(chain)
    }

    fn generation_entry(&self, chain: &str, seq: u64, key: &str) -> Result<GenerationEntry> {
        let mkey = format!("{key}/{MANIFEST_FILE}");
        let mpath = self.objects.location(&mkey);
        let manifest = match self.objects.get(&mkey, MAX_MANIFEST_BYTES) {
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {
                Err(Error::corrupt(&mpath, "manifest is missing"))
            }
            Err(e) => Err(e),
            Ok(bytes) => GenerationManifest::from_sealed_bytes(&mpath, &bytes).and_then(|m| {
                m.validate(&mpath)?;
                if m.set_id != self.record.set_id {
                    return Err(Error::corrupt(
                        &mpath,
                        format!(
                            "field `set_id` is {}, but this set is {}: a generation from another set",
                            m.set_id, self.record.set_id
                        ),
                    ));
                }
                if m.chain_id != chain || m.seq != seq {
                    return Err(Error::corrupt(
                        &mpath,
                        format!(
                            "manifest says chain {} generation {}, but it lies in {key}: moved or copied",
                            m.chain_id, m.seq
                        ),
                    ));
                }
                Ok(m)
            }),
        };
        let image_key = format!("{key}/{IMAGE_FILE}");
        Ok(GenerationEntry {
            seq,
            key: key.to_string(),
            manifest,
            image_path: self.objects.location(&image_key),
            image_key,
        })
    }
}

/// What a set holds.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Chains, oldest first.
    pub chains: Vec<ChainInventory>,
    /// Names at the set's root that are not walbundle's (left alone).
    pub unrelated: Vec<String>,
}

impl Inventory {
    /// Generations with a valid manifest, across chains.
    pub fn valid_generations(
        &self,
    ) -> impl Iterator<Item = (&ChainInventory, &GenerationEntry, &GenerationManifest)> {
        self.chains.iter().flat_map(|c| {
            c.generations
                .iter()
                .filter_map(move |g| g.manifest.as_ref().ok().map(|m| (c, g, m)))
        })
    }

    /// Highest transaction number any valid artifact claims (0 for an empty set).
    pub fn max_txn(&self) -> u64 {
        let gens = self
            .valid_generations()
            .map(|(_, _, m)| m.txn)
            .max()
            .unwrap_or(0);
        let bundles = self
            .chains
            .iter()
            .flat_map(|c| c.bundles.iter())
            .filter_map(|b| {
                b.header
                    .as_ref()
                    .ok()
                    .map(crate::bundle::wbb::BundleHeader::last_txn)
            })
            .max()
            .unwrap_or(0);
        gens.max(bundles)
    }
}

/// One chain of a set.
#[derive(Debug, Default)]
pub struct ChainInventory {
    /// The chain id (its folder name).
    pub id: String,
    /// Generations by sequence.
    pub generations: Vec<GenerationEntry>,
    /// Bundles by sequence (headers read and checked; bodies not).
    pub bundles: Vec<BundleEntry>,
    /// Entries in the chain folder that are not walbundle's.
    pub unrelated: Vec<String>,
}

impl ChainInventory {
    /// The chain's base: its oldest readable generation (the first snapshot, or once older
    /// history is retired, the oldest compacted generation). Bundles at or before its sequence
    /// are superseded leftovers.
    pub fn base(&self) -> Option<&GenerationManifest> {
        self.generation_from(0)
    }

    /// The oldest readable generation at bundle sequence `seq` or later (generations are sorted
    /// by sequence).
    pub fn generation_from(&self, seq: u64) -> Option<&GenerationManifest> {
        self.generations
            .iter()
            .filter(|g| g.seq >= seq)
            .find_map(|g| g.manifest.as_ref().ok())
    }
}

/// One bundle file.
#[derive(Debug)]
pub struct BundleEntry {
    /// Sequence number from its name.
    pub seq: u64,
    /// Key in the store.
    pub key: String,
    /// Local path.
    pub path: PathBuf,
    /// File size.
    pub size: u64,
    /// Its header (CRC-checked), or why it could not be read.
    pub header: Result<crate::bundle::wbb::BundleHeader>,
}

/// The header of the bundle at store key `key`, which must say it is bundle `seq` of chain
/// `id`: a bundle under another bundle's name (copied, swapped, from another chain) is damaged
/// here, not a link that happens to look valid.
fn read_placed_header(
    store: &dyn Store,
    key: &str,
    id: &str,
    seq: u64,
) -> Result<crate::bundle::wbb::BundleHeader> {
    let path = store.location(key);
    let b = store.get_range(key, 0, crate::bundle::wbb::HEADER_LEN as u64)?;
    let h = crate::bundle::wbb::BundleHeader::decode(&path, &b)?;
    if h.seq != seq || h.chain_id != id {
        return Err(Error::corrupt(
            &path,
            format!(
                "header says chain {} bundle {}, but the file is {key}: moved or copied",
                h.chain_id, h.seq
            ),
        ));
    }
    Ok(h)
}

/// One generation folder.
#[derive(Debug)]
pub struct GenerationEntry {
    /// Bundle sequence it sits at.
    pub seq: u64,
    /// Its folder's key in the store.
    pub key: String,
    /// The parsed manifest, or why it could not be used.
    pub manifest: Result<GenerationManifest>,
    /// Path of its image file (its location, for an object store).
    pub image_path: PathBuf,
    /// Its image's key in the store.
    pub image_key: String,
}
