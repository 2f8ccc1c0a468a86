//! Compaction: replay a generation and the bundles after it, offline and from the set alone,
//! into a new verified generation; then retention that can never strand a restore point.
//!
//! A compacted generation `gen-k` of a chain holds the state after bundle `k`: its state
//! checksum, page count and transaction number equal bundle `k`'s recorded end state, and its
//! manifest records bundle `k`'s digest, the link bundle `k + 1` carries. Restores of later
//! points start from it; once the older generations and bundles `≤ k` are retired, it is the
//! chain's base. See `format/` "Compaction and retention".
//!
//! Crash safety: the new generation is staged under a temporary name and appears in one rename
//! after it was verified; retirement renames a generation (or a whole chain) to a temporary
//! name before deleting its files, oldest first, and deletes bundles in ascending order, so at
//! every instant the set verifies. Temporaries of a dead process are removed by the next run.

pub mod retention;

use std::io::Read;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bundle::checksum::StateChecksum;
use crate::bundle::image::{ImageEncoder, decode_image_unchecked};
use crate::bundle::manifest::{
    GENERATION_FORMAT, GenerationManifest, ImageInfo, MANIFEST_VERSION, Origin, Sealed,
    WalPosition, hex,
};
use crate::bundle::wbb::read_bundle;
use crate::chain::layout::{IMAGE_FILE, MANIFEST_FILE, generation_dir};
use crate::chain::{BackupSet, ChainInventory, Inventory};
use crate::error::{Error, IoContext, Result};
use crate::progress::{Progress, human_bytes};
use crate::replay::{CheckLevel, RestorePlan, Target, TempFile, integrity_check, replay_into};

/// When to build a new generation (any trigger fires it), and what history to keep.
#[derive(Debug, Clone)]
pub struct CompactPolicy {
    /// Build a generation whenever there is any bundle after the newest one.
    pub force: bool,
    /// Fire when the bundles after the newest generation reach this percentage of its
    /// compressed image size (restore cost: at most image + this much replay).
    pub trigger_bytes_pct: u64,
    /// Fire at this many bundles after the newest generation.
    pub trigger_bundles: u64,
    /// Fire when the newest generation is older than this many seconds (and bundles follow it).
    pub trigger_age_secs: i64,
    /// Keep every point of the last this many days restorable.
    pub retain_days: u64,
    /// Keep at least this many newest generations (with everything after the oldest of them).
    pub keep_generations: usize,
    /// Never retire history younger than this many seconds, whatever the other rules say.
    pub min_window_secs: i64,
}

impl Default for CompactPolicy {
    fn default() -> Self {
        Self {
            force: false,
            trigger_bytes_pct: 100,
            trigger_bundles: 10_000,
            trigger_age_secs: 86_400,
            retain_days: 7,
            keep_generations: 2,
            min_window_secs: 3600,
        }
    }
}

/// How to compact.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Triggers and retention.
    pub policy: CompactPolicy,
    /// Decide and report, change nothing.
    pub dry_run: bool,
    /// SQLite check of the new generation before it is published.
    pub check: CheckLevel,
    /// zstd level of the new image.
    pub level: i32,
    /// Compression threads (0: inline).
    pub workers: u32,
    /// Evaluate triggers and retention as of this time instead of now (tests, what-if).
    pub now: Option<jiff::Timestamp>,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            policy: CompactPolicy::default(),
            dry_run: false,
            check: CheckLevel::Full,
            level: crate::bundle::image::DEFAULT_LEVEL,
            workers: 2,
            now: None,
        }
    }
}

/// The generation compaction built (or would build).
#[derive(Debug, Clone, Serialize)]
pub struct NewGeneration {
    /// Chain id.
    pub chain_id: String,
    /// Its sequence (the bundle whose end state it holds).
    pub seq: u64,
    /// Transaction number of its state.
    pub txn: u64,
    /// Time of that state.
    pub state_time: String,
    /// Generation it was replayed from.
    pub from_seq: u64,
    /// Bundles replayed.
    pub bundles_replayed: usize,
    /// Bytes of those bundles.
    pub bundle_bytes: u64,
    /// Compressed image size (0 on a dry run).
    pub image_size: u64,
    /// Its folder.
    pub path: String,
}

/// Something retention retired (or would retire).
#[derive(Debug, Clone, Serialize)]
pub struct Retired {
    /// "chain", "generation" or "bundle".
    pub kind: &'static str,
    /// The path it had.
    pub path: String,
    /// Bytes it held.
    pub bytes: u64,
    /// Why.
    pub reason: String,
}

