//! JSON manifests: the set record and the generation manifest (`format/` "Manifests").
//!
//! Manifests are canonical JSON (serde_json's pretty form, fields in declaration order, one
//! trailing newline) sealed by `self_sha256`: the SHA-256 of the canonical form with that field
//! set to the empty string. A decoder re-encodes what it parsed and requires the same bytes and
//! the same seal, so any edit — a changed number, reordered fields, even whitespace — is caught
//! and named, and golden fixtures pin the encoding byte for byte.

use std::path::Path;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A generation's manifest, inside its folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// A generation's compressed image, inside its folder.
pub const IMAGE_FILE: &str = "image.zst";

/// Largest manifest file walbundle will read (an honest one is a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Format name of the set record.
pub const SET_FORMAT: &str = "walbundle-set";
/// Format name of a generation manifest.
pub const GENERATION_FORMAT: &str = "walbundle-generation";
/// The manifest version this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A manifest sealed by its own hash.
pub trait Sealed: Serialize + DeserializeOwned + Clone {
    /// The `self_sha256` field.
    fn seal_mut(&mut self) -> &mut String;
    /// The format name this manifest must carry.
    const FORMAT: &'static str;
    /// The `format` and `version` fields.
    fn format_version(&self) -> (&str, u32);

    /// Canonical bytes with the seal computed.
    fn to_sealed_bytes(&self) -> Vec<u8> {
        let mut m = self.clone();
        *m.seal_mut() = String::new();
        let unsealed = canonical(&m);
        *m.seal_mut() = hex(&Sha256::digest(&unsealed));
        canonical(&m)
    }

    /// Parse `bytes` read from `path`, requiring format, version, canonical form and seal.
    fn from_sealed_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let m: Self = serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(path, format!("not a valid {} manifest: {e}", Self::FORMAT))
        })?;
        let (format, version) = m.format_version();
        if format != Self::FORMAT {
            return Err(Error::corrupt(
                path,
                format!("field `format` is {format:?}, expected {:?}", Self::FORMAT),
            ));
        }
        if version != MANIFEST_VERSION {
            return Err(Error::corrupt(
                path,
                format!(
                    "field `version` is {version}; this walbundle reads version {MANIFEST_VERSION}"
                ),
            )
            .hint("use the walbundle release that wrote this set, or a newer one"));
        }
        let mut probe = m.clone();
        let claimed = std::mem::take(probe.seal_mut());
        let resealed = probe.to_sealed_bytes();
        let again: Self = serde_json::from_slice(&resealed)
            .map_err(|e| Error::corrupt(path, format!("re-encoding failed: {e}")))?;
        let mut again = again;
        let actual = std::mem::take(again.seal_mut());
        if claimed != actual || resealed != bytes {
            return Err(Error::corrupt(
                path,
                "field `self_sha256` does not match the manifest's content: \
                 the manifest was edited or damaged",
            )
            .hint("restore from another generation, or take a new snapshot"));
        }
        Ok(m)
    }
}

fn canonical<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain structs of strings and integers cannot fail.
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

pub use crate::sqlite::source::SourceIdentity;

/// `walbundle-set.json`: written once when a set is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRecord {
    /// Always [`SET_FORMAT`].
    pub format: String,
    /// Manifest version.
    pub version: u32,
    /// Random 128-bit id, 32 hex digits; every artifact of the set carries it.
    pub set_id: String,
    /// The set's folder name.
    pub name: String,
    /// The database this set backs up.
    pub source: SourceIdentity,
    /// RFC 3339 creation time.
    pub created: String,
    /// Tool that created it.
    pub tool: String,
    /// Seal (see module docs).
    pub self_sha256: String,
}

impl Sealed for SetRecord {
    const FORMAT: &'static str = SET_FORMAT;
    fn seal_mut(&mut self) -> &mut String {
        &mut self.self_sha256
    }
    fn format_version(&self) -> (&str, u32) {
        (&self.format, self.version)
    }
}

/// A position in the source's WAL: the state after frame `frame` of the WAL cycle `salts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalPosition {
    /// Salt-1 of the WAL cycle.
    pub salt1: u32,
    /// Salt-2 of the WAL cycle.
    pub salt2: u32,
    /// Last frame included (0: none of this cycle's frames).
    pub frame: u32,
    /// Running WAL checksum through `frame`, first word.
    pub checksum1: u32,
    /// Running WAL checksum through `frame`, second word.
    pub checksum2: u32,
    /// Frames of this cycle already backfilled into the database file at that moment.
    pub backfilled: u32,
}

/// The compressed image of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// File name inside the generation folder.
    pub file: String,
    /// Always "zstd": one zstd frame with content size and content checksum.
    pub compression: String,
    /// Size of the compressed file in bytes.
    pub size: u64,
    /// SHA-256 of the compressed file.
    pub sha256: String,
    /// Size of the database image: page_size × page_count.
    pub raw_size: u64,
    /// SHA-256 of the database image.
    pub raw_sha256: String,
}

impl ImageInfo {
    /// The record of an `image.zst` as decoded and hashed (`summary`).
    pub fn of(summary: &crate::bundle::image::ImageSummary) -> Self {
        Self {
            file: IMAGE_FILE.into(),
            compression: "zstd".into(),
            size: summary.size,
            sha256: summary.sha256.clone(),
            raw_size: summary.raw_size,
            raw_sha256: summary.raw_sha256.clone(),
        }
    }
}

