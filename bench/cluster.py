#!/usr/bin/env python3
"""Relay throughput of one node on the embedded store, one node on
PostgreSQL, and three nodes sharing one PostgreSQL database.

Path: smtp-source (-s 20 in all, one connection per message) -> Ferrymail
node(s) -> smtp-sink.  For every round, three runs in a rotating order, each
with a fresh sink, fresh nodes in fresh directories and (for PostgreSQL) a
fresh database on one private PostgreSQL 15 (bench/lib/pg.py: fsync on,
pg_stat_statements loaded):

* embedded-1: one node, embedded store (the default);
* pg-1:       one node, data and contents in PostgreSQL;
* pg-3:       three nodes on one database; smtp-source's load split evenly
              over them (three smtp-source processes at once, sessions
              split too), all relaying to the one sink.

End-to-end time = from the start of smtp-source until smtp-sink's counter
reaches warm-up + COUNT.  Afterwards the sink must hold exactly that many
(no duplicates) and the queue must be empty.  For PostgreSQL runs the
program also prints what the database did per message (pg_stat_statements,
reset just before the timed part): round trips (top-level statements) and
statements (nested ones in functions included), the statements with the
most calls, and the server's CPU time.

Prints figures; it is not a test.  Needs root (smtp-sink -u, initdb as
postgres).

    python3 bench/cluster.py                      # 1 round x 5000 msgs
    python3 bench/cluster.py --rounds 3 --count 10000
    python3 bench/cluster.py --only pg-3 --keep
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.dont_write_bytecode = True          # no __pycache__ in the work tree
sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
from postfix import bench_tmpdir, free_port, fs_type, run_smtp_source  # noqa: E402
from ferry import TempFerrymail, ensure_binary  # noqa: E402
from sink import CountingSink, proc_cpu_seconds, wait_for_idle  # noqa: E402
from pg import TempPostgres, wait_sql  # noqa: E402

KINDS = ("embedded-1", "pg-1", "pg-3")


class PgFerrymail(TempFerrymail):
    """A node whose data and contents are in PostgreSQL database ``url``."""

    def __init__(self, *a, url: str, node: str, **kw):
        super().__init__(*a, **kw)
        self.url = url
        self.node = node

    def config_text(self) -> str:
        text = super().config_text()
        embedded = f"""[store.local]
type = "embedded"
path = "{self.data_dir}"

[storage]
data = "local"
blob = "local"
"""
        assert embedded in text, "bench/lib/ferry.py changed its config"
        return text.replace(embedded, f"""[store.pg]
type = "postgresql"
url = "{self.url}"
pool-size = 16

[storage]
data = "pg"
blob = "pg"
""").replace("[server]\n", f"[server]\nnode-id = \"{self.node}\"\n", 1)


@dataclass
class Run:
    round: int
    kind: str
    count: int
    ok: bool = False
    accept_s: float = 0.0
    e2e_s: float = 0.0
    sink_total: int | None = None
    queued_after: int | None = None
    ferry_cpu_s: float | None = None
    pg_cpu_s: float | None = None
    statements: int | None = None       # every statement, nested ones too
    round_trips: int | None = None      # top-level statements: one round trip each
    top: list[tuple[int, float, bool, str]] = field(default_factory=list)
    idle: float = 0.0
    note: str = ""

    @property
    def rate(self) -> float | None:
        return self.count / self.e2e_s if self.ok and self.e2e_s > 0 else None

    @property
    def accept_rate(self) -> float | None:
        return self.count / self.accept_s if self.ok and self.accept_s > 0 else None


def ferry_toml(sink: tuple[str, int], args) -> str:
    host, port = sink
    return f"""
[queue.route.sink]
type = "relay"
address = "{host}"
port = {port}
protocol = "smtp"
tls.mode = "disable"

[queue.strategy]
route = "'sink'"

