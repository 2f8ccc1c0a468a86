#!/usr/bin/env python3
"""A real application for walbundle's tests: commits transactions to a SQLite database
from its own process, recording each transaction id inside the transaction (table txlog)
and, after COMMIT returns, in a log file ("<txn_id>\t<unix time>").

A restored copy is correct iff its txlog is exactly 1..k for some k, every logged id <= k
was committed, and integrity_check passes.

  writer.py --db app.db --init --rows 1000 [--page-size 4096] [--journal wal|delete]
  writer.py --db app.db --txns 500 --rate 200 --log commits.tsv [--large-every 50]
            [--rollback-every 7] [--checkpoint-every 0 --checkpoint-mode PASSIVE]
"""
import argparse, os, random, sqlite3, sys, time

def connect(path, args):
    ms = getattr(args, "busy_timeout_ms", 30000)
    c = sqlite3.connect(path, isolation_level=None, timeout=ms / 1000)
    c.execute(f"PRAGMA busy_timeout={ms}")
    return c

# Random bytes written by blob() since the start: what --floor counts.
RANDOM = [0]


def blob(rng, a):
    n = rng.randint(a.min_blob, a.max_blob)
    k = n - int(n * a.compressible)
    RANDOM[0] += k
    return rng.randbytes(k) + (b"lorem-ipsum-%08d;" % rng.randrange(10**8) * (n // 16 + 1))[: n - k]


def add_floor(path, n):
    """Add n to the count in `path`: the random (incompressible) bytes of committed rows, which
    any backup that can restore every committed transaction must store at least once."""
    if not path:
        return
    old = int(open(path).read() or 0) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(old + n))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--init", action="store_true")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--page-size", type=int, default=4096)
    ap.add_argument("--journal", default="wal")
    ap.add_argument("--txns", type=int, default=0)
    ap.add_argument("--duration", type=float, default=0)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--log")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--large-every", type=int, default=0)
    ap.add_argument("--rollback-every", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--checkpoint-mode", default="PASSIVE")
    ap.add_argument("--synchronous", default="NORMAL")
    ap.add_argument("--savepoint-every", type=int, default=0)
    ap.add_argument("--vacuum-every", type=int, default=0)
    ap.add_argument("--reconnect-every", type=int, default=0)
    ap.add_argument("--journal-size-limit", type=int, default=-1)
    ap.add_argument("--cache-size", type=int, default=0, help="small values make large txns spill to the WAL before commit")
    ap.add_argument("--autocheckpoint", type=int, default=1000)
    ap.add_argument("--busy-timeout-ms", type=int, default=30000)
    ap.add_argument("--ddl-every", type=int, default=0, help="ALTER TABLE ADD COLUMN, CREATE and DROP TABLE every N txns")
    ap.add_argument("--fail-on-locked", action="store_true",
                    help="exit 3 at the first 'database is locked' or 'busy' error, naming the statement "
                         "(for applications with no busy timeout, whose every such error is a failure)")
    ap.add_argument("--stop-file", help="stop cleanly (between transactions) once this file exists")
    ap.add_argument("--rows-per-txn", type=int, default=3, help="rows touched by a normal txn (uniform 1..N)")
    ap.add_argument("--min-blob", type=int, default=50)
    ap.add_argument("--max-blob", type=int, default=1500)
    ap.add_argument("--large-rows", type=int, default=300)
    ap.add_argument("--compressible", type=float, default=0.0, help="fraction of each blob that is repetitive text")
    ap.add_argument("--floor", help="add the random bytes of committed rows to the count in this file")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    if a.init:
        c = connect(a.db, a)
        c.execute(f"PRAGMA page_size={a.page_size}")
        c.execute(f"PRAGMA journal_mode={a.journal}")
        c.executescript("""
            CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, txn_id INTEGER, v BLOB);
            CREATE INDEX IF NOT EXISTS items_txn ON items(txn_id);
            CREATE TABLE IF NOT EXISTS txlog(txn_id INTEGER PRIMARY KEY, t REAL);""")
        c.execute("BEGIN")
        for i in range(a.rows):
            c.execute("INSERT INTO items(txn_id, v) VALUES(0, ?)", (rng.randbytes(200) + b"x" * 300,))
        c.execute("COMMIT")
        c.close()
        add_floor(a.floor, 200 * a.rows)
        return 0
    def open_conn():
        c = connect(a.db, a)
        c.execute(f"PRAGMA synchronous={a.synchronous}")
        c.execute(f"PRAGMA wal_autocheckpoint={a.autocheckpoint}")
        if a.journal_size_limit >= 0:
            c.execute(f"PRAGMA journal_size_limit={a.journal_size_limit}")
        if a.cache_size:
            c.execute(f"PRAGMA cache_size={a.cache_size}")
        return c
    c = open_conn()
    nxt = c.execute("SELECT coalesce(max(txn_id),0)+1 FROM txlog").fetchone()[0]
    nrows = c.execute("SELECT coalesce(max(id),0) FROM items").fetchone()[0]
    log = open(a.log, "a", buffering=1) if a.log else None
    t0 = time.time(); i = 0
    while (a.txns == 0 or i < a.txns) and (a.duration == 0 or time.time() - t0 < a.duration):
        if a.stop_file and os.path.exists(a.stop_file):
            break
        if a.rate:
            d = t0 + i / a.rate - time.time()
            if d > 0: time.sleep(d)
        i += 1
        t_begin = time.time()
        random_before = RANDOM[0]
        c.execute("BEGIN IMMEDIATE")
        # Inside the write transaction, so several writer processes share one sequence.
        nxt = c.execute("SELECT coalesce(max(txn_id),0)+1 FROM txlog").fetchone()[0]
        nrows = c.execute("SELECT coalesce(max(id),0) FROM items").fetchone()[0]
        large = a.large_every and i % a.large_every == 0
        for _ in range(a.large_rows if large else rng.randint(1, a.rows_per_txn)):
            if nrows and rng.random() < 0.5 and not large:
                c.execute("UPDATE items SET v=?, txn_id=? WHERE id=?",
                          (blob(rng, a), nxt, rng.randint(1, nrows)))
            else:
                nrows += 1
                c.execute("INSERT INTO items(id, txn_id, v) VALUES(?,?,?)",
                          (nrows, nxt, blob(rng, a)))
        if a.savepoint_every and i % a.savepoint_every == 0:
            # A savepoint whose work is rolled back inside a transaction that commits.
            c.execute("SAVEPOINT sp")
            for _ in range(5):
                c.execute("INSERT INTO items(txn_id, v) VALUES(-1, ?)", (rng.randbytes(900),))
            c.execute("UPDATE items SET v = zeroblob(10) WHERE id <= 20")
            c.execute("ROLLBACK TO sp")
            c.execute("RELEASE sp")
        if a.rollback_every and i % a.rollback_every == 0:
            RANDOM[0] = random_before
            c.execute("ROLLBACK")
            nrows = c.execute("SELECT coalesce(max(id),0) FROM items").fetchone()[0]
            continue
        c.execute("INSERT INTO txlog VALUES(?, ?)", (nxt, time.time()))
        c.execute("COMMIT")
        t_end = time.time()
        if log: log.write(f"{nxt}\t{t_end:.6f}\t{t_end - t_begin:.6f}\n")
        nxt += 1
        if a.checkpoint_every and i % a.checkpoint_every == 0:
            try:
                c.execute(f"PRAGMA wal_checkpoint({a.checkpoint_mode})").fetchall()
            except sqlite3.OperationalError:
                pass  # busy: a reader holds a mark; the application carries on
        if a.vacuum_every and i % a.vacuum_every == 0:
            # An explicit write transaction: an autocommit DELETE would start as a reader and
            # fail at once (SQLITE_BUSY_SNAPSHOT) if another writer committed meanwhile.
            c.execute("BEGIN IMMEDIATE")
            c.execute("DELETE FROM items WHERE id % 7 = 0 AND txn_id >= 0")
            c.execute("COMMIT")
            for attempt in range(100):
                try:
                    c.execute("VACUUM")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) and "busy" not in str(e):
                        raise
                    if a.fail_on_locked:
                        raise
                    time.sleep(0.05)
        if a.ddl_every and i % a.ddl_every == 0:
            k = i // a.ddl_every
            c.execute(f"ALTER TABLE items ADD COLUMN extra{k} INTEGER")
            c.execute(f"CREATE TABLE scratch{k}(x)")
            c.execute(f"INSERT INTO scratch{k} VALUES(randomblob(3000))")
            if k > 1:
                c.execute(f"DROP TABLE scratch{k - 1}")
        if a.reconnect_every and i % a.reconnect_every == 0:
            c.close()
            c = open_conn()
    if log: log.close()
    c.close()
    add_floor(a.floor, RANDOM[0])
    return 0

if __name__ == "__main__":
    try:
        sys.exit(main())
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            print(f"writer.py: {e}", file=sys.stderr)
            sys.exit(3)
        raise