/// What a compaction run did.
#[derive(Debug, Clone, Serialize)]
pub struct CompactReport {
    /// The set.
    pub set: String,
    /// Dry run: nothing changed.
    pub dry_run: bool,
    /// The new generation, if one was due.
    pub created: Option<NewGeneration>,
    /// Why no generation was built, if none was.
    pub skipped: Option<String>,
    /// What retention retired.
    pub retired: Vec<Retired>,
    /// Bytes retired.
    pub retired_bytes: u64,
    /// Temporaries of dead processes removed.
    pub stale_temps_removed: usize,
    /// Unfinished multipart uploads older than [`ABANDONED_UPLOAD_AGE`] aborted (object stores).
    pub uploads_aborted: usize,
}

/// How old an unfinished multipart upload must be for compaction to abort it: far longer than
/// any live upload of a generation takes.
pub const ABANDONED_UPLOAD_AGE: std::time::Duration = std::time::Duration::from_secs(2 * 86_400);

impl CompactReport {
    /// The report in a few lines (what `walbundle compact` prints).
    pub fn describe(&self) -> String {
        let would = if self.dry_run { "would " } else { "" };
        let mut s = String::new();
        match (&self.created, &self.skipped) {
            (Some(g), _) => s.push_str(&format!(
                "{would}create generation {}\n  txn {} ({}), replayed from generation {} + {} bundles ({}){}\n",
                g.path,
                g.txn,
                g.state_time,
                g.from_seq,
                g.bundles_replayed,
                human_bytes(g.bundle_bytes),
                if self.dry_run {
                    String::new()
                } else {
                    format!(", image {}", human_bytes(g.image_size))
                }
            )),
            (None, Some(why)) => s.push_str(&format!("no new generation: {why}\n")),
            (None, None) => {}
        }
        for x in &self.retired {
            s.push_str(&format!(
                "{would}retire {} {} ({}): {}\n",
                x.kind,
                x.path,
                human_bytes(x.bytes),
                x.reason
            ));
        }
        if self.retired.is_empty() {
            s.push_str("retention: nothing to retire\n");
        } else {
            s.push_str(&format!(
                "retention: {} item(s), {} {would}freed\n",
                self.retired.len(),
                human_bytes(self.retired_bytes)
            ));
        }
        if self.stale_temps_removed > 0 {
            s.push_str(&format!(
                "removed {} temporaries left by interrupted runs\n",
                self.stale_temps_removed
            ));
        }
        if self.uploads_aborted > 0 {
            s.push_str(&format!(
                "aborted {} unfinished upload(s) of interrupted runs\n",
                self.uploads_aborted
            ));
        }
        s
    }
}

/// Compact `set`: build a new generation if a trigger fires, then apply retention.
///
/// # Errors
/// `Busy` if another compactor holds the set; `Corrupt` if the history to compact does not
/// verify (nothing is published then); `Io` for the set's folder.
pub fn compact(
    set: &mut BackupSet,
    opts: &CompactOptions,
    progress: &dyn Progress,
) -> Result<CompactReport> {
    set.lock_maintenance()?;
    let mut stale = 0;
    if let Ok(local) = set.store()
        && !opts.dry_run
    {
        // Chain folders by name: no need to read every bundle header for this.
        let chains: Vec<String> = local
            .list("")?
            .into_iter()
            .filter(|c| c.is_dir && crate::chain::layout::is_chain_id(&c.name))
            .map(|c| c.name)
            .collect();
        stale += set.clean_stale_temps(chains.iter().map(String::as_str))?;
    }
    // In an object store, the parts of a large upload whose writer died stay stored (and
    // billed) until aborted. Housekeeping only: a store that cannot list them (the bucket's
    // lifecycle rule is the fail-safe) does not stop compaction.
    let uploads_aborted = if set.is_remote() && !opts.dry_run {
        set.objects()
            .abort_abandoned_uploads("", ABANDONED_UPLOAD_AGE)
            .unwrap_or(0)
    } else {
        0
    };
    let mut report = CompactReport {
        set: set.dir().display().to_string(),
        dry_run: opts.dry_run,
        created: None,
        skipped: None,
        retired: Vec::new(),
        retired_bytes: 0,
        stale_temps_removed: stale,
        uploads_aborted,
    };
    let now = opts.now.unwrap_or_else(jiff::Timestamp::now);
    match due(set, &opts.policy, now)? {
        Err(why) => report.skipped = Some(why),
        Ok((g, plan)) => {
            if opts.dry_run {
                report.created = Some(g);
            } else {
                report.created = Some(build(set, g, &plan, opts, progress)?);
            }
        }
    }
    let inv = set.inventory()?;
    let retire = plan_retention(&inv, &opts.policy, now);
    report.retired_bytes = retire.iter().map(|r| r.0.bytes).sum();
    if !opts.dry_run {
        apply_retention(set, &retire)?;
    }
    report.retired = retire.into_iter().map(|r| r.0).collect();
    Ok(report)
}

