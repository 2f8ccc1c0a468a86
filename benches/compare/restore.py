#!/usr/bin/env python3
"""Restore benchmark: walbundle against Litestream and against the machine's limit, in one run.

Two cases, both tools fed exactly the same history:

  database  a ~1 GB database (2M rows of half-random, half-repetitive 500-byte values), backed up
            by each tool, then restored. The machine's limit is decompressing walbundle's image
            once with the zstd CLI (all cores) and writing it to a file, fsync included.
  history   a smaller database under the "burst" workload (~1 GB of WAL in total, with large
            transactions), captured by walbundle and replicated by Litestream *at the same time*
            from the same database, then both restored to the newest state.

Each restore is timed with its peak RSS (wait4) and checked: SQLite integrity_check, and the
writer's whole transaction log present. walbundle is run twice per case: as users run it (full
integrity check before publishing) and with `--check none`, which is what Litestream does.

  python3 benches/compare/restore.py                      # both cases (~6 min)
  python3 benches/compare/restore.py --case database --rows 500000
  python3 benches/compare/restore.py --case database --store s3   # both tools on one SeaweedFS

With `--store s3` the database case runs against a SeaweedFS the script starts
(scripts/s3-server.sh): walbundle snapshots to s3://bench/wb, Litestream replicates to
s3://bench/ls, and both restore from the bucket (no machine-limit row: that is a local figure).
"""
import argparse
import glob
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WRITER = os.path.join(ROOT, "tests", "support", "writer.py")
BURST = ["--txns", "13000", "--rate", "0", "--rows-per-txn", "20", "--min-blob", "100",
         "--max-blob", "4096", "--compressible", "0.5", "--large-every", "500", "--large-rows", "2000"]


def measured(cmd, **kw):
    """Run to completion: (seconds, peak RSS bytes, returncode)."""
    t = time.time()
    p = subprocess.Popen(cmd, **kw)
    _, status, ru = os.wait4(p.pid, 0)
    return time.time() - t, ru.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def drop_caches():
    # Not permitted everywhere; a warm page cache then favours both tools alike.
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def check(out, expected_txns):
    if not os.path.exists(out):
        return "missing"
    c = sqlite3.connect(out)
    try:
        ic = c.execute("PRAGMA integrity_check").fetchone()[0]
        if ic != "ok":
            return f"integrity: {ic}"
        if expected_txns is not None:
            n = c.execute("SELECT count(*) FROM txlog").fetchone()[0]
            if n != expected_txns:
                return f"{n} of {expected_txns} txns"
        return "ok"
    finally:
        c.close()


