#!/usr/bin/env python3
"""End-to-end relay throughput: Ferrymail vs Postfix 3.7 vs the raw hop.

Path: smtp-source (-s 20, one connection per message) -> MTA -> smtp-sink.
For every round and message size, three runs in a rotating order, each with
a fresh sink and a fresh MTA instance in a fresh directory:

* ferrymail: relays everything to the sink (one relay route,
  ``[queue.strategy] route = "'sink'"``), fsync on (always);
* postfix:   TempPostfix(relay_to=sink), ``relayhost = [127.0.0.1]:SINK``,
  fsync on (Postfix's default), destination concurrency 20;
* direct:    smtp-source straight into smtp-sink: the ceiling.

End-to-end time = from the start of smtp-source until smtp-sink's own
counter (``smtp-sink -c``, read live) reaches warm-up + COUNT messages.
Afterwards the sink must hold exactly that many messages (no duplicates,
checked again after a second) and the MTA's queue must be empty
(Ferrymail: ``ferrymail queue list --json``; Postfix: queue files on disk).

Prints figures; it is not a test.  Needs root (Postfix's master).

    python3 bench/relay.py                       # 5 rounds, 1 KiB and 100 KiB
    python3 bench/relay.py --rounds 3 --sizes 1024 --counts 5000
    python3 bench/relay.py --only ferrymail --rounds 1 --perf-dir /tmp/prof
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.dont_write_bytecode = True          # no __pycache__ in the work tree
sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
from postfix import (TempPostfix, bench_tmpdir, free_port, fs_type,  # noqa: E402
                     postfix_version, run_smtp_source)
from ferry import TempFerrymail, ensure_binary  # noqa: E402
from sink import CountingSink, proc_cpu_seconds, wait_for_idle  # noqa: E402

KINDS = ("ferrymail", "postfix", "direct")
# Opt-in (``--only floor``): crates/ferrymail/examples/floor_relay.rs, the
# least any relay does on this path, without and with an fdatasync (group
# commit) before each 250. A measure of the machine, not a contender.
FLOOR_KINDS = ("floor", "floor-fsync", "floor-prealloc")
FLOOR_BINARY = Path(__file__).resolve().parent.parent / "target/release/examples/floor_relay"


@dataclass
class Run:
    round: int
    size: int
    kind: str
    count: int
    ok: bool = False
    accept_s: float = 0.0           # smtp-source wall clock
    e2e_s: float = 0.0              # start of smtp-source -> sink saw all
    sink_total: int | None = None   # sink counter a second after the end
    expected_total: int = 0
    queued_after: int | None = None
    cpu_s: float | None = None      # Ferrymail server CPU during the run
    idle: float = 0.0              # machine idle % just before the run
    note: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return self.count / self.e2e_s if self.ok and self.e2e_s > 0 else None

    @property
    def accept_rate(self) -> float | None:
        return self.count / self.accept_s if self.ok and self.accept_s > 0 else None


def ferry_toml(sink: tuple[str, int], concurrency: int, dest_conc: int) -> str:
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
concurrency = {concurrency}
destination.concurrency = {dest_conc}
"""


def source(port: int, n: int, args, size: int):
    # getattr: bench/suite.py reuses this module with its own option set
    return run_smtp_source(port, n, sessions=args.sessions, size=size,
                           one_msg_per_conn=True, rcpt_domain=args.rcpt_domain,
                           recipients=getattr(args, "recipients", 1))


def wait_queue_empty(count_fn, timeout: float) -> int | None:
    """Polls ``count_fn`` until it returns 0 (or timeout); the last value."""
    deadline = time.monotonic() + timeout
    n = count_fn()
    while n not in (0, None) and time.monotonic() < deadline:
        time.sleep(0.2)
        n = count_fn()
    return n


# `--perf-stat`: counted per timed message (warm-up excluded, as perf
# attaches after it). Syscalls are the ones a relayed message costs.
STAT_EVENTS = [
    "task-clock", "context-switches", "cpu-migrations",
    "syscalls:sys_enter_sendto", "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_write", "syscalls:sys_enter_writev",
    "syscalls:sys_enter_read", "syscalls:sys_enter_fdatasync",
    "syscalls:sys_enter_fsync", "syscalls:sys_enter_futex",
    "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_accept4",
    "syscalls:sys_enter_connect", "syscalls:sys_enter_close",
    "syscalls:sys_enter_pwrite64", "syscalls:sys_enter_pread64",
]