/// The newest chain's run: is a generation due, at which bundle, and the plan that replays to
/// it (or why not).
fn due(
    set: &BackupSet,
    policy: &CompactPolicy,
    now: jiff::Timestamp,
) -> Result<std::result::Result<(NewGeneration, RestorePlan), String>> {
    let inv = set.inventory()?;
    let exts = crate::replay::plan::extents(&inv);
    let Some(ext) = crate::replay::plan::newest_extent(&exts) else {
        return Ok(Err("the set holds no restorable generation".into()));
    };
    let Some((last, h)) = ext.run.last() else {
        return Ok(Err(format!(
            "chain {} has no bundles after its generation",
            ext.chain.id
        )));
    };
    // The plan to bundle k's end: it starts from the newest generation at or before k.
    let plan = crate::replay::plan::plan(set, &Target::Txn(h.last_txn()))?;
    if plan.chain_id != ext.chain.id || plan.bundles.is_empty() {
        return Ok(Err(format!(
            "chain {} is already compacted up to its newest bundle {}",
            ext.chain.id, last.seq
        )));
    }
    let bytes: u64 = ext
        .run
        .iter()
        .filter(|(b, _)| b.seq > plan.generation_seq)
        .map(|(b, _)| b.size)
        .sum();
    let count = plan.bundles.len() as u64;
    let age = plan
        .base
        .state_time_us()
        .map_or(0, |t| (now.as_microsecond() - t) / 1_000_000);
    let image = plan.base.image.size.max(1);
    let fired = policy.force
        || bytes.saturating_mul(100) >= image.saturating_mul(policy.trigger_bytes_pct)
        || count >= policy.trigger_bundles
        || age >= policy.trigger_age_secs;
    if !fired {
        return Ok(Err(format!(
            "no trigger fired: {count} bundles, {bytes} bytes ({}% of generation {}'s image), \
             generation {age} s old (use --force to compact anyway)",
            bytes * 100 / image,
            plan.generation_seq
        )));
    }
    let gen_path =
        set.objects()
            .location(&format!("{}/{}", ext.chain.id, generation_dir(last.seq)));
    let g = NewGeneration {
        chain_id: ext.chain.id.clone(),
        seq: last.seq,
        txn: h.last_txn(),
        state_time: crate::replay::apply::time_string(h.last_time_us),
        from_seq: plan.generation_seq,
        bundles_replayed: plan.bundles.len(),
        bundle_bytes: bytes,
        image_size: 0,
        path: gen_path.display().to_string(),
    };
    Ok(Ok((g, plan)))
}