def litestream_cfg(work, db, store):
    cfg = os.path.join(work, "litestream.yml")
    with open(cfg, "w") as f:
        f.write(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{store}\n")
    return cfg


def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def wait_quiet(path, quiet=3.0, limit=600, above=0):
    """Until what is under `path` grew past `above` bytes and then did not change for `quiet`
    seconds."""
    last, since, t0 = -1, time.time(), time.time()
    while time.time() - t0 < limit:
        n = du(path)
        if n != last:
            last, since = n, time.time()
        elif n > above and time.time() - since >= quiet:
            return
        time.sleep(0.25)


def litestream_s3_cfg(work, db, s3):
    sys.path.insert(0, HERE)
    import s3 as s3bench  # noqa: E402
    return s3bench.litestream_config(os.path.join(work, "litestream.yml"), db, "ls", s3["AWS_ENDPOINT_URL"], s3)


def start_s3(work):
    """A SeaweedFS with bucket `bench`: (environment for both tools, pid)."""
    sys.path.insert(0, HERE)
    import s3 as s3bench  # noqa: E402
    _, env = s3bench.start_server(work)
    env = dict(env)
    return env, env["S3_PID"]


def restores(args, work, set_dir, cfg, db, expected, env=None):
    rows = []
    for label, cmd in [
        ("walbundle (full check)", [args.walbundle, "restore", set_dir, "--out", "{out}", "-q"]),
        ("walbundle (--check none)", [args.walbundle, "restore", set_dir, "--out", "{out}", "-q", "--check", "none"]),
        ("litestream", [args.litestream, "restore", "-config", cfg, "-o", "{out}", db]),
    ]:
        out = os.path.join(work, "restored.db")
        for p in glob.glob(out + "*"):
            os.remove(p)
        drop_caches()
        s, rss, rc = measured([c.replace("{out}", out) for c in cmd], stdout=subprocess.DEVNULL, env=env)
        ok = check(out, expected) if rc == 0 else f"exit {rc}"
        rows.append((label, s, rss, ok))
    return rows


def case_database(args):
    work = tempfile.mkdtemp(prefix="wbrestore-db-", dir=args.workdir)
    db = os.path.join(work, "src", "app.db")
    os.makedirs(os.path.dirname(db))
    print(f"building a database of {args.rows} rows ...", file=sys.stderr)
    subprocess.run([sys.executable, WRITER, "--db", db, "--init", "--rows", str(args.rows)], check=True)
    size = os.path.getsize(db)
    env, s3_pid = (start_s3(work) if args.store == "s3" else (None, None))
    if env:
        env = dict(os.environ, **env)
        env.pop("AWS_CA_BUNDLE", None)  # Litestream's SDK refuses a CA bundle on a plain-http client
    dest = "s3://bench/wb" if env else os.path.join(work, "wb")
    t = time.time()
    subprocess.run([args.walbundle, "snapshot", db, "--dest", dest, "-q", "--check", "quick"], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    wb_backup = time.time() - t
    set_dir = dest + "/app" if env else os.path.join(dest, "app")
    store = os.path.join(work, "s3") if env else os.path.join(work, "ls")
    cfg = litestream_s3_cfg(work, db, env) if env else litestream_cfg(work, db, store)
    print("litestream: replicating the database ...", file=sys.stderr)
    t = time.time()
    before = du(store) if os.path.exists(store) else 0  # the bucket already holds walbundle's copy
    ls = subprocess.Popen([args.litestream, "replicate", "-config", cfg], stdout=subprocess.DEVNULL,
                          stderr=open(os.path.join(work, "litestream.log"), "w"), env=env)
    time.sleep(2)
    wait_quiet(store, quiet=5.0 if env else 3.0, above=before)
    ls_backup = time.time() - t
    ls.send_signal(signal.SIGTERM)
    ls.wait()
    print(f"backup: walbundle snapshot {wb_backup:.1f} s, Litestream first copy ~{ls_backup:.1f} s "
          f"(incl. the quiet seconds)", file=sys.stderr)
    if env:
        rows = restores(args, work, set_dir, cfg, db, None, env)
        subprocess.run(["kill", "-9", s3_pid])
        report(f"database from an object store (SeaweedFS on loopback): {size / 1e9:.2f} GB, one generation /"
               f" one snapshot", rows, size, None)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return
    # The machine's limit: decompress walbundle's image once and write it out.
    image = glob.glob(os.path.join(set_dir, "*", "gen-*", "image.zst"))[0]
    out = os.path.join(work, "limit.db")
    drop_caches()
    t = time.time()
    subprocess.run(["zstd", "-d", "-q", "-f", "-T0", image, "-o", out], check=True)
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    limit_s = time.time() - t
    os.remove(out)
    rows = restores(args, work, set_dir, cfg, db, None)
    report(f"database: {size / 1e9:.2f} GB, one generation / one snapshot "
           f"(walbundle {du(dest) / 1e6:.0f} MB stored, Litestream {du(store) / 1e6:.0f} MB)",
           rows, size, limit_s)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def case_history(args):
    work = tempfile.mkdtemp(prefix="wbrestore-hist-", dir=args.workdir)
    db = os.path.join(work, "src", "app.db")
    os.makedirs(os.path.dirname(db))
    subprocess.run([sys.executable, WRITER, "--db", db, "--init", "--rows", "2000"], check=True)
    dest, store = os.path.join(work, "wb"), os.path.join(work, "ls")
    cfg = litestream_cfg(work, db, store)
    wb = subprocess.Popen([args.walbundle, "capture", db, "--dest", dest, "-q"], stdout=subprocess.DEVNULL,
                          stderr=open(os.path.join(work, "walbundle.log"), "w"))
    ls = subprocess.Popen([args.litestream, "replicate", "-config", cfg], stdout=subprocess.DEVNULL,
                          stderr=open(os.path.join(work, "litestream.log"), "w"))
    time.sleep(2)
    log = os.path.join(work, "commits.tsv")
    print("history: burst workload under both tools at once ...", file=sys.stderr)
    subprocess.run([sys.executable, WRITER, "--db", db, "--log", log, "--seed", "1"] + BURST, check=True)
    committed = sum(1 for l in open(log) if l.strip())
    time.sleep(3)
    for p in (wb, ls):
        p.send_signal(signal.SIGTERM)
        p.wait()
    set_dir = os.path.join(dest, "app")
    chain = subprocess.run([args.walbundle, "list", set_dir, "--json"], capture_output=True, text=True).stdout
    nb = chain.count('"seq"')
    rows = restores(args, work, set_dir, cfg, db, committed)
    size = os.path.getsize(db)
    report(f"history: {committed} txns of the burst workload, database {size / 1e6:.0f} MB "
           f"(walbundle {du(dest) / 1e6:.0f} MB stored in ~{nb} files, Litestream {du(store) / 1e6:.0f} MB)",
           rows, None, None)
    compaction(args, work, set_dir, store, committed, rows)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def restore_once(args, work, cmd_tail, expected):
    out = os.path.join(work, "restored.db")
    for p in glob.glob(out + "*"):
        os.remove(p)
    drop_caches()
    s, rss, rc = measured([args.walbundle, "restore"] + cmd_tail + ["--out", out, "-q"], stdout=subprocess.DEVNULL)
    ok = check(out, expected) if rc == 0 else f"exit {rc}"
    return s, rss, ok


def compaction(args, work, set_dir, ls_store, committed, before_rows):
    """Restore cost and stored bytes before and after `walbundle compact` (default policy, then
    with history older than a minute retired), against one full generation and Litestream."""
    import json
    stored_before = du(set_dir)
    before = next(r for r in before_rows if r[0] == "walbundle (full check)")
    t = time.time()
    subprocess.run([args.walbundle, "compact", set_dir, "-q"], check=True)
    compact_s = time.time() - t
    stored_after = du(set_dir)
    after = restore_once(args, work, [set_dir], committed)
    # One full generation alone: restore at the new generation's own txn (no bundles).
    listing = json.loads(subprocess.run([args.walbundle, "list", set_dir, "--json"], capture_output=True,
                                        text=True, check=True).stdout)
    gens = [g for c in listing["chains"] for g in c["generations"] if g.get("txn")]
    gen_txn = max(g["txn"] for g in gens)
    single = restore_once(args, work, [set_dir, "--txn", str(gen_txn)], None)
    time.sleep(61)
    subprocess.run([args.walbundle, "compact", set_dir, "-q", "--retain-days", "0", "--min-window", "1m",
                    "--keep-generations", "1"], check=True)
    stored_retired = du(set_dir)
    retired = restore_once(args, work, [set_dir], committed)
    ls = du(ls_store)
    print(f"\ncompaction (default policy took {compact_s:.1f} s; a full generation alone restores in "
          f"{single[0]:.2f} s)\n")
    print("| walbundle set | stored (MB) | vs Litestream's replica | restore newest (s) | vs one full generation | verified |")
    print("|---|---|---|---|---|---|")
    for label, st, r in [("before compaction", stored_before, before[1:]),
                         ("after `compact` (default policy)", stored_after, after),
                         ("after `compact --retain-days 0 --min-window 1m`", stored_retired, retired)]:
        print(f"| {label} | {st / 1e6:.0f} | {st / ls:.2f}x | {r[0]:.2f} | {r[0] / single[0]:.2f}x | {r[2]} |")
    print(f"| Litestream replica | {ls / 1e6:.0f} | 1.00x | | | |")


def report(title, rows, size, limit_s):
    print(f"\n{title}\n")
    ls = next(r for r in rows if r[0] == "litestream")
    head = "| restore | time (s) | vs Litestream | peak RSS (MB) | vs Litestream |"
    if limit_s:
        head += " throughput (MB/s) | of machine limit |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for label, s, rss, ok in rows:
        line = f"| {label} | {s:.2f} | {s / ls[1]:.2f}x | {rss / 1e6:.0f} | {rss / ls[2]:.2f}x |"
        if limit_s:
            line += f" {size / s / 1e6:.0f} | {limit_s / s:.2f} |"
        print(line + ("" if ok == "ok" else f"  **{ok}**"))
    if limit_s:
        print(f"| machine limit: zstd -d -T0 + write + fsync | {limit_s:.2f} | | | |"
              f" {size / limit_s / 1e6:.0f} | 1.00 |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["database", "history", "both"], default="both")
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the database case (~550 B each)")
    ap.add_argument("--walbundle", default=os.path.join(ROOT, "target", "release", "walbundle"))
    ap.add_argument("--litestream", default=shutil.which("litestream"))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--store", choices=["folder", "s3"], default="folder",
                    help="where the database case keeps its backups (s3: a SeaweedFS started here)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not args.litestream:
        raise SystemExit("litestream not found (../shared/peers/setup.sh, or --litestream BIN)")
    if args.walbundle == ap.get_default("walbundle"):
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    if args.case in ("database", "both"):
        case_database(args)
    if args.case in ("history", "both"):
        case_history(args)


if __name__ == "__main__":
    main()
