//! The storage seam: the same semantics from a local folder and from a real S3-compatible
//! server (SeaweedFS on loopback) — put-if-absent of a complete object (a retry of the same
//! bytes succeeds, other bytes are refused naming the key), whole, bounded and ranged reads,
//! sorted listings by prefix with start-after, deletes, multipart uploads, request counts, and
//! retries that ride out a server killed and restarted.

use std::time::{Duration, Instant};

use walbundle::ErrorKind;
use walbundle::store::s3::{Retry, S3Store};
use walbundle::store::{LocalStore, Store};

use crate::support::Tmp;
use crate::support::s3::S3Server;

fn semantics(store: &dyn Store, big: &std::path::Path) {
    let before = store.requests();
    store.put_new("chain-a/000001.wbb", b"one").unwrap();
    store.put_new("chain-a/000002.wbb", b"two!").unwrap();
    store.put_new("chain-a/gen-0/manifest.json", b"{}").unwrap();
    store.put_new("chain-b/000001.wbb", b"b1").unwrap();
    // The same bytes again: a retried write, success.
    store.put_new("chain-a/000001.wbb", b"one").unwrap();
    // Other bytes: another writer won; refused, naming the key, and nothing changes.
    let e = store.put_new("chain-a/000001.wbb", b"ONE").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("chain-a/000001.wbb"), "{e}");
    assert_eq!(store.get("chain-a/000001.wbb", 100).unwrap(), b"one");

    // Bounded and ranged reads.
    let e = store.get("chain-a/000002.wbb", 3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(store.get_range("chain-a/000002.wbb", 1, 2).unwrap(), b"wo");
    assert_eq!(
        store.get_range("chain-a/000002.wbb", 2, 100).unwrap(),
        b"o!"
    );
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut store.reader("chain-a/000002.wbb").unwrap(), &mut all).unwrap();
    assert_eq!(all, b"two!");
    let e = store.get("chain-a/missing", 10).unwrap_err();
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::NotFound), "{e}");

    // Listings: sorted, by prefix, after a key.
    let keys = |prefix: &str, after: Option<&str>| -> Vec<String> {
        store
            .list(prefix, after)
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect()
    };
    assert_eq!(
        keys("", None),
        [
            "chain-a/000001.wbb",
            "chain-a/000002.wbb",
            "chain-a/gen-0/manifest.json",
            "chain-b/000001.wbb"
        ]
    );
    assert_eq!(
        keys("chain-a/", Some("chain-a/000001.wbb")),
        ["chain-a/000002.wbb", "chain-a/gen-0/manifest.json"]
    );
    assert_eq!(keys("chain-b", None), ["chain-b/000001.wbb"]);
    let sizes: Vec<u64> = store
        .list("chain-a/0", None)
        .unwrap()
        .iter()
        .map(|o| o.size)
        .collect();
    assert_eq!(sizes, [3, 4]);

    // A file in parts (over the multipart threshold on object stores), then refused over.
    store.put_new_file("chain-a/gen-0/image.wbi", big).unwrap();
    let len = std::fs::metadata(big).unwrap().len();
    let tail = store
        .get_range("chain-a/gen-0/image.wbi", len - 10, 10)
        .unwrap();
    assert_eq!(tail, std::fs::read(big).unwrap()[(len - 10) as usize..]);
    store.put_new_file("chain-a/gen-0/image.wbi", big).unwrap();
    // A large file with other bytes (in parts on object stores): refused, the first kept.
    let mut changed = std::fs::read(big).unwrap();
    changed[5] ^= 0xff;
    let big2 = big.with_extension("changed");
    std::fs::write(&big2, &changed).unwrap();
    let e = store
        .put_new_file("chain-a/gen-0/image.wbi", &big2)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    let head = store.get_range("chain-a/gen-0/image.wbi", 0, 16).unwrap();
    assert_eq!(head, std::fs::read(big).unwrap()[..16]);
    let other = big.with_extension("other");
    std::fs::write(&other, b"different").unwrap();
    let e = store
        .put_new_file("chain-a/gen-0/image.wbi", &other)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");

    // Deletes; a missing key is fine.
    store.delete("chain-b/000001.wbb").unwrap();
    store.delete("chain-b/000001.wbb").unwrap();
    assert!(keys("chain-b", None).is_empty());

    let after = store.requests();
    assert!(after.put > before.put + 5, "{after:?}");
    assert!(after.get > before.get + 4, "{after:?}");
    assert!(after.list >= before.list + 5, "{after:?}");
    assert!(after.delete >= before.delete + 2, "{after:?}");
}