/// Replay `plan`, then check, encode, verify and publish it as generation `g`. The caller holds
/// the maintenance lock, so nothing else retires the planned files meanwhile.
fn build(
    set: &BackupSet,
    mut g: NewGeneration,
    plan: &RestorePlan,
    opts: &CompactOptions,
    progress: &dyn Progress,
) -> Result<NewGeneration> {
    let last = plan
        .bundles
        .last()
        .filter(|b| b.seq == g.seq)
        .ok_or_else(|| Error::corrupt(set.dir(), "the set changed while compacting"))?
        .clone();
    let chain_dir = match set.store() {
        Ok(local) => local.path(&g.chain_id),
        Err(_) => std::env::temp_dir(),
    };
    // 1. Replay into a scratch database beside the chain (checked link by link; for a set in
    // an object store, in the system temp folder).
    let (scratch, mut f) = TempFile::create_in(&chain_dir, "compact.db")?;
    let reached = replay_into(plan, &mut f, scratch.path(), progress)
        .map_err(|e| e.context("replaying the history to compact"))?;
    drop(f);
    crate::fault::pause_point("compact:replayed");
    // 2. SQLite's own check of the state before it becomes a generation.
    integrity_check(scratch.path(), opts.check)
        .map_err(|e| e.context("checking the compacted state"))?;
    // 3. Encode the image into the staged generation folder, hashing what is read.
    let ps = plan.page_size;
    let key = format!("{}/{}", g.chain_id, generation_dir(g.seq));
    let staged = set.stage(&key)?;
    let image_file = staged.create_file(IMAGE_FILE)?;
    let image_path = image_file.path().to_path_buf();
    let mut enc = ImageEncoder::new(image_file, opts.level, opts.workers, ps, reached.page_count)
        .ctx(&image_path, "starting compression")?;
    let mut raw_sha = Sha256::new();
    {
        let mut r = std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(scratch.path()).ctx(scratch.path(), "opening")?,
        );
        let mut page = vec![0u8; ps as usize];
        progress.begin("encoding", u64::from(ps) * u64::from(reached.page_count));
        for _ in 0..reached.page_count {
            r.read_exact(&mut page).ctx(scratch.path(), "reading")?;
            raw_sha.update(&page);
            enc.write_page(&page).ctx(&image_path, "compressing")?;
            progress.advance(u64::from(ps));
        }
        progress.end();
    }
    let (file, written) = enc.finish().ctx(&image_path, "compressing")?;
    file.finish()?;
    // 4. Verify the artifact itself: it decodes to exactly the checked bytes and state.
    let summary = decode_image_unchecked(
        &image_path,
        ps,
        reached.page_count,
        None,
        |_, _| Ok(()),
        |_| {},
    )?;
    let want_state = StateChecksum::from_hex(&reached.state_checksum).unwrap_or_default();
    if summary.state != want_state
        || summary.state != written.state
        || summary.raw_sha256 != hex(&raw_sha.finalize())
    {
        return Err(Error::corrupt(
            &image_path,
            "the new image does not decode to the replayed state; nothing was published",
        ));
    }
    let copy = crate::store::local_copy(set.objects().as_ref(), &last.key)?;
    let b = read_bundle(&copy.path).map_err(|e| copy.relocate(e))?;
    let h = &b.header;
    if h.state_after != want_state.0
        || h.page_count_after != reached.page_count
        || reached.txn != g.txn
    {
        return Err(Error::corrupt(
            &last.path,
            "the replayed state is not the bundle's recorded end state; nothing was published",
        ));
    }
    let now = jiff::Timestamp::now().to_string();
    let manifest = GenerationManifest {
        format: GENERATION_FORMAT.into(),
        version: MANIFEST_VERSION,
        set_id: set.record().set_id.clone(),
        chain_id: g.chain_id.clone(),
        seq: g.seq,
        txn: reached.txn,
        state_time: g.state_time.clone(),
        created: now,
        tool: crate::chain::tool_version(),
        origin: Origin::Compaction {
            from_seq: plan.generation_seq,
            bundle_sha256: hex(&b.digest),
        },
        page_size: ps,
        page_count: reached.page_count,
        state_checksum: want_state.to_hex(),
        image: ImageInfo::of(&summary),
        wal: Some(WalPosition {
            salt1: h.salts.0,
            salt2: h.salts.1,
            frame: h.last_frame,
            checksum1: h.end_checksum.0,
            checksum2: h.end_checksum.1,
            backfilled: 0,
        }),
        check: opts.check.as_str().into(),
        self_sha256: String::new(),
    };
    staged.write_file(MANIFEST_FILE, &manifest.to_sealed_bytes())?;
    crate::fault::pause_point("compact:staged");
    set.publish(staged, &key)?;
    crate::fault::pause_point("compact:published");
    drop(scratch);
    g.image_size = summary.size;
    Ok(g)
}

type RetirePlan = (Retired, Action);

#[derive(Debug, Clone)]
enum Action {
    Chain(String),
    Generation(String),
    Bundle(String),
}

