//! `walbundle verify SET`: exit 0 clean, 1 problems found, 2 could not run.

use std::path::PathBuf;

use walbundle::verify::{VerifyOptions, verify};
use walbundle::{BackupSet, ErrorKind, Result};

use crate::ui;
use crate::{Check, Common};

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Structural (default): every manifest's seal, identity and place, every \
    file's size and SHA-256, without decompressing.\n--deep: also decompress every image, check \
    its hash and state checksum, and run SQLite's integrity check on it.\n\n\
    Exit status: 0 intact, 1 problems found (each named), 2 could not run."
)]
pub struct Args {
    /// The backup set: DEST/<name>, a folder or s3://BUCKET/PREFIX/<name>.
    pub set: PathBuf,
    /// Decompress every image and check it with SQLite.
    #[arg(long)]
    pub deep: bool,
    /// SQLite check used by --deep.
    #[arg(long, value_enum, default_value = "full")]
    pub check: Check,
    /// Scratch folder for --deep (default: the system temp folder).
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    #[command(flatten)]
    pub store: crate::StoreConfig,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(a: Args) -> Result<u8> {
    a.store.apply()?;
    let set = match BackupSet::open(&a.set) {
        Ok(s) => s,
        // A damaged set record is a finding about the set, not a failure to run.
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            if a.common.json {
                ui::json(&serde_json::json!({
                    "ok": false, "set": a.set, "problems": [{
                        "path": e.path().map(|p| p.display().to_string()), "what": e.message() }]
                }));
            } else {
                eprintln!("walbundle: problem: {e}");
            }
            return Ok(1);
        }
        Err(e) => return Err(e),
    };
    let opts = VerifyOptions {
        deep: a.deep,
        check: a.check.into(),
        scratch_dir: a.scratch.clone(),
    };
    let bar = ui::Bar::new(!a.common.json && !a.common.quiet);
    let r = verify(&set, &opts, &bar)?;
    let code = u8::from(!r.is_clean());
    if a.common.json {
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        v["ok"] = serde_json::Value::Bool(r.is_clean());
        ui::json(&v);
        return Ok(code);
    }
    for p in &r.problems {
        eprintln!("walbundle: problem: {}: {}", p.path, p.what);
    }
    if !a.common.quiet {
        for n in &r.notes {
            eprintln!("walbundle: note: {n}");
        }
        let verdict = if r.is_clean() {
            "intact"
        } else {
            "PROBLEMS FOUND"
        };
        let mut s = format!(
            "{}: {verdict} ({}; {} chain(s), {} generation(s), {} bundle(s), {} file(s) / {} hashed, {} problem(s))\n",
            r.set.display(),
            if r.deep { "deep" } else { "structural" },
            r.chains,
            r.generations,
            r.bundles,
            r.files_checked,
            ui::bytes(r.bytes_checked),
            r.problems.len()
        );
        if let Some(p) = &r.newest {
            s.push_str(&format!(
                "newest restorable: txn {} at {} (chain {})\n",
                p.txn, p.state_time, p.chain_id
            ));
        }
        ui::out(&s);
    }
    Ok(code)
}
