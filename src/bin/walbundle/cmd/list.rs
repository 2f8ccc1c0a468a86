//! `walbundle list SET`: chains, generations, bundles, and the restorable range of each chain.
//! Reads manifests and bundle headers only (cheap on any set size).

use std::path::PathBuf;

use walbundle::bundle::manifest::Origin;
use walbundle::{BackupSet, Result};

use crate::Common;
use crate::ui;

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup set: DEST/<name>, a folder or s3://BUCKET/PREFIX/<name>.
    pub set: PathBuf,
    #[command(flatten)]
    pub store: crate::StoreConfig,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(a: Args) -> Result<u8> {
    a.store.apply()?;
    let set = BackupSet::open(&a.set)?;
    let listing = walbundle::ops::list::list(&set)?;
    if a.common.json {
        ui::json(&listing);
        return Ok(0);
    }
    let mut s = format!(
        "set {} ({})\n  backs up {} on {}\n",
        listing.name,
        listing.set.display(),
        listing.source.path,
        listing.source.host
    );
    for c in &listing.chains {
        s.push_str(&format!(
            "\nchain {}: {}\n",
            c.id,
            c.reason.as_deref().unwrap_or("(no readable generation)")
        ));
        for g in &c.generations {
            if let Some(err) = &g.error {
                s.push_str(&format!("  generation {:>4}  DAMAGED: {err}\n", g.seq));
                continue;
            }
            let kind = match &g.origin {
                Some(Origin::Compaction { from_seq, .. }) => {
                    format!(", compacted from generation {from_seq}")
                }
                _ => String::new(),
            };
            s.push_str(&format!(
                "  generation {:>4}  txn {:>8}  {}  {} pages x {} B = {}, stored {}{kind}\n",
                g.seq,
                g.txn.unwrap_or(0),
                g.state_time.as_deref().unwrap_or(""),
                g.page_count.unwrap_or(0),
                g.page_size.unwrap_or(0),
                ui::bytes(g.db_bytes.unwrap_or(0)),
                ui::bytes(g.stored_bytes.unwrap_or(0)),
            ));
        }
        if let (Some(f), Some(l)) = (c.bundles.first(), c.bundles.last()) {
            let bytes: u64 = c.bundles.iter().map(|b| b.bytes).sum();
            s.push_str(&format!(
                "  bundles {}..={} ({}): txn {}..={}, {} .. {}, {}\n",
                f.seq,
                l.seq,
                c.bundles.len(),
                f.first_txn.unwrap_or(0),
                l.last_txn.unwrap_or(0),
                f.first_time.as_deref().unwrap_or("?"),
                l.last_time.as_deref().unwrap_or("?"),
                ui::bytes(bytes)
            ));
            for b in c.bundles.iter().filter(|b| b.error.is_some()) {
                s.push_str(&format!(
                    "  bundle {} DAMAGED: {}\n",
                    b.seq,
                    b.error.as_deref().unwrap_or("")
                ));
            }
        }
        for (r, what) in &c.earlier {
            s.push_str(&format!(
                "  restorable: txn {}..={} ({} .. {}); then LOST up to the next generation: {what}\n",
                r.first_txn, r.last_txn, r.first_time, r.last_time
            ));
        }
        match (&c.restorable, &c.broken) {
            (Some(r), None) => s.push_str(&format!(
                "  restorable: txn {}..={} ({} .. {}), any transaction in between\n",
                r.first_txn, r.last_txn, r.first_time, r.last_time
            )),
            (Some(r), Some(b)) => s.push_str(&format!(
                "  restorable: txn {}..={} only; BROKEN after that: {b}\n",
                r.first_txn, r.last_txn
            )),
            (None, _) => s.push_str("  restorable: nothing (no readable generation)\n"),
        }
    }
    s.push_str(&format!(
        "\n{} chain(s), {} stored\n",
        listing.chains.len(),
        ui::bytes(listing.stored_bytes)
    ));
    for u in &listing.unrelated {
        s.push_str(&format!("not walbundle's (left alone): {u}\n"));
    }
    if let (false, Some(spool)) = (listing.spooled.is_empty(), set.spool()) {
        s.push_str(&format!(
            "\n{} bundle(s) sealed on this host wait for the store in {}: no restore reaches \
             them until a capture publishes them (a running one retries every poll; a new one \
             publishes them first)\n",
            listing.spooled.len(),
            spool.root().display()
        ));
    }
    ui::out(&s);
    Ok(0)
}