/// How a generation came to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// A full snapshot of the live source; starts a chain.
    Snapshot {
        /// The source's journal mode at the time ("wal", "delete", ...).
        journal_mode: String,
        /// Why a new chain was started here (shown by `list`).
        reason: String,
        /// The chain this one follows, if any.
        previous_chain: Option<String>,
    },
    /// Replay of an earlier generation of the same chain plus its bundles up to `seq`.
    Compaction {
        /// Bundle sequence of the generation it was built from.
        from_seq: u64,
        /// SHA-256 digest of bundle `seq` (hex): the previous-bundle link bundle `seq + 1`
        /// carries, so the chain continues from this generation once older files are retired.
        bundle_sha256: String,
    },
}

/// `manifest.json` of one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationManifest {
    /// Always [`GENERATION_FORMAT`].
    pub format: String,
    /// Manifest version.
    pub version: u32,
    /// The set this generation belongs to.
    pub set_id: String,
    /// The chain (continuous history) it belongs to.
    pub chain_id: String,
    /// Bundle sequence this generation sits at: 0 for a chain's first snapshot.
    pub seq: u64,
    /// Transaction number of the state this image holds (set-wide, increasing).
    pub txn: u64,
    /// RFC 3339 time at which the source was in this state.
    pub state_time: String,
    /// RFC 3339 time this manifest was written.
    pub created: String,
    /// Tool and version that wrote it.
    pub tool: String,
    /// How it was made.
    pub origin: Origin,
    /// Database page size in bytes.
    pub page_size: u32,
    /// Pages in the image.
    pub page_count: u32,
    /// State checksum of the image, 16 hex digits.
    pub state_checksum: String,
    /// The image file.
    pub image: ImageInfo,
    /// WAL position of this state, for a WAL-mode source.
    pub wal: Option<WalPosition>,
    /// The SQLite integrity check the image passed before publication ("full" or "quick").
    pub check: String,
    /// Seal (see module docs).
    pub self_sha256: String,
}

impl Sealed for GenerationManifest {
    const FORMAT: &'static str = GENERATION_FORMAT;
    fn seal_mut(&mut self) -> &mut String {
        &mut self.self_sha256
    }
    fn format_version(&self) -> (&str, u32) {
        (&self.format, self.version)
    }
}

impl GenerationManifest {
    /// `state_time` as microseconds since the epoch (`None` if it does not parse).
    pub fn state_time_us(&self) -> Option<i64> {
        self.state_time
            .parse::<jiff::Timestamp>()
            .ok()
            .map(jiff::Timestamp::as_microsecond)
    }

    /// The digest bundle `seq + 1` must name as its previous link: the image's SHA-256 for a
    /// snapshot, bundle `seq`'s digest for a compacted generation.
    pub fn link(&self) -> [u8; 32] {
        let hex = match &self.origin {
            Origin::Compaction { bundle_sha256, .. } => bundle_sha256,
            Origin::Snapshot { .. } => &self.image.sha256,
        };
        crate::bundle::wbb::sha_bytes(hex).unwrap_or([0; 32])
    }

    /// Check field values a decoder must not trust blindly (page size, sizes, names).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |what: String| Err(Error::corrupt(path, what));
        if !(512..=65536).contains(&self.page_size) || !self.page_size.is_power_of_two() {
            return bad(format!(
                "field `page_size` is {}, not a SQLite page size",
                self.page_size
            ));
        }
        if self.image.raw_size != u64::from(self.page_size) * u64::from(self.page_count) {
            return bad(format!(
                "field `image.raw_size` is {}, but page_size × page_count is {}",
                self.image.raw_size,
                u64::from(self.page_size) * u64::from(self.page_count)
            ));
        }
        if self.image.file != IMAGE_FILE {
            return bad(format!(
                "field `image.file` is {:?}; a generation's image is always {:?} in its own \
                 folder (refusing a path outside the set)",
                self.image.file, IMAGE_FILE
            ));
        }
        if self.image.compression != "zstd" {
            return bad(format!(
                "field `image.compression` is {:?}",
                self.image.compression
            ));
        }
        if crate::bundle::checksum::StateChecksum::from_hex(&self.state_checksum).is_none() {
            return bad("field `state_checksum` is not 16 hex digits".into());
        }
        let link = match &self.origin {
            Origin::Compaction {
                from_seq,
                bundle_sha256,
            } => {
                if *from_seq >= self.seq {
                    return bad(format!(
                        "field `origin.from_seq` is {from_seq}, not before this generation's {}",
                        self.seq
                    ));
                }
                Some(bundle_sha256)
            }
            Origin::Snapshot { .. } if self.seq != 0 => {
                return bad(format!(
                    "field `origin.kind` is \"snapshot\" but `seq` is {}: a snapshot is always \
                     a chain's generation 0",
                    self.seq
                ));
            }
            Origin::Snapshot { .. } => None,
        };
        for (name, v) in [
            ("image.sha256", &self.image.sha256),
            ("image.raw_sha256", &self.image.raw_sha256),
        ]
        .into_iter()
        .chain(link.map(|l| ("origin.bundle_sha256", l)))
        {
            if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("field `{name}` is not a SHA-256 in hex"));
            }
        }
        Ok(())
    }
}
