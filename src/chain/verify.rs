//! `verify`: prove a set intact and restorable, or name every problem.
//!
//! Structural (default): every manifest parses and is sealed, belongs to this set and sits where
//! it says, and every image file has the size and SHA-256 its manifest records — without
//! decompressing. Deep: additionally decompress every image into a scratch file, check the
//! decompressed hash and the state checksum, and run SQLite's integrity check on it.
//!
//! A problem is something wrong with the set (exit 1); an error is a failure to run the check
//! at all, such as an unreadable folder (exit 2).

use std::path::PathBuf;

use serde::Serialize;

use super::BackupSet;
use crate::bundle::image::file_sha256;
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::replay::{CheckLevel, check_generation};

/// One thing wrong with a set.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The file or folder concerned.
    pub path: String,
    /// What is wrong.
    pub what: String,
}

/// The newest state a set can restore.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Chain id.
    pub chain_id: String,
    /// Transaction number.
    pub txn: u64,
    /// When the source was in that state.
    pub state_time: String,
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Set folder.
    pub set: PathBuf,
    /// Set id.
    pub set_id: String,
    /// Whether images were decompressed and checked by SQLite.
    pub deep: bool,
    /// Chains seen.
    pub chains: usize,
    /// Generations seen.
    pub generations: usize,
    /// Files whose content was hashed.
    pub files_checked: usize,
    /// Bytes hashed.
    pub bytes_checked: u64,
    /// Problems found (empty: the set is intact).
    pub problems: Vec<Problem>,
    /// Things worth knowing that are not problems (unrelated files, and so on).
    pub notes: Vec<String>,
    /// Newest restorable state, if any.
    pub newest: Option<Point>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// How deep to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Decompress and check every image with SQLite.
    pub deep: bool,
    /// SQLite check for `deep`.
    pub check: CheckLevel,
    /// Scratch folder for `deep` (default: system temp folder).
    pub scratch_dir: Option<PathBuf>,
}

fn problem(e: &Error) -> Problem {
    let path = e
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut what = e.message().to_string();
    if let Some(s) = std::error::Error::source(e) {
        what.push_str(&format!(": {s}"));
    }
    Problem { path, what }
}

/// Verify `set`.
///
/// # Errors
/// Only when the check cannot run (folder unreadable, scratch space unwritable).
pub fn verify(
    set: &BackupSet,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let inv = set.inventory()?;
    let mut r = VerifyReport {
        set: set.dir().to_path_buf(),
        set_id: set.record().set_id.clone(),
        deep: opts.deep,
        chains: inv.chains.len(),
        generations: 0,
        files_checked: 0,
        bytes_checked: 0,
        problems: Vec::new(),
        notes: Vec::new(),
        newest: None,
    };
    for name in &inv.unrelated {
        r.notes.push(format!("{name}: not walbundle's; left alone"));
    }
    let scratch = opts.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    for chain in &inv.chains {
        for name in &chain.unrelated {
            r.notes.push(format!("{name}: not walbundle's; left alone"));
        }
        if chain.generations.is_empty() {
            r.notes.push(format!(
                "{}: chain folder holds no generation (an interrupted deletion?)",
                chain.id
            ));
        }
        for g in &chain.generations {
            r.generations += 1;
            let m = match &g.manifest {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    r.problems.push(problem(e));
                    continue;
                }
                Err(e) => return Err(Error::new(e.kind(), e.to_string())),
            };
            let checked = if opts.deep {
                check_generation(&g.image_path, m, &scratch, opts.check, progress)
                    .map(|s| (s.size, s.sha256))
            } else {
                file_sha256(&g.image_path).map_err(|e| {
                    if e.io_kind() == Some(std::io::ErrorKind::NotFound) {
                        Error::corrupt(&g.image_path, "image file is missing")
                    } else {
                        e
                    }
                })
            };
            match checked {
                Ok((size, sha)) => {
                    r.files_checked += 1;
                    r.bytes_checked += size;
                    if size != m.image.size {
                        r.problems.push(problem(&Error::corrupt(
                            &g.image_path,
                            format!(
                                "image is {size} bytes, manifest field `image.size` says {}",
                                m.image.size
                            ),
                        )));
                    } else if sha != m.image.sha256 {
                        r.problems.push(problem(&Error::corrupt(
                            &g.image_path,
                            "SHA-256 of the image file does not match manifest `image.sha256`: damaged",
                        )));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Corrupt => r.problems.push(problem(&e)),
                Err(e) => return Err(e),
            }
        }
    }
    if r.generations == 0 {
        r.problems.push(Problem {
            path: set.dir().display().to_string(),
            what: "the set holds no generation: nothing is restorable".into(),
        });
    }
    let bad: std::collections::HashSet<&str> = r.problems.iter().map(|p| p.path.as_str()).collect();
    r.newest = inv
        .valid_generations()
        .filter(|(_, g, _)| !bad.contains(g.image_path.display().to_string().as_str()))
        .max_by(|a, b| (a.2.txn, &a.0.id).cmp(&(b.2.txn, &b.0.id)))
        .map(|(c, _, m)| Point {
            chain_id: c.id.clone(),
            txn: m.txn,
            state_time: m.state_time.clone(),
        });
    Ok(r)
}
