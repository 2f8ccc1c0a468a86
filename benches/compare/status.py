#!/usr/bin/env python3
"""`walbundle status --config` over many sets with long histories: how its cost grows.

Captures one real set (a WAL database, a writer process, capture sealing a bundle every 10 ms),
copies it to --sets set folders (one per database of a config pattern), then times
`status --config` (and `--prometheus`). With --baseline BIN, a second walbundle binary (for
example one built from an older commit) runs on the same sets in the same invocation, and the
table shows the ratio. `status` reads names, generation manifests and the newest bundle header
of each chain, so its cost follows the number of sets and files listed, not the bytes or
headers of every bundle; `verify` is what reads everything.

  python3 benches/compare/status.py                         # 1,000 sets of ~500 bundles
  python3 benches/compare/status.py --sets 100 --txns 300
  python3 benches/compare/status.py --baseline /tmp/old/target/release/walbundle
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WRITER = os.path.join(common.ROOT, "tests", "support", "writer.py")


def build_sets(work, args):
    src = os.path.join(work, "src")
    os.makedirs(src)
    db = os.path.join(src, "one.db")
    subprocess.run([sys.executable, WRITER, "--db", db, "--init", "--rows", "200"], check=True)
    dest = os.path.join(work, "one-dest")
    cap = subprocess.Popen([args.walbundle, "capture", db, "--dest", dest, "--interval", "10ms", "-q"])
    while not os.path.exists(os.path.join(dest, "one", "walbundle-set.json")):
        time.sleep(0.05)
    time.sleep(0.5)
    subprocess.run([sys.executable, WRITER, "--db", db, "--txns", str(args.txns), "--rate", "100"], check=True)
    time.sleep(0.5)
    cap.terminate()
    cap.wait()
    one = os.path.join(dest, "one")
    bundles = sum(1 for _, _, fs in os.walk(one) for f in fs if f.endswith(".wbb"))
    dbs, store = os.path.join(work, "dbs"), os.path.join(work, "store")
    os.makedirs(dbs)
    os.makedirs(store)
    for i in range(args.sets):
        shutil.copy(db, os.path.join(dbs, f"d{i:04d}.db"))
        shutil.copytree(one, os.path.join(store, f"db-d{i:04d}.db"))
    cfg = os.path.join(work, "walbundle.toml")
    with open(cfg, "w") as f:
        f.write(f'dest = "{store}"\n\n[[database]]\npath = "{dbs}/*.db"\nname = "db-{{1}}"\n')
    return cfg, bundles


def timed(cmd, reps):
    best = None
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        d = time.perf_counter() - t0
        best = d if best is None else min(best, d)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--walbundle", default=os.path.join(common.ROOT, "target", "release", "walbundle"))
    ap.add_argument("--baseline", help="another walbundle binary to time on the same sets")
    ap.add_argument("--sets", type=int, default=1000)
    ap.add_argument("--txns", type=int, default=1000, help="transactions in the captured history")
    ap.add_argument("--reps", type=int, default=3, help="runs of each command; the best is shown")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(args.walbundle):
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=common.ROOT, check=True)
    work = tempfile.mkdtemp(prefix="wbstatus-")
    cfg, bundles = build_sets(work, args)
    bins = [("walbundle", args.walbundle)] + ([("baseline", args.baseline)] if args.baseline else [])
    res = {}
    for name, b in bins:
        res[name] = (timed([b, "status", "--config", cfg], args.reps),
                     timed([b, "status", "--config", cfg, "--prometheus"], args.reps))
    print(f"\n{args.sets} sets of {bundles} bundles each (best of {args.reps})\n")
    print("| command | " + " | ".join(n for n, _ in bins) + (" | walbundle / baseline |" if args.baseline else " |"))
    print("|---|" + "---|" * len(bins) + ("---|" if args.baseline else ""))
    for i, label in enumerate(("status --config (s)", "status --config --prometheus (s)")):
        vals = [res[n][i] for n, _ in bins]
        ratio = f" {vals[0] / vals[1]:.2f}x |" if args.baseline else ""
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in vals) + " |" + ratio)
    print(f"\nper set: {res['walbundle'][0] / args.sets * 1000:.2f} ms")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
