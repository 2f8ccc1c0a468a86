//! Replay against a model: random chains built from random page writes, growth and truncation
//! across many transactions and bundles, each bundle version 1 or version 2 (compressed against
//! reference pages, including pages the bundle truncates and regrows); a restore at every transaction must equal the model's
//! image byte for byte, and the newest restore the model's final image.

use proptest::prelude::*;
use walbundle::replay::{RestoreOptions, Target, plan, replay_into_holding, restore};
use walbundle::{BackupSet, CheckLevel, NoProgress};

use crate::support::Tmp;
use crate::support::synth::{Synth, Txn};

fn txn_strategy() -> impl Strategy<Value = Txn> {
    (1u32..14).prop_flat_map(|count| {
        (
            proptest::collection::vec((1..=count, any::<u8>()), 1..6),
            Just(count),
        )
            .prop_map(|(writes, count_after)| Txn {
                writes,
                count_after,
            })
    })
}

fn restore_at(set: &BackupSet, target: Target, out: &std::path::Path) -> Vec<u8> {
    let p = plan(set, &target).unwrap_or_else(|e| panic!("plan {target:?}: {e}"));
    let opts = RestoreOptions {
        out: out.to_path_buf(),
        force: false,
        check: CheckLevel::None,
    };
    restore(&p, &opts, &NoProgress).unwrap_or_else(|e| panic!("restore {target:?}: {e}"));
    let bytes = std::fs::read(out).unwrap();
    std::fs::remove_file(out).unwrap();
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn replay_to_every_transaction_equals_the_model(
        initial in 1u32..8,
        txns in proptest::collection::vec(txn_strategy(), 1..40),
        cuts in proptest::collection::vec(1usize..8, 1..10),
        versions in proptest::collection::vec(any::<bool>(), 1..10),
    ) {
        let t = Tmp::new();
        let mut m = Synth::new(&t.path("set"), initial);
        // Split the transactions into bundles of the sizes `cuts` gives (the last takes the rest).
        let mut rest = &txns[..];
        let mut cuts = cuts.into_iter();
        // Each bundle version 1 or 2 (reference pages) as `versions` says: mixed chains too.
        let mut versions = versions.into_iter().cycle();
        while !rest.is_empty() {
            m.refs = versions.next().unwrap_or(false);
            let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
            m.bundle(&rest[..n]);
            rest = &rest[n..];
        }
        let set = BackupSet::open(&t.path("set")).unwrap();
        let out = t.path("out.db");
        for (txn, image) in &m.images {
            let got = restore_at(&set, Target::Txn(*txn), &out);
            prop_assert!(got == *image, "restore at txn {} differs from the model ({} vs {} bytes)", txn, got.len(), image.len());
        }
        let got = restore_at(&set, Target::Latest, &out);
        prop_assert!(got == m.image(), "newest restore differs from the model");
        // Holding nothing: every commit hands its pages to the writer thread, so the next
        // transactions' reference pages are read while a flush (with its cuts) is in flight.
        let newest = (u64::MAX, m.image());
        for (txn, image) in m.images.iter().chain(std::iter::once(&newest)) {
            let target = if *txn == u64::MAX { Target::Latest } else { Target::Txn(*txn) };
            let p = plan(&set, &target).unwrap();
            // Read and write, as restore opens its staged file: reference pages are read back.
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&out)
                .unwrap();
            replay_into_holding(&p, &mut f, &out, &NoProgress, 0)
                .unwrap_or_else(|e| panic!("replay {target:?} holding nothing: {e}"));
            drop(f);
            let got = std::fs::read(&out).unwrap();
            std::fs::remove_file(&out).unwrap();
            prop_assert!(got == *image, "replay to {:?} holding nothing differs from the model", target);
        }
    }
}