def per_message_counts(path: Path, count: int) -> str:
    """One line: each perf-stat counter divided by ``count``."""
    parts = []
    for line in path.read_text().splitlines():
        f = line.split(",")
        if len(f) < 3 or line.startswith("#"):
            continue
        try:
            value = float(f[0])
        except ValueError:
            continue
        name = f[2].replace("syscalls:sys_enter_", "")
        if name == "task-clock":           # msec
            parts.append(f"cpu {value * 1000 / count:.0f}us")
        else:
            parts.append(f"{name} {value / count:.2f}")
    return "per message: " + ", ".join(parts)


def timed(run: Run, port: int, sink: CountingSink, args, size: int,
          queue_count=None, pid: int | None = None,
          perf_out: Path | None = None, stat_out: Path | None = None) -> None:
    """Warm-up, then the timed part; fills ``run``."""
    wait_s = 120 + run.count / 20
    if args.warmup:
        w = source(port, args.warmup, args, size)
        if not w.ok:
            run.note = f"warm-up: smtp-source rc {w.returncode}: {w.stderr.strip()[-300:]}"
            return
        if not sink.wait_count(args.warmup, wait_s):
            run.note = f"warm-up: sink got {sink.count} of {args.warmup}"
            return
        if queue_count is not None:
            left = wait_queue_empty(queue_count, 30)
            if left:
                run.note = f"warm-up: {left} still queued after 30 s"
                return
    os.sync()
    run.idle = wait_for_idle(args.wait_idle, args.max_wait)
    perf = None
    if perf_out is not None and pid is not None:
        perf = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "999", "-g",
             "-p", str(pid), "-o", str(perf_out)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        time.sleep(1.0)        # let perf attach before the load starts
    if stat_out is not None and pid is not None:
        perf = subprocess.Popen(
            ["perf", "stat", "-e", ",".join(STAT_EVENTS), "-x", ",",
             "-p", str(pid), "-o", str(stat_out)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        time.sleep(1.0)
    cpu0 = proc_cpu_seconds(pid) if pid else None
    sink.expect(args.warmup + run.count)
    t0 = time.monotonic()
    r = source(port, run.count, args, size)
    run.accept_s = r.elapsed
    if not r.ok:
        run.note = f"smtp-source rc {r.returncode}: {r.stderr.strip()[-300:]}"
    reached = sink.wait(wait_s)
    cpu1 = proc_cpu_seconds(pid) if pid else None
    if perf is not None:
        perf.send_signal(2)    # SIGINT: perf writes its file and exits
        try:
            perf.wait(timeout=60)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.wait()
    if stat_out is not None and stat_out.exists():
        run.warnings.append(per_message_counts(stat_out, run.count))
    if cpu0 is not None and cpu1 is not None:
        run.cpu_s = cpu1 - cpu0
    if reached is None:
        run.note = (run.note + "; " if run.note else "") + \
            f"sink got {sink.count - args.warmup} of {run.count} within {wait_s:.0f} s"
        return
    run.e2e_s = reached - t0
    run.ok = r.ok
    # exactness: nothing more arrives (no duplicates), the queue is empty
    time.sleep(1.0)
    if queue_count is not None:
        run.queued_after = wait_queue_empty(queue_count, 10)
    run.sink_total = sink.count
    run.expected_total = args.warmup + run.count
    if run.sink_total != run.expected_total:
        run.ok = False
        run.note += f" sink total {run.sink_total} != {run.expected_total}"
    if run.queued_after not in (0, None):
        run.ok = False
        run.note += f" {run.queued_after} messages still queued"


def run_ferrymail(args, rnd: int, size: int, count: int, binary: Path) -> Run:
    run = Run(round=rnd, size=size, kind="ferrymail", count=count)
    try:
        with CountingSink() as sink:
            extra = ferry_toml(sink.address, args.concurrency, args.dest_concurrency)
            with TempFerrymail(free_port(), free_port(), extra_toml=extra,
                               binary=binary, keep=args.keep) as fm:
                perf_out = None
                if args.perf_dir:
                    perf_out = Path(args.perf_dir) / f"ferrymail-{size}-r{rnd}.perf.data"
                stat_out = None
                if args.perf_stat:
                    stat_out = Path(args.perf_stat) / f"ferrymail-{size}-r{rnd}.stat"
                timed(run, fm.port, sink, args, size, queue_count=fm.queued_count,
                      pid=fm.proc.pid, perf_out=perf_out, stat_out=stat_out)
                if perf_out is not None:
                    run.warnings.append(f"perf data: {perf_out}")
                if run.queued_after is None and run.ok:
                    run.warnings.append("`ferrymail queue list --json` gave no count")
                if not run.ok:
                    run.note += "\n--- ferrymail log tail ---\n" + fm.log_tail(8)
                if args.keep:
                    run.warnings.append(f"kept {fm.base}")
            status = getattr(fm, "exit_status", None)
            if status not in (0, None):
                run.warnings.append(f"ferrymail exit status after SIGTERM: {status}")
    except Exception as e:                               # noqa: BLE001
        run.ok = False
        run.note = f"{type(e).__name__}: {e}"
    return run


def run_postfix(args, rnd: int, size: int, count: int) -> Run:
    run = Run(round=rnd, size=size, kind="postfix", count=count)
    try:
        with CountingSink() as sink:
            with TempPostfix(free_port(), relay_to=sink.address,
                             keep=args.keep,
                             extra_main=getattr(args, "postfix_extra", None)) as pf:
                timed(run, pf.port, sink, args, size,
                      queue_count=lambda: sum(pf.queue_files().values()))
                run.warnings += pf.log_problems()[:5]
                if args.keep:
                    run.warnings.append(f"kept {pf.base}")
    except Exception as e:                               # noqa: BLE001
        run.ok = False
        run.note = f"{type(e).__name__}: {e}"
    return run


def run_direct(args, rnd: int, size: int, count: int) -> Run:
    run = Run(round=rnd, size=size, kind="direct", count=count)
    try:
        with CountingSink() as sink:
            timed(run, sink.port, sink, args, size)
    except Exception as e:                               # noqa: BLE001
        run.ok = False
        run.note = f"{type(e).__name__}: {e}"
    return run


def run_floor(args, rnd: int, size: int, count: int, kind: str) -> Run:
    run = Run(round=rnd, size=size, kind=kind, count=count)
    fsync = kind != "floor"
    journal = None
    proc = None
    try:
        with CountingSink() as sink:
            port = free_port()
            cmd = [str(FLOOR_BINARY), "--listen", f"127.0.0.1:{port}",
                   "--next-hop", f"{sink.address[0]}:{sink.address[1]}",
                   "--connections", str(args.dest_concurrency)]
            if fsync:
                journal = Path(bench_tmpdir() or "/tmp") / f"floor-{os.getpid()}-{rnd}"
                cmd += ["--fsync", str(journal)]
                if kind == "floor-prealloc":
                    cmd.append("--prealloc")
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            if proc.stdout.readline().strip() != "READY":  # after the zeros
                raise RuntimeError(f"floor_relay did not start: {proc.stderr.read()[-300:]}")
            timed(run, port, sink, args, size, pid=proc.pid)
    except Exception as e:                               # noqa: BLE001
        run.ok = False
        run.note = f"{type(e).__name__}: {e}"
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        if journal is not None:
            shutil.rmtree(journal, ignore_errors=True)
    return run


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return format(x, spec) if x is not None else "-"


def summary(runs: list[Run], sizes: list[int], kinds: list[str]) -> None:
    print()
    print("end-to-end msg/s: median (min-max) over the successful rounds")
    for size in sizes:
        med: dict[str, float] = {}
        print(f"\n  {size}-byte body")
        for kind in kinds:
            rs = [r for r in runs if r.size == size and r.kind == kind]
            rates = [r.rate for r in rs if r.rate is not None]
            acc = [r.accept_rate for r in rs if r.accept_rate is not None]
            failed = sum(1 for r in rs if r.rate is None)
            if not rates:
                print(f"    {kind:<10} no successful run ({failed} failed)")
                continue
            med[kind] = statistics.median(rates)
            mb = med[kind] * (size + 340) / 1e6
            print(f"    {kind:<10} {med[kind]:>8,.0f} msg/s ({min(rates):,.0f}-"
                  f"{max(rates):,.0f}), {mb:.1f} MB/s; accepted "
                  f"{statistics.median(acc):,.0f} msg/s; {len(rates)} ok, {failed} failed")
            cpu = [r.cpu_s / r.count * 1e6 for r in rs
                   if r.cpu_s is not None and r.ok]
            if cpu:
                print(f"    {'':<10} server CPU {statistics.median(cpu):,.0f} us per message")
        if "ferrymail" in med and "postfix" in med:
            print(f"    ratio ferrymail/postfix: {med['ferrymail'] / med['postfix']:.2f}x"
                  "   (target >= 10x)")
        if "ferrymail" in med and "direct" in med:
            print(f"    ratio ferrymail/direct:  {med['ferrymail'] / med['direct']:.2f}x"
                  "   (target >= 0.6x)")
        if "postfix" in med and "direct" in med:
            print(f"    ratio postfix/direct:    {med['postfix'] / med['direct']:.2f}x")
        for floor in FLOOR_KINDS:
            if floor in med and "direct" in med:
                print(f"    ratio {floor}/direct: {med[floor] / med['direct']:.2f}x")
            if floor in med and "ferrymail" in med:
                print(f"    ratio ferrymail/{floor}: {med['ferrymail'] / med[floor]:.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--sizes", default="1024,102400",
                    help="body sizes in bytes, comma-separated (default 1024,102400)")
    ap.add_argument("--counts", default="5000,2000",
                    help="timed messages per run for each size (default 5000,2000)")
    ap.add_argument("--sessions", type=int, default=20,
                    help="smtp-source -s (default 20)")
    ap.add_argument("--warmup", type=int, default=200,
                    help="untimed messages first, relayed and drained (default 200)")
    ap.add_argument("--only", action="append", choices=KINDS + FLOOR_KINDS,
                    help="measure only this (repeatable); floor and "
                         "floor-fsync (the least any relay does, "
                         "crates/ferrymail/examples/floor_relay.rs) run only "
                         "when named")
    ap.add_argument("--concurrency", type=int, default=20,
                    help="Ferrymail [queue.virtual.default] concurrency (default 20)")
    ap.add_argument("--dest-concurrency", type=int, default=20,
                    help="Ferrymail destination.concurrency (default 20, as "
                         "Postfix's smtp_destination_concurrency_limit)")
    ap.add_argument("--rcpt-domain", default="bench.example")
    ap.add_argument("--ferry-binary", default=None)
    ap.add_argument("--build", action="store_true",
                    help="cargo build --release first")
    ap.add_argument("--perf-dir", default=None, metavar="DIR",
                    help="record `perf record -e cpu-clock -g` of the Ferrymail "
                         "server during each timed Ferrymail run into DIR "
                         "(skews those figures: profile runs only)")
    ap.add_argument("--perf-stat", default=None, metavar="DIR",
                    help="count syscalls, context switches and CPU of the "
                         "Ferrymail server with `perf stat` during each timed "
                         "Ferrymail run (files in DIR) and print them per message")
    ap.add_argument("--wait-idle", type=float, default=85.0, metavar="PCT",
                    help="before each timed run wait until the machine is PCT%% "
                         "idle for a second (default 85; 0 = don't wait)")
    ap.add_argument("--max-wait", type=float, default=300.0,
                    help="...but at most this many seconds (default 300)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.counts.split(",")]
    if len(counts) == 1:
        counts *= len(sizes)
    if len(counts) != len(sizes):
        ap.error("--counts needs one value, or one per size")
    if os.geteuid() != 0:
        print("relay.py needs root (Postfix's master, smtp-sink -u)", file=sys.stderr)
        return 2
    kinds = [k for k in KINDS + FLOOR_KINDS
             if (k in args.only if args.only else k in KINDS)]
    if any(k in FLOOR_KINDS for k in kinds) and (args.build or not FLOOR_BINARY.exists()):
        subprocess.run(["cargo", "build", "--release", "-p", "ferrymail",
                        "--example", "floor_relay"],
                       cwd=FLOOR_BINARY.parent.parent.parent.parent, check=True,
                       stdin=subprocess.DEVNULL)
    binary = None
    if "ferrymail" in kinds:
        binary = ensure_binary(args.ferry_binary, force_build=args.build)
    if args.perf_dir:
        if not shutil.which("perf"):
            print("--perf-dir: perf not found", file=sys.stderr)
            return 2
        os.makedirs(args.perf_dir, exist_ok=True)
    if args.perf_stat:
        if not shutil.which("perf"):
            print("--perf-stat: perf not found", file=sys.stderr)
            return 2
        os.makedirs(args.perf_stat, exist_ok=True)

    scratch = bench_tmpdir() or os.environ.get("TMPDIR") or "/tmp"
    print(f"end-to-end relay throughput -- {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"  postfix {postfix_version()}; ferrymail {binary or '-'}")
    print(f"  {args.rounds} rounds; sizes {sizes} with {counts} msgs "
          f"(+{args.warmup} warm-up); smtp-source -s {args.sessions}, one "
          f"message per connection; smtp-sink -c counts")
    print(f"  ferrymail: [queue.virtual.default] concurrency = {args.concurrency}, "
          f"destination.concurrency = {args.dest_concurrency}")
    print(f"  {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; scratch dirs "
          f"in {scratch} ({fs_type(scratch)})")
    print(flush=True)

    hdr = (f"{'rnd':>3} {'size':>6}  {'run':<10} {'msgs':>5} {'accept s':>8} "
           f"{'e2e s':>7} {'msg/s':>7} {'MB/s':>6} {'idle%':>5}  check")
    print(hdr)
    print("-" * len(hdr))
    runs: list[Run] = []
    for rnd in range(1, args.rounds + 1):
        for size, count in zip(sizes, counts):
            k = (rnd - 1) % len(kinds)
            order = kinds[k:] + kinds[:k]
            for kind in order:
                if kind == "ferrymail":
                    run = run_ferrymail(args, rnd, size, count, binary)
                elif kind == "postfix":
                    run = run_postfix(args, rnd, size, count)
                elif kind in FLOOR_KINDS:
                    run = run_floor(args, rnd, size, count, kind)
                else:
                    run = run_direct(args, rnd, size, count)
                runs.append(run)
                mbs = run.rate * (size + 340) / 1e6 if run.rate else None
                check = ""
                if run.sink_total is not None:
                    check = f"sink {run.sink_total}"
                if run.queued_after is not None:
                    check += f", queue {run.queued_after}"
                if run.cpu_s is not None:
                    check += f", cpu {run.cpu_s:.2f}s"
                line = (f"{rnd:>3} {size:>6}  {kind:<10} {count:>5} "
                        f"{fmt(run.accept_s or None, '.2f'):>8} "
                        f"{fmt(run.e2e_s or None, '.2f'):>7} {fmt(run.rate):>7} "
                        f"{fmt(mbs, '.1f'):>6} {run.idle:>5.0f}  {check}")
                if not run.ok:
                    first = run.note.strip().splitlines()[0][:200] if run.note.strip() else ""
                    line += f"  FAILED {first}"
                print(line, flush=True)
                if not run.ok:
                    for extra in run.note.strip().splitlines()[1:10]:
                        print(f"{'':>8}{extra}")
                for w in run.warnings:
                    print(f"{'':>8}note: {w[:200]}")
    summary(runs, sizes, kinds)
    busy = [r for r in runs if r.idle < args.wait_idle]
    if busy:
        print(f"\n{len(busy)} of {len(runs)} runs started on a busy machine "
              f"(< {args.wait_idle:.0f}% idle): compare with care")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 1 if any(not r.ok for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