/// Decide what retention retires: see [`CompactPolicy`] and `format/` "Compaction and
/// retention". A chain with any damaged artifact is left entirely alone.
fn plan_retention(inv: &Inventory, p: &CompactPolicy, now: jiff::Timestamp) -> Vec<RetirePlan> {
    let window = (i64::try_from(p.retain_days)
        .unwrap_or(i64::MAX / 2)
        .saturating_mul(86_400))
    .max(p.min_window_secs);
    let cutoff = now
        .as_microsecond()
        .saturating_sub(window.saturating_mul(1_000_000));
    let intact = |c: &ChainInventory| {
        !c.generations.is_empty()
            && c.generations.iter().all(|g| g.manifest.is_ok())
            && c.bundles.iter().all(|b| b.header.is_ok())
    };
    // The N newest generations set-wide (by state), as (chain, seq).
    let mut all: Vec<(u64, &str, u64)> = inv
        .valid_generations()
        .map(|(c, _, m)| (m.txn, c.id.as_str(), m.seq))
        .collect();
    all.sort_unstable_by(|a, b| b.cmp(a));
    let newest: Vec<(&str, u64)> = all
        .iter()
        .take(p.keep_generations.max(1))
        .map(|&(_, c, s)| (c, s))
        .collect();
    let mut out = Vec::new();
    for c in inv.chains.iter().filter(|c| intact(c)) {
        let gens: Vec<(u64, i64, &GenerationManifest)> = c
            .generations
            .iter()
            .filter_map(|g| g.manifest.as_ref().ok())
            .map(|m| (m.seq, m.state_time_us().unwrap_or(i64::MAX), m))
            .collect();
        let end_time = c
            .bundles
            .iter()
            .filter_map(|b| b.header.as_ref().ok().map(|h| h.last_time_us))
            .chain(gens.iter().map(|g| g.1))
            .max()
            .unwrap_or(i64::MAX);
        let reach = gens
            .iter()
            .filter(|g| g.1 <= cutoff)
            .map(|g| g.0)
            .max()
            .filter(|_| end_time > cutoff);
        let protected = |seq: u64, t: i64| {
            newest.contains(&(c.id.as_str(), seq)) || t > cutoff || reach == Some(seq)
        };
        let Some(oldest) = gens
            .iter()
            .filter(|g| protected(g.0, g.1))
            .map(|g| g.0)
            .min()
        else {
            let bytes = c.bundles.iter().map(|b| b.size).sum::<u64>()
                + gens.iter().map(|g| g.2.image.size).sum::<u64>();
            let path = chain_path(c);
            out.push((
                Retired {
                    kind: "chain",
                    path,
                    bytes,
                    reason: format!(
                        "every point is older than the {}-second window and it is not among the {} newest generations",
                        window, p.keep_generations
                    ),
                },
                Action::Chain(c.id.clone()),
            ));
            continue;
        };
        for g in c.generations.iter().filter(|g| g.seq < oldest) {
            let size = g.manifest.as_ref().map_or(0, |m| m.image.size);
            out.push((
                Retired {
                    kind: "generation",
                    path: g
                        .image_path
                        .parent()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                    bytes: size,
                    reason: format!(
                        "superseded by generation {oldest}, which reaches every point kept"
                    ),
                },
                Action::Generation(g.key.clone()),
            ));
        }
        for b in c.bundles.iter().filter(|b| b.seq <= oldest) {
            out.push((
                Retired {
                    kind: "bundle",
                    path: b.path.display().to_string(),
                    bytes: b.size,
                    reason: format!("at or before generation {oldest}"),
                },
                Action::Bundle(b.key.clone()),
            ));
        }
    }
    out
}

fn chain_path(c: &ChainInventory) -> String {
    c.generations
        .first()
        .and_then(|g| g.image_path.parent()?.parent())
        .or_else(|| c.bundles.first().and_then(|b| b.path.parent()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| c.id.clone())
}

/// Carry out `plan` in order: whole chains, then per chain its old generations (oldest first),
/// then its bundles in ascending order.
fn apply_retention(set: &BackupSet, plan: &[RetirePlan]) -> Result<()> {
    let Ok(store) = set.store() else {
        for (_, a) in plan {
            match a {
                Action::Chain(id) => retention::retire_objects(set, id)?,
                Action::Generation(key) => retention::retire_objects(set, key)?,
                Action::Bundle(key) => set.objects().delete(key)?,
            }
        }
        return Ok(());
    };
    for (_, a) in plan {
        match a {
            Action::Chain(id) => retention::retire_dir(store, "", id)?,
            Action::Generation(key) => {
                let (chain, name) = key.split_once('/').unwrap_or(("", key));
                retention::retire_dir(store, chain, name)?;
            }
            Action::Bundle(key) => {
                store.remove_file(key)?;
                crate::fault::pause_point("retire:bundle");
            }
        }
    }
    let mut dirs: Vec<&str> = plan
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Bundle(k) => k.split_once('/').map(|x| x.0),
            _ => None,
        })
        .collect();
    dirs.dedup();
    for d in dirs {
        crate::store::sync_dir(&store.path(d))?;
    }
    Ok(())
}