fn big_file(t: &Tmp) -> std::path::PathBuf {
    // Over the 64 MiB multipart threshold, not a multiple of the part size.
    let p = t.path("big.bin");
    let mut data = vec![0u8; (70 << 20) + 12345];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
    }
    std::fs::write(&p, &data).unwrap();
    p
}

#[test]
fn local_folder_semantics() {
    let t = Tmp::new();
    let big = big_file(&t);
    let store = LocalStore::new(t.mkdir("dest"), |_| true);
    semantics(&store, &big);
}

#[test]
fn object_store_semantics_and_outage() {
    let t = Tmp::new();
    let big = big_file(&t);
    let mut server = S3Server::start(&t.mkdir("s3"), "walbundle-test");
    let store = server.store("backups/set");
    semantics(&store, &big);
    // Keys outside the prefix are not ours to list.
    server
        .store("elsewhere")
        .put_new("chain-a/000009.wbb", b"x")
        .unwrap();
    assert_eq!(store.list("", None).unwrap().len(), 4);

    // The server dies: a write retries, then fails naming the key (not a panic, not a hang).
    server.kill();
    let mut cfg = server.config();
    cfg.retry = Retry {
        attempts: 3,
        base: Duration::from_millis(50),
        max: Duration::from_millis(200),
    };
    let impatient = S3Store::new(&server.bucket, "backups/set", cfg).unwrap();
    let t0 = Instant::now();
    let e = impatient.put_new("chain-c/000001.wbb", b"c").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("chain-c/000001.wbb"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    // It comes back while a patient writer retries: the write lands, once.
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        server.up();
        server
    });
    store.put_new("chain-c/000001.wbb", b"c").unwrap();
    let _server = restart.join().unwrap();
    assert_eq!(store.get("chain-c/000001.wbb", 10).unwrap(), b"c");
    assert!(store.requests().put > 0);
}

/// A multipart upload a writer began and never finished (killed mid-upload) holds stored parts
/// nobody sees. `abort_abandoned_uploads` aborts those under the store's prefix older than the
/// given age, and leaves younger ones and other prefixes' alone.
#[test]
fn abandoned_multipart_uploads_are_aborted() {
    use rusty_s3::S3Action;
    let t = Tmp::new();
    let server = S3Server::start(&t.mkdir("s3"), "walbundle-mpu");
    let cfg = server.config();
    let bucket = rusty_s3::Bucket::new(
        cfg.endpoint.clone(),
        rusty_s3::UrlStyle::Path,
        server.bucket.clone(),
        cfg.region.clone(),
    )
    .unwrap();
    let agent = ureq::Agent::new_with_defaults();
    let begin = |key: &str| {
        let url =
            rusty_s3::actions::CreateMultipartUpload::new(&bucket, cfg.credentials.as_ref(), key)
                .sign(Duration::from_secs(60));
        let mut r = agent.post(url.as_str()).send_empty().unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        let id = rusty_s3::actions::CreateMultipartUpload::parse_response(&body)
            .unwrap()
            .upload_id()
            .to_string();
        let part = bucket
            .upload_part(cfg.credentials.as_ref(), key, 1, &id)
            .sign(Duration::from_secs(60));
        agent
            .put(part.as_str())
            .send(&vec![7u8; 1 << 20][..])
            .unwrap();
        id
    };
    begin("mine/chain-a/gen-000001/image.zst");
    begin("mine/chain-b/gen-000002/image.zst");
    begin("theirs/chain-a/gen-000001/image.zst");
    let mine = server.store("mine");
    assert_eq!(
        mine.abort_abandoned_uploads("", Duration::from_secs(3600))
            .unwrap(),
        0
    );
    assert_eq!(
        mine.abort_abandoned_uploads("chain-a", Duration::ZERO)
            .unwrap(),
        1
    );
    assert_eq!(mine.abort_abandoned_uploads("", Duration::ZERO).unwrap(), 1);
    assert_eq!(mine.abort_abandoned_uploads("", Duration::ZERO).unwrap(), 0);
    let theirs = server.store("theirs");
    assert_eq!(
        theirs.abort_abandoned_uploads("", Duration::ZERO).unwrap(),
        1
    );
    assert!(mine.requests().delete >= 2 && mine.requests().list >= 4);
}
