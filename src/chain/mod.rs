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

use crate::bundle::manifest::{
    GenerationManifest, MANIFEST_VERSION, MAX_MANIFEST_BYTES, SET_FORMAT, Sealed, SetRecord,
    SourceIdentity,
};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::store::LocalStore;
use layout::{IMAGE_FILE, MANIFEST_FILE, SET_FILE};

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
    store: LocalStore,
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
        let dir = &crate::store::Location::require_local(dir)?;
        let md = std::fs::metadata(dir).ctx(dir, "opening backup set")?;
        if !md.is_dir() {
            return Err(Error::usage("is not a folder; a backup set is a folder").at(dir));
        }
        let store = LocalStore::new(dir, layout::is_own_name);
        let rec_path = store.path(SET_FILE);
        if !rec_path.exists() {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("has no {SET_FILE}: it is not a walbundle backup set (or its set record was lost)"),
            )
            .at(dir)
            .hint("point at DEST/<name>, the folder `walbundle snapshot` reported"));
        }
        let bytes = store.read_bounded(SET_FILE, MAX_MANIFEST_BYTES)?;
        let record = SetRecord::from_sealed_bytes(&rec_path, &bytes)?;
        if record.set_id.len() != 32 || !record.set_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::corrupt(
                &rec_path,
                "field `set_id` is not 32 hex digits",
            ));
        }
        Ok(Self {
            store,
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
        let dest = &crate::store::Location::require_local(dest)?;
        layout::check_set_name(name).map_err(Error::usage)?;
        let dir = set_dir(dest, name);
        let store = LocalStore::new(&dir, layout::is_own_name);
        if store.path(SET_FILE).exists() {
            let set = Self::open(&dir)?;
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
        if dir.exists() {
            let non_empty = std::fs::read_dir(&dir)
                .ctx(&dir, "listing")?
                .any(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.')));
            if non_empty {
                return Err(Error::refused(
                    "exists and is not a walbundle backup set; refusing to write into it",
                )
                .at(&dir)
                .hint("choose another set name with --name, or another --dest"));
            }
        }
        store.ensure_root()?;
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
        match store.put_new(SET_FILE, &record.to_sealed_bytes()) {
            Ok(()) => Ok(Self {
                store,
                record,
                lock: None,
                maintenance: None,
            }),
            // Another process created it first: use theirs if it is for the same source.
            Err(e) if e.kind() == ErrorKind::Refused => Self::open_or_create(dest, name, source),
            Err(e) => Err(e),
        }
    }

    /// Take the set's writer lock (one snapshotter or capturer at a time), or refuse.
    ///
    /// # Errors
    /// `Busy` if another process holds it.
    pub fn lock_writer(&mut self) -> Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        let dir = self.store.root();
        let f = File::open(dir).ctx(dir, "opening set folder for locking")?;
        if !crate::sys::try_flock_exclusive(&f).ctx(dir, "locking set")? {
            return Err(Error::new(
                ErrorKind::Busy,
                "another walbundle process is writing to this set (snapshot or capture)",
            )
            .at(dir)
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
        let path = self.store.path(layout::MAINTENANCE_LOCK);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(&path, "opening the maintenance lock")?;
        if !crate::sys::try_flock_exclusive(&f).ctx(&path, "locking")? {
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
            .at(self.store.root())
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

    /// The set's folder.
    pub fn dir(&self) -> &Path {
        self.store.root()
    }

    /// The store holding the set's files.
    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// The set record.
    pub fn record(&self) -> &SetRecord {
        &self.record
    }

    /// Scan the set: chains, generations (manifests parsed, errors kept), and unrelated files.
    ///
    /// # Errors
    /// `Io` if a folder cannot be listed. Damaged manifests are not errors here: they are
    /// recorded in the inventory for `verify` and `list` to report.
    pub fn inventory(&self) -> Result<Inventory> {
        let mut inv = Inventory::default();
        for ent in self.store.list("")? {
            if layout::is_set_file(&ent.name) {
                continue;
            }
            if !(ent.is_dir && layout::is_chain_id(&ent.name)) {
                inv.unrelated.push(ent.name);
                continue;
            }
            inv.chains.push(self.chain_inventory(&ent.name)?);
        }
        Ok(inv)
    }

    fn chain_inventory(&self, id: &str) -> Result<ChainInventory> {
        let mut chain = ChainInventory {
            id: id.to_string(),
            ..Default::default()
        };
        for ent in self.store.list(id)? {
            let key = format!("{id}/{}", ent.name);
            if let Some(seq) =
                crate::bundle::wbb::parse_file_name(&ent.name).filter(|_| !ent.is_dir)
            {
                let path = self.store.path(&key);
                let header = read_placed_header(&path, &key, id, seq);
                chain.bundles.push(BundleEntry {
                    seq,
                    key,
                    path,
                    size: ent.size,
                    header,
                });
                continue;
            }
            match layout::parse_generation_dir(&ent.name) {
                Some(seq) if ent.is_dir => {
                    chain
                        .generations
                        .push(self.generation_entry(id, seq, &key)?);
                }
                _ => chain.unrelated.push(key),
            }
        }
        chain.generations.sort_by_key(|g| g.seq);
        chain.bundles.sort_by_key(|b| b.seq);
        Ok(chain)
    }

    fn generation_entry(&self, chain: &str, seq: u64, key: &str) -> Result<GenerationEntry> {
        let mkey = format!("{key}/{MANIFEST_FILE}");
        let mpath = self.store.path(&mkey);
        let manifest = match self.store.read_bounded(&mkey, MAX_MANIFEST_BYTES) {
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
        Ok(GenerationEntry {
            seq,
            key: key.to_string(),
            manifest,
            image_path: self.store.path(&format!("{key}/{IMAGE_FILE}")),
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

/// The header of the bundle file at `path` (store key `key`), which must say it is bundle `seq`
/// of chain `id`: a bundle under another bundle's name (copied, swapped, from another chain) is
/// damaged here, not a link that happens to look valid.
fn read_placed_header(
    path: &Path,
    key: &str,
    id: &str,
    seq: u64,
) -> Result<crate::bundle::wbb::BundleHeader> {
    let h = read_bundle_header(path)?;
    if h.seq != seq || h.chain_id != id {
        return Err(Error::corrupt(
            path,
            format!(
                "header says chain {} bundle {}, but the file is {key}: moved or copied",
                h.chain_id, h.seq
            ),
        ));
    }
    Ok(h)
}

fn read_bundle_header(path: &Path) -> Result<crate::bundle::wbb::BundleHeader> {
    use std::io::Read;
    let mut f = File::open(path).ctx(path, "opening bundle")?;
    let mut b = vec![0u8; crate::bundle::wbb::HEADER_LEN];
    let mut n = 0;
    while n < b.len() {
        match f.read(&mut b[n..]).ctx(path, "reading bundle header")? {
            0 => break,
            k => n += k,
        }
    }
    crate::bundle::wbb::BundleHeader::decode(path, &b[..n])
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
    /// Path of its image file.
    pub image_path: PathBuf,
}
