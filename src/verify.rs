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

use crate::bundle::image::HashingReader;
use crate::chain::BackupSet;
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
    /// Bundles seen.
    pub bundles: usize,
    /// Chains replayed end to end (`deep`).
    pub chains_replayed: usize,
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

/// Bundles: every file's digest, sequence contiguity, the previous-bundle links, and state
/// continuity from headers (structural); with `deep`, replay each chain to its end in a scratch
/// file and run SQLite's check on the result.
fn verify_bundles(
    set: &BackupSet,
    inv: &crate::chain::Inventory,
    opts: &VerifyOptions,
    scratch: &std::path::Path,
    progress: &dyn Progress,
    r: &mut VerifyReport,
) -> Result<()> {
    use crate::bundle::wbb;
    let set_id = wbb::set_id_bytes(&set.record().set_id).unwrap_or([0; 16]);
    for chain in &inv.chains {
        r.bundles += chain.bundles.len();
        let base = chain.base();
        if base.is_none() && !chain.bundles.is_empty() {
            r.problems.push(Problem {
                path: chain.generations.first().map_or_else(
                    || format!("{}/{}", set.dir().display(), chain.id),
                    |g| g.image_path.display().to_string(),
                ),
                what: "the chain has no readable generation; its bundles cannot be replayed".into(),
            });
        }
        let mut prev: Option<([u8; 32], u64, u32, u64)> = base.map(|m| {
            (
                m.link(),
                crate::bundle::checksum::StateChecksum::from_hex(&m.state_checksum)
                    .unwrap_or_default()
                    .0,
                m.page_count,
                m.txn,
            )
        });
        let base_seq = base.map_or(0, |m| m.seq);
        let superseded = chain.bundles.iter().filter(|b| b.seq <= base_seq).count();
        if superseded > 0 {
            r.notes.push(format!(
                "{}/{}: {superseded} bundle(s) at or before the chain's oldest generation \
                 {base_seq} are superseded leftovers of interrupted retention; the next \
                 `walbundle compact` removes them",
                set.dir().display(),
                chain.id
            ));
        }
        let mut expect = base_seq + 1;
        for b in chain.bundles.iter().filter(|b| b.seq > base_seq) {
            let path = b.path.display().to_string();
            if b.seq != expect {
                let missing = chain
                    .bundles
                    .first()
                    .and_then(|f| f.path.parent())
                    .map(|d| d.join(wbb::file_name(expect)));
                r.problems.push(Problem {
                    path: missing
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| path.clone()),
                    what: format!(
                        "bundle {expect} is missing: the chain is broken before bundle {}",
                        b.seq
                    ),
                });
                prev = None;
            }
            expect = b.seq + 1;
            let bun = match crate::store::local_copy(set.objects().as_ref(), &b.key)
                .map_err(|e| missing(e, &b.path, "bundle file is missing"))
                .and_then(|c| wbb::read_bundle(&c.path).map_err(|e| c.relocate(e)))
            {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    r.problems.push(problem(&e));
                    prev = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            r.files_checked += 1;
            r.bytes_checked += b.size;
            let h = &bun.header;
            let mut bad = |what: String| {
                r.problems.push(Problem {
                    path: path.clone(),
                    what,
                })
            };
            if h.set_id != set_id {
                bad(format!(
                    "bundle belongs to set {}, not this set",
                    h.set_id_hex()
                ));
            } else if h.chain_id != chain.id || h.seq != b.seq {
                bad(format!(
                    "bundle says chain {} seq {}, but lies at {}/{}: moved or copied",
                    h.chain_id,
                    h.seq,
                    chain.id,
                    wbb::file_name(b.seq)
                ));
            } else if let Some((digest, state, pages, txn)) = prev {
                if h.prev_sha256 != digest {
                    bad("previous-bundle hash does not match the previous bundle's digest: the chain is broken here".into());
                } else if h.state_before != state || h.page_count_before != pages {
                    bad(
                        "state checksum before the bundle does not continue from the previous one"
                            .into(),
                    );
                } else if h.first_txn != txn + 1 {
                    bad(format!(
                        "first transaction {} does not follow {txn}",
                        h.first_txn
                    ));
                }
            }
            prev = Some((bun.digest, h.state_after, h.page_count_after, h.last_txn()));
            // A compacted generation at this bundle must hold exactly the bundle's end state.
            if let Some((g, m)) = chain
                .generations
                .iter()
                .filter(|g| g.seq == b.seq)
                .find_map(|g| g.manifest.as_ref().ok().map(|m| (g, m)))
            {
                let state = crate::bundle::checksum::StateChecksum::from_hex(&m.state_checksum)
                    .unwrap_or_default()
                    .0;
                if m.link() != bun.digest
                    || state != h.state_after
                    || m.page_count != h.page_count_after
                    || m.txn != h.last_txn()
                {
                    r.problems.push(Problem {
                        path: g.image_path.with_file_name(crate::chain::layout::MANIFEST_FILE).display().to_string(),
                        what: format!(
                            "generation {} does not hold bundle {}'s end state (link, state checksum, page count or txn differ)",
                            g.seq, b.seq
                        ),
                    });
                }
            }
        }
        // Bundles missing at the end, before a newer generation (no later bundle shows it).
        // (`expect` is past the base, so this is never the base itself.)
        if let Some(g) = chain.generation_from(expect) {
            let dir = set.dir().join(&chain.id);
            r.problems.push(Problem {
                path: dir.join(wbb::file_name(expect)).display().to_string(),
                what: format!(
                    "bundle {expect} is missing: the chain is broken before generation {}",
                    g.seq
                ),
            });
        }
    }
    if opts.deep && r.problems.is_empty() {
        for ext in crate::replay::plan::extents(inv) {
            if ext.run.is_empty() {
                continue; // the generation alone was checked above
            }
            let Some(plan) = crate::replay::plan::plan_extent(set, &ext) else {
                continue;
            };
            let (tmp, mut f) = crate::replay::TempFile::create_in(scratch, "verify-chain.db")?;
            let res =
                crate::replay::replay_into(&plan, &mut f, tmp.path(), progress).and_then(|_| {
                    crate::replay::integrity_check(tmp.path(), opts.check).map_err(|e| {
                        Error::corrupt(
                            set.dir().join(&ext.chain.id),
                            format!(
                                "the chain replays, but its final state fails: {}",
                                e.message()
                            ),
                        )
                    })
                });
            match res {
                Ok(()) => r.chains_replayed += 1,
                Err(e) if e.kind() == ErrorKind::Corrupt => r.problems.push(problem(&e)),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
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
        bundles: 0,
        chains_replayed: 0,
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
                crate::store::local_copy(set.objects().as_ref(), &g.image_key)
                    .and_then(|c| {
                        check_generation(&c.path, m, &scratch, opts.check, progress)
                            .map_err(|e| c.relocate(e))
                    })
                    .map(|s| (s.size, s.sha256))
            } else {
                set.objects().reader(&g.image_key).and_then(|r| {
                    HashingReader::new(std::io::BufReader::with_capacity(1 << 20, r))
                        .drain()
                        .map_err(|e| Error::io(&g.image_path, "reading", e))
                })
            }
            .map_err(|e| missing(e, &g.image_path, "image file is missing"));
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
    verify_bundles(set, &inv, opts, &scratch, progress, &mut r)?;
    if r.generations == 0 {
        r.problems.push(Problem {
            path: set.dir().display().to_string(),
            what: "the set holds no generation: nothing is restorable".into(),
        });
    }
    let bad: std::collections::HashSet<&str> = r.problems.iter().map(|p| p.path.as_str()).collect();
    // The newest point: the end of each extent's run of bundles up to the first one found
    // damaged, from a base whose image is intact.
    let exts = crate::replay::plan::extents(&inv);
    let newest_chain = crate::replay::plan::newest_extent(&exts).map(|e| e.chain.id.clone());
    r.newest = exts
        .iter()
        .filter(|ext| Some(&ext.chain.id) == newest_chain.as_ref())
        .filter(|ext| {
            ext.chain.generations.iter().any(|g| {
                g.seq == ext.base.seq && !bad.contains(g.image_path.display().to_string().as_str())
            })
        })
        .map(|ext| {
            let good = ext
                .run
                .iter()
                .take_while(|(b, _)| !bad.contains(b.path.display().to_string().as_str()))
                .last();
            let (txn, time) = good.map_or_else(
                || (ext.base.txn, ext.base.state_time.clone()),
                |(_, h)| {
                    let t = jiff::Timestamp::from_microsecond(h.last_time_us)
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    (h.last_txn(), t)
                },
            );
            (txn, ext.chain.id.clone(), time)
        })
        .max()
        .map(|(txn, chain_id, state_time)| Point {
            chain_id,
            txn,
            state_time,
        });
    Ok(r)
}

/// A missing artifact is damage to the set (a problem to report), not a failure to run.
fn missing(e: Error, at: &std::path::Path, what: &str) -> Error {
    if e.io_kind() == Some(std::io::ErrorKind::NotFound) {
        Error::corrupt(at, what)
    } else {
        e
    }
}