[queue.virtual.default]
concurrency = {args.concurrency}
destination.concurrency = {args.dest_concurrency}
"""


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def send(ports: list[int], count: int, args) -> tuple[bool, float, str]:
    """smtp-source into every port at once, ``count`` messages split evenly;
    (all accepted, wall clock, error text)."""
    results: list = [None] * len(ports)

    def one(i: int, port: int, n: int, sessions: int) -> None:
        results[i] = run_smtp_source(port, n, sessions=sessions, size=args.size,
                                     one_msg_per_conn=True,
                                     rcpt_domain=args.rcpt_domain)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i, p, n, s))
               for i, (p, n, s) in enumerate(zip(ports, split(count, len(ports)),
                                                  split(args.sessions, len(ports))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    bad = [r for r in results if r is None or not r.ok]
    err = "; ".join(f"rc {r.returncode}: {r.stderr.strip()[-200:]}" for r in bad if r)
    return (not bad, elapsed, err)


def queued(pg: TempPostgres | None, db: str, nodes: list[TempFerrymail]) -> int | None:
    if pg is not None:
        try:
            return int(pg.sql("SELECT count(*) FROM entry", db))
        except (RuntimeError, ValueError):
            return None
    return nodes[0].queued_count()


def run_kind(args, rnd: int, kind: str, binary: Path, pg: TempPostgres | None,
             seq: list[int]) -> Run:
    run = Run(round=rnd, kind=kind, count=args.count)
    nodes_n = 3 if kind == "pg-3" else 1
    if not kind.startswith("pg"):
        pg = None          # the server runs for the other kinds; not used here
    db = ""
    nodes: list[TempFerrymail] = []
    try:
        with CountingSink() as sink:
            extra = ferry_toml(sink.address, args)
            if kind.startswith("pg"):
                seq[0] += 1
                db = f"bench_{os.getpid()}_{seq[0]}"
                pg.sql(f"CREATE DATABASE {db}")
            try:
                for i in range(nodes_n):
                    if kind.startswith("pg"):
                        fm = PgFerrymail(free_port(), free_port(), extra_toml=extra,
                                         binary=binary, keep=args.keep,
                                         url=pg.url(db), node=f"node{i}")
                    else:
                        fm = TempFerrymail(free_port(), free_port(), extra_toml=extra,
                                           binary=binary, keep=args.keep)
                    nodes.append(fm.__enter__())
                ports = [n.port for n in nodes]
                wait_s = 120 + run.count / 20
                if args.warmup:
                    ok, _, err = send(ports, args.warmup, args)
                    if not ok or not sink.wait_count(args.warmup, wait_s):
                        run.note = f"warm-up failed: {err or sink.count}"
                        return run
                    left = queued(pg, db, nodes)
                    deadline = time.monotonic() + 30
                    while left and time.monotonic() < deadline:
                        time.sleep(0.2)
                        left = queued(pg, db, nodes)
                    if left:
                        run.note = f"warm-up: {left} still queued"
                        return run
                os.sync()
                run.idle = wait_for_idle(args.wait_idle, args.max_wait)
                if pg is not None:
                    pg.sql("SELECT pg_stat_statements_reset()")
                    pg_cpu0 = pg.backend_cpu_seconds()
                cpu0 = [proc_cpu_seconds(n.proc.pid) for n in nodes]
                sink.expect(args.warmup + run.count)
                t0 = time.monotonic()
                ok, run.accept_s, err = send(ports, run.count, args)
                if not ok:
                    run.note = f"smtp-source: {err}"
                reached = sink.wait(wait_s)
                cpu1 = [proc_cpu_seconds(n.proc.pid) for n in nodes]
                if None not in cpu0 and None not in cpu1:
                    run.ferry_cpu_s = sum(b - a for a, b in zip(cpu0, cpu1))
                if pg is not None:
                    run.pg_cpu_s = pg.backend_cpu_seconds() - pg_cpu0
                    dbid = pg.sql(f"SELECT oid FROM pg_database WHERE datname = '{db}'")
                    rows = pg.sql(
                        "SELECT calls, total_exec_time, toplevel, "
                        "regexp_replace(left(query, 70), '\\s+', ' ', 'g') "
                        f"FROM pg_stat_statements WHERE dbid = {dbid} ORDER BY calls DESC")
                    run.top = []
                    total = trips = 0
                    for line in rows.splitlines():
                        calls, ms, top, text = line.split("\t", 3)
                        total += int(calls)
                        if top == "t":
                            trips += int(calls)
                        run.top.append((int(calls), float(ms), top == "t", text))
                    run.statements = total
                    run.round_trips = trips
                if reached is None:
                    run.note += f" sink got {sink.count - args.warmup} of {run.count}"
                    return run
                run.e2e_s = reached - t0
                run.ok = ok
                time.sleep(1.0)
                run.queued_after = queued(pg, db, nodes)
                run.sink_total = sink.count
                if run.sink_total != args.warmup + run.count:
                    run.ok = False
                    run.note += f" sink total {run.sink_total} != {args.warmup + run.count}"
                if run.queued_after not in (0, None):
                    run.ok = False
                    run.note += f" {run.queued_after} still queued"
            finally:
                for n in nodes:
                    if not run.ok:
                        run.note += f"\n--- {n.base} log tail ---\n" + n.log_tail(5)
                    n.__exit__(None, None, None)
                if db and not args.keep:
                    try:
                        pg.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                    except RuntimeError:
                        pass
    except Exception as e:                               # noqa: BLE001
        run.ok = False
        run.note = f"{type(e).__name__}: {e}\n{run.note}"
    return run


def fmt(x, spec: str = ",.0f") -> str:
    return format(x, spec) if x is not None else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1, help="rounds (default 1)")
    ap.add_argument("--count", type=int, default=5000, help="timed messages per run")
    ap.add_argument("--size", type=int, default=1024, help="body bytes (default 1024)")
    ap.add_argument("--sessions", type=int, default=21,
                    help="smtp-source sessions in all, split over the nodes (default 21)")
    ap.add_argument("--warmup", type=int, default=300, help="untimed messages first")
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--dest-concurrency", type=int, default=20)
    ap.add_argument("--rcpt-domain", default="bench.example")
    ap.add_argument("--only", action="append", choices=KINDS)
    ap.add_argument("--ferry-binary", default=None)
    ap.add_argument("--build", action="store_true", help="cargo build --release first")
    ap.add_argument("--wait-idle", type=float, default=85.0, metavar="PCT")
    ap.add_argument("--max-wait", type=float, default=120.0)
    ap.add_argument("--top", type=int, default=20,
                    help="statements to list per PostgreSQL run (default 20)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("cluster.py needs root (smtp-sink -u, initdb as postgres)", file=sys.stderr)
        return 2
    kinds = [k for k in KINDS if not args.only or k in args.only]
    binary = ensure_binary(args.ferry_binary, force_build=args.build)
    scratch = bench_tmpdir() or os.environ.get("TMPDIR") or "/tmp"
    print(f"cluster relay throughput -- {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"  ferrymail {binary}; PostgreSQL 15 private, fsync on, pg_stat_statements")
    print(f"  {args.rounds} round(s) x {args.count} msgs (+{args.warmup} warm-up), "
          f"{args.size}-byte bodies; smtp-source -s {args.sessions} in all, one message "
          f"per connection")
    print(f"  {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; scratch in "
          f"{scratch} ({fs_type(scratch)})")
    print(flush=True)
    hdr = (f"{'rnd':>3}  {'run':<10} {'msgs':>5} {'accept s':>8} {'e2e s':>7} "
           f"{'msg/s':>7} {'idle%':>5} {'ferry cpu':>9} {'pg cpu':>7} {'trips/msg':>9} "
           f"{'stmts/msg':>9}  check")
    print(hdr)
    print("-" * len(hdr))
    runs: list[Run] = []
    seq = [0]
    pg_needed = any(k.startswith("pg") for k in kinds)
    pg_ctx = TempPostgres(keep=args.keep) if pg_needed else None
    pg = pg_ctx.__enter__() if pg_ctx else None
    try:
        for rnd in range(1, args.rounds + 1):
            k = (rnd - 1) % len(kinds)
            for kind in kinds[k:] + kinds[:k]:
                run = run_kind(args, rnd, kind, binary, pg, seq)
                runs.append(run)
                per = (run.statements / run.count) if run.statements is not None else None
                trips = (run.round_trips / run.count) if run.round_trips is not None else None
                check = ""
                if run.sink_total is not None:
                    check = f"sink {run.sink_total}, queue {run.queued_after}"
                print(f"{rnd:>3}  {kind:<10} {run.count:>5} "
                      f"{fmt(run.accept_s or None, '.2f'):>8} {fmt(run.e2e_s or None, '.2f'):>7} "
                      f"{fmt(run.rate):>7} {run.idle:>5.0f} "
                      f"{fmt(run.ferry_cpu_s, '.1f'):>9} {fmt(run.pg_cpu_s, '.1f'):>7} "
                      f"{fmt(trips, '.1f'):>9} {fmt(per, '.1f'):>9}  {check}"
                      + ("" if run.ok else "  FAILED"), flush=True)
                if not run.ok:
                    for line in run.note.strip().splitlines()[:20]:
                        print(f"{'':>10}{line[:200]}")
                if run.top:
                    for calls, ms, top, text in run.top[:args.top]:
                        kind_ = "trip" if top else "nested"
                        print(f"{'':>10}{calls / run.count:>6.2f}/msg {ms / calls * 1000:>7.0f} us "
                              f"{kind_:<6} {text}")
    finally:
        if pg_ctx:
            pg_ctx.__exit__(None, None, None)

    print("\nend-to-end msg/s, median over successful rounds")
    med: dict[str, float] = {}
    for kind in kinds:
        rates = [r.rate for r in runs if r.kind == kind and r.rate is not None]
        acc = [r.accept_rate for r in runs if r.kind == kind and r.accept_rate is not None]
        if not rates:
            print(f"  {kind:<10} no successful run")
            continue
        med[kind] = statistics.median(rates)
        cpu = [r.ferry_cpu_s / r.count * 1e6 for r in runs
               if r.kind == kind and r.ok and r.ferry_cpu_s is not None]
        pgc = [r.pg_cpu_s / r.count * 1e6 for r in runs
               if r.kind == kind and r.ok and r.pg_cpu_s is not None]
        print(f"  {kind:<10} {med[kind]:>7,.0f} msg/s; accepted {statistics.median(acc):,.0f} msg/s;"
              f" ferrymail CPU {fmt(statistics.median(cpu) if cpu else None)} us/msg;"
              f" PostgreSQL CPU {fmt(statistics.median(pgc) if pgc else None)} us/msg")
    if "pg-1" in med and "embedded-1" in med:
        print(f"  ratio pg-1/embedded-1: {med['pg-1'] / med['embedded-1']:.2f}x")
    if "pg-3" in med and "pg-1" in med:
        print(f"  ratio pg-3/pg-1:       {med['pg-3'] / med['pg-1']:.2f}x")
    if "pg-3" in med and "embedded-1" in med:
        print(f"  ratio pg-3/embedded-1: {med['pg-3'] / med['embedded-1']:.2f}x")
    print("  (2 shared cores: every node, PostgreSQL, smtp-source and smtp-sink compete"
          " for them; figures are noisy)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 1 if any(not r.ok for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
