//! `walbundle list SET`: what a set holds and what it can restore. Reads manifests only.

use std::path::PathBuf;

use serde::Serialize;
use walbundle::chain::manifest::Origin;
use walbundle::{BackupSet, Result};

use crate::Common;
use crate::ui;

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup set folder (DEST/<name>).
    pub set: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Serialize)]
struct GenRow {
    chain_id: String,
    seq: u64,
    txn: Option<u64>,
    state_time: Option<String>,
    page_size: Option<u32>,
    page_count: Option<u32>,
    db_bytes: Option<u64>,
    stored_bytes: Option<u64>,
    check: Option<String>,
    origin: Option<Origin>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Listing {
    set: PathBuf,
    set_id: String,
    name: String,
    source: walbundle::chain::manifest::SourceIdentity,
    chains: Vec<String>,
    generations: Vec<GenRow>,
    restorable: Vec<Point>,
    unrelated: Vec<String>,
    stored_bytes: u64,
}

#[derive(Serialize)]
struct Point {
    chain_id: String,
    txn: u64,
    state_time: String,
}

pub fn run(a: Args) -> Result<u8> {
    let set = BackupSet::open(&a.set)?;
    let inv = set.inventory()?;
    let mut rows = Vec::new();
    let mut points = Vec::new();
    let mut stored = 0;
    for c in &inv.chains {
        for g in &c.generations {
            let row = match &g.manifest {
                Ok(m) => {
                    stored += m.image.size;
                    points.push(Point {
                        chain_id: c.id.clone(),
                        txn: m.txn,
                        state_time: m.state_time.clone(),
                    });
                    GenRow {
                        chain_id: c.id.clone(),
                        seq: g.seq,
                        txn: Some(m.txn),
                        state_time: Some(m.state_time.clone()),
                        page_size: Some(m.page_size),
                        page_count: Some(m.page_count),
                        db_bytes: Some(m.image.raw_size),
                        stored_bytes: Some(m.image.size),
                        check: Some(m.check.clone()),
                        origin: Some(m.origin.clone()),
                        error: None,
                    }
                }
                Err(e) => GenRow {
                    chain_id: c.id.clone(),
                    seq: g.seq,
                    txn: None,
                    state_time: None,
                    page_size: None,
                    page_count: None,
                    db_bytes: None,
                    stored_bytes: None,
                    check: None,
                    origin: None,
                    error: Some(e.to_string()),
                },
            };
            rows.push(row);
        }
    }
    points.sort_by_key(|p| p.txn);
    let mut unrelated = inv.unrelated.clone();
    unrelated.extend(inv.chains.iter().flat_map(|c| c.unrelated.iter().cloned()));
    let rec = set.record();
    let listing = Listing {
        set: set.dir().to_path_buf(),
        set_id: rec.set_id.clone(),
        name: rec.name.clone(),
        source: rec.source.clone(),
        chains: inv.chains.iter().map(|c| c.id.clone()).collect(),
        generations: rows,
        restorable: points,
        unrelated,
        stored_bytes: stored,
    };
    if a.common.json {
        ui::json(&listing);
        return Ok(0);
    }
    let mut s = format!(
        "set {} ({})\n  backs up {} on {}\n\n",
        listing.name,
        listing.set.display(),
        listing.source.path,
        listing.source.host
    );
    s.push_str(&format!(
        "{:<26} {:>4} {:>7}  {:<30} {:>9} {:>10} {:>10}  {}\n",
        "CHAIN", "GEN", "TXN", "STATE TIME (UTC)", "PAGES", "DB SIZE", "STORED", "ORIGIN"
    ));
    for r in &listing.generations {
        if let Some(err) = &r.error {
            s.push_str(&format!(
                "{:<26} {:>4}  DAMAGED: {err}\n",
                r.chain_id, r.seq
            ));
            continue;
        }
        let origin = match &r.origin {
            Some(Origin::Snapshot {
                reason,
                journal_mode,
                ..
            }) => format!("{reason} ({journal_mode})"),
            Some(Origin::Compaction { from_seq }) => format!("compaction of gen {from_seq}"),
            None => String::new(),
        };
        s.push_str(&format!(
            "{:<26} {:>4} {:>7}  {:<30} {:>9} {:>10} {:>10}  {}\n",
            r.chain_id,
            r.seq,
            r.txn.unwrap_or(0),
            r.state_time.as_deref().unwrap_or(""),
            r.page_count.unwrap_or(0),
            ui::bytes(r.db_bytes.unwrap_or(0)),
            ui::bytes(r.stored_bytes.unwrap_or(0)),
            origin
        ));
    }
    match (listing.restorable.first(), listing.restorable.last()) {
        (Some(first), Some(last)) => s.push_str(&format!(
            "\nrestorable: {} point(s), txn {} ({}) .. txn {} ({}); {} stored\n",
            listing.restorable.len(),
            first.txn,
            first.state_time,
            last.txn,
            last.state_time,
            ui::bytes(stored)
        )),
        _ => s.push_str("\nrestorable: nothing (no valid generation)\n"),
    }
    for u in &listing.unrelated {
        s.push_str(&format!("not walbundle's (left alone): {u}\n"));
    }
    ui::out(&s);
    Ok(0)
}
