#!/usr/bin/env python3
"""Issue 7's benchmark suite: every scenario, Postfix 3.7 and Ferrymail, one command.

    python3 bench/suite.py                      # everything, full size (long)
    python3 bench/suite.py --quick              # smoke run: small counts, 2 rounds
    python3 bench/suite.py --scenarios 1,2,4,5 --json /tmp/suite.json
    python3 bench/suite.py --ferry-binary /path/to/ferrymail

Scenarios (details, and how each MTA is set up: bench/README.md):

1. accept only, delivery held: 1 KiB, smtp-source -s 20, one connection per
   message; and again with -d (many messages per connection);
2. end-to-end relay to smtp-sink, 1 KiB and 100 KiB, and the raw
   smtp-source -> smtp-sink hop as the ceiling;
3. Ferrymail with 1,000,000 deferred recipients vs an empty Ferrymail
   (bench/scale.py; Postfix has no comparable figure);
4. isolation: the fast destination's throughput with a tarpit destination
   (smtp-sink -W rcpt:5) loaded in the same MTA, vs the same MTA config
   without the tarpit load, per MTA;
5. fan-out (100 recipients per message) and 10 MiB messages.

Every scenario runs both MTAs in the same run, several rounds, alternating
the order; every timed run gets a fresh instance in a fresh directory, waits
for the machine to be idle first and prints the idle %. At the end: one
summary table (median, min-max, ratio, target, met/missed); ``--json FILE``
writes it with every run.  Prints figures; it is not a test.  Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.dont_write_bytecode = True          # no __pycache__ in the work tree
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH / "lib"))
sys.path.insert(0, str(BENCH))
from postfix import (SmtpSink, TempPostfix, bench_tmpdir, free_port,  # noqa: E402
                     fs_type, postfix_version, run_smtp_source)
from ferry import TempFerrymail, ensure_binary  # noqa: E402
from sink import CountingSink, wait_for_idle  # noqa: E402
import accept  # noqa: E402
import relay  # noqa: E402

MTAS = ("postfix", "ferrymail")
ALL_SCENARIOS = ("1", "2", "3", "4", "5")
# Ferrymail's default message size limit (crates/0-config, 50 MiB); Postfix's
# default (10,240,000 bytes) is below a 10 MiB message, so it gets the same.
MESSAGE_SIZE_LIMIT = 50 << 20
HEADER_BYTES = 340            # smtp-source's headers, roughly (as relay.py)


def now_s() -> str:
    return time.strftime("%H:%M:%S")


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------

@dataclass
class Sample:
    """One timed run."""
    scenario: str           # e.g. "1 accept", "2 relay 1 KiB"
    mta: str                # postfix | ferrymail | direct
    round: int
    value: float | None     # the scenario's main figure (None = failed)
    unit: str
    idle: float | None      # machine idle % in the second before the run
    ok: bool
    extra: dict = field(default_factory=dict)
    note: str = ""


class Results:
    def __init__(self, wait_idle: float):
        self.samples: list[Sample] = []
        self.rows: list[dict] = []        # the summary table
        self.problems: list[str] = []
        self.wait_idle = wait_idle

    def add(self, s: Sample) -> None:
        self.samples.append(s)
        val = f"{s.value:,.1f}" if s.value is not None and s.value < 100 \
            else (f"{s.value:,.0f}" if s.value is not None else "-")
        idle = f"{s.idle:.0f}%" if s.idle is not None else "-"
        busy = " BUSY" if s.idle is not None and s.idle < self.wait_idle else ""
        extra = "  ".join(f"{k} {fmt_extra(v)}" for k, v in s.extra.items())
        line = (f"[{now_s()}] {s.scenario:<18} r{s.round} {s.mta:<9} "
                f"{val:>9} {s.unit:<7} idle {idle:>4}{busy}  {extra}")
        if not s.ok:
            first = s.note.strip().splitlines()[0][:240] if s.note.strip() else ""
            line += f"  FAILED {first}"
            self.problems.append(f"{s.scenario} round {s.round} {s.mta}: "
                                 f"{s.note.strip()[:400]}")
        print(line, flush=True)
        if not s.ok:
            for extra_line in s.note.strip().splitlines()[1:10]:
                print(f"{'':>12}{extra_line}")

    def values(self, scenario: str, mta: str, key: str | None = None) -> list[float]:
        out = []
        for s in self.samples:
            if s.scenario == scenario and s.mta == mta and s.ok:
                v = s.value if key is None else s.extra.get(key)
                if v is not None:
                    out.append(v)
        return out

    def median(self, scenario: str, mta: str, key: str | None = None):
        v = self.values(scenario, mta, key)
        return (statistics.median(v), min(v), max(v), len(v)) if v else None

    def print_medians(self, scenario: str, mtas, unit: str,
                      key: str | None = None) -> None:
        for mta in mtas:
            m = self.median(scenario, mta, key)
            n_all = sum(1 for s in self.samples
                        if s.scenario == scenario and s.mta == mta)
            if m is None:
                print(f"    median {mta:<9} -  (no successful run of {n_all})")
            else:
                print(f"    median {mta:<9} {fmt_num(m[0])} {unit} "
                      f"({fmt_num(m[1])}-{fmt_num(m[2])}, {m[3]} of {n_all} ok)")

    def row(self, scenario: str, postfix: str, ferrymail: str, ratio: float | None,
            target: str, met: bool | None, note: str = "",
            ratio_text: str | None = None) -> None:
        self.rows.append({
            "scenario": scenario, "postfix": postfix, "ferrymail": ferrymail,
            "ratio": ratio, "ratio_text": ratio_text if ratio_text is not None
            else (f"{ratio:.2f}x" if ratio is not None else "-"),
            "target": target,
            "result": "-" if met is None else ("met" if met else "MISSED"),
            "note": note})


def fmt_num(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_extra(v) -> str:
    if isinstance(v, float):
        return fmt_num(v)
    return str(v)


def med_text(m, unit: str = "") -> str:
    if m is None:
        return "failed"
    u = f" {unit}" if unit else ""
    return f"{fmt_num(m[0])}{u} ({fmt_num(m[1])}-{fmt_num(m[2])})"


def order_for(rnd: int, kinds: list[str]) -> list[str]:
    """Rotates the order of the runs from round to round."""
    k = (rnd - 1) % len(kinds)
    return kinds[k:] + kinds[:k]


def header(title: str) -> None:
    print(f"\n=== {title} -- {time.strftime('%Y-%m-%d %H:%M:%S')} "
          f"(load {os.getloadavg()[0]:.2f}) ===", flush=True)


# --------------------------------------------------------------------------
# counting delivered recipients in a log file (scenario 5's fan-out)
# --------------------------------------------------------------------------

class LogCounter:
    """Tails a log file in a thread and counts lines matching ``good`` (and
    ``bad``).  ``expect(n)`` / ``wait(timeout)`` as CountingSink: the
    monotonic time at which the count first reached ``n`` (up to POLL_S
    late).  Used where smtp-sink's message counter cannot say when every
    recipient is delivered: the MTAs may split 100 recipients into several
    transactions.  Postfix: ``status=sent`` lines of its maillog; Ferrymail:
    ``"outcome":"delivered"`` lines of its delivery log (JSON lines)."""

    POLL_S = 0.01

    def __init__(self, path: Path, good: bytes, bad: bytes):
        self.path = path
        self.good = re.compile(good)
        self.bad = re.compile(bad)
        self.count = 0
        self.bad_count = 0
        self.bad_lines: list[str] = []
        self._target: int | None = None
        self._reached_at: float | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "LogCounter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        pos, tail, f = 0, b"", None
        while not self._stop.is_set():
            if f is None:
                try:
                    f = open(self.path, "rb")
                except OSError:
                    time.sleep(self.POLL_S)
                    continue
            f.seek(pos)
            chunk = f.read()
            now = time.monotonic()
            if chunk:
                pos += len(chunk)
                tail += chunk
                end = tail.rfind(b"\n")
                if end >= 0:
                    lines, tail = tail[:end + 1], tail[end + 1:]
                    n = len(self.good.findall(lines))
                    bad = [m.group(0) for m in re.finditer(
                        rb"[^\n]*(?:" + self.bad.pattern + rb")[^\n]*", lines)]
                    with self._cond:
                        self.count += n
                        if bad:
                            self.bad_count += len(bad)
                            self.bad_lines += [b.decode("utf-8", "replace")[:300]
                                               for b in bad[:5]]
                        if (self._target is not None and self._reached_at is None
                                and self.count >= self._target):
                            self._reached_at = now
                        self._cond.notify_all()
            time.sleep(self.POLL_S)
        if f is not None:
            f.close()

    def expect(self, n: int) -> None:
        with self._cond:
            self._target = n
            self._reached_at = time.monotonic() if self.count >= n else None

    def wait(self, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._reached_at is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            return self._reached_at

    def wait_count(self, n: int, timeout: float) -> bool:
        self.expect(n)
        return self.wait(timeout) is not None


POSTFIX_SENT = rb"status=sent"
POSTFIX_NOT_SENT = rb"status=(?:deferred|bounced|undeliverable)"
FERRY_SENT = rb'"outcome":"delivered"'
FERRY_NOT_SENT = rb'"outcome":"(?:transient|permanent)"'


# --------------------------------------------------------------------------
# scenario 1: accept only
# --------------------------------------------------------------------------

def scenario_accept(args, binary, res: Results, many: bool) -> str:
    name = "1 accept -d" if many else "1 accept"
    count = args.accept_d_count if many else args.accept_count
    header(f"scenario {name}: accept only, delivery held, 1 KiB, smtp-source "
           f"-s {args.sessions}{' -d' if many else ''}, {count} msgs "
           f"(+{args.warmup} warm-up), {args.rounds} rounds")
    ns = argparse.Namespace(
        count=count, warmup=args.warmup, sessions=args.sessions,
        size=1024, rcpt_domain="bench.example", keep=args.keep, ferry_extra=None,
        many_per_conn=many, wait_idle=args.wait_idle, max_wait=args.max_wait)
    for rnd in range(1, args.rounds + 1):
        for mta in order_for(rnd, list(MTAS)):
            run = accept.run_postfix(ns, rnd) if mta == "postfix" \
                else accept.run_ferrymail(ns, rnd, binary)
            ok = run.ok and (run.queued is None or run.queued == run.expected_queued)
            note = run.note
            if run.ok and not ok:
                note = f"queue holds {run.queued}, expected {run.expected_queued}"
            extra = {"s": round(run.seconds, 2),
                     "queued": run.queued if run.queued is not None else "n/a"}
            res.add(Sample(name, mta, rnd, run.rate if ok else None, "msg/s",
                           run.idle, ok, extra, note))
            for w in run.warnings[:3]:
                print(f"{'':>12}note: {w[:200]}")
    res.print_medians(name, MTAS, "msg/s")
    return name


# --------------------------------------------------------------------------
# scenario 2 (and 5's large messages): relay through to smtp-sink
# --------------------------------------------------------------------------

def relay_ns(args, warmup: int, postfix_extra: dict | None = None):
    return argparse.Namespace(
        warmup=warmup, sessions=args.sessions, rcpt_domain="bench.example",
        wait_idle=args.wait_idle, max_wait=args.max_wait,
        concurrency=args.concurrency, dest_concurrency=args.dest_concurrency,
        keep=args.keep, perf_dir=None, perf_stat=None, postfix_extra=postfix_extra)


def relay_runs(name: str, args, binary, res: Results, size: int, count: int,
               ns, kinds: list[str]) -> None:
    for rnd in range(1, args.rounds + 1):
        for kind in order_for(rnd, kinds):
            if kind == "ferrymail":
                run = relay.run_ferrymail(ns, rnd, size, count, binary)
            elif kind == "postfix":
                run = relay.run_postfix(ns, rnd, size, count)
            else:
                run = relay.run_direct(ns, rnd, size, count)
            mbs = run.rate * (size + HEADER_BYTES) / 1e6 if run.rate else None
            extra = {"e2e_s": round(run.e2e_s, 2), "accept_s": round(run.accept_s, 2),
                     "MB/s": mbs}
            if run.cpu_s is not None and run.count:
                extra["cpu_us/msg"] = round(run.cpu_s / run.count * 1e6)
            if run.sink_total is not None:
                extra["sink"] = run.sink_total
            if run.queued_after is not None:
                extra["queued_after"] = run.queued_after
            res.add(Sample(name, kind, rnd, run.rate, "msg/s", run.idle, run.ok,
                           extra, run.note))
            for w in run.warnings[:3]:
                print(f"{'':>12}note: {w[:200]}")


def scenario_relay(args, binary, res: Results) -> list[str]:
    names = []
    for size, count, label in ((1024, args.relay_count_1k, "1 KiB"),
                               (102400, args.relay_count_100k, "100 KiB")):
        name = f"2 relay {label}"
        header(f"scenario {name}: smtp-source -s {args.sessions} -l {size} -m {count} "
               f"(+{args.warmup} warm-up) -> MTA -> smtp-sink, and -> smtp-sink "
               f"directly; {args.rounds} rounds")
        relay_runs(name, args, binary, res, size, count, relay_ns(args, args.warmup),
                   ["postfix", "ferrymail", "direct"])
        res.print_medians(name, ["postfix", "ferrymail", "direct"], "msg/s")
        names.append(name)
    return names


def scenario_large(args, binary, res: Results) -> str:
    size = args.large_size
    name = f"5 {size / 1048576:g} MiB msgs"
    header(f"scenario {name}: smtp-source -s {args.large_sessions} -l {size} "
           f"-m {args.large_count} (+{args.large_warmup} warm-up) -> MTA -> "
           f"smtp-sink; message_size_limit {MESSAGE_SIZE_LIMIT} in both; "
           f"{args.rounds} rounds")
    ns = relay_ns(args, args.large_warmup,
                  {"message_size_limit": str(MESSAGE_SIZE_LIMIT)})
    ns.sessions = args.large_sessions
    relay_runs(name, args, binary, res, size, args.large_count, ns,
               ["postfix", "ferrymail", "direct"])
    res.print_medians(name, ["postfix", "ferrymail", "direct"], "MB/s", "MB/s")
    return name


# --------------------------------------------------------------------------
# scenario 5: fan-out, 100 recipients per message
# --------------------------------------------------------------------------

FAN_DOMAIN = "fan.example"


def fanout_run(args, mta: str, rnd: int, binary, name: str) -> Sample:
    n, r = args.fanout_count, args.fanout_rcpts
    warm = args.fanout_warmup
    sample = Sample(name, mta, rnd, None, "rcpt/s", None, False)
    scratch = Path(tempfile.mkdtemp(prefix="ferry-suite-fanout-", dir=bench_tmpdir()))
    try:
        with CountingSink() as sink:
            if mta == "postfix":
                # recipients per delivery: 100 in both (Postfix's default is
                # 50; Ferrymail puts at most 100 recipients in one job)
                ctx = TempPostfix(free_port(), relay_to=sink.address, keep=args.keep,
                                  extra_main={"smtp_destination_recipient_limit": str(r)})
            else:
                dlog = scratch / "delivery.jsonl"
                toml = relay.ferry_toml(sink.address, args.concurrency,
                                        args.dest_concurrency)
                toml += f'\n[queue.outbound]\ndelivery-log = "{dlog}"\n'
                ctx = TempFerrymail(free_port(), free_port(), extra_toml=toml,
                                    binary=binary, keep=args.keep)
            with ctx as server:
                if mta == "postfix":
                    counter = LogCounter(server.log_file, POSTFIX_SENT, POSTFIX_NOT_SENT)
                    queued = lambda: sum(server.queue_files().values())  # noqa: E731
                else:
                    counter = LogCounter(dlog, FERRY_SENT, FERRY_NOT_SENT)
                    queued = server.queued_count
                with counter:
                    def send(k):
                        return run_smtp_source(server.port, k, sessions=args.sessions,
                                               size=1024, recipients=r,
                                               rcpt_domain=FAN_DOMAIN,
                                               timeout=120 + k * r / 50)
                    if warm:
                        w = send(warm)
                        if not w.ok or not counter.wait_count(warm * r, 120):
                            sample.note = (f"warm-up: smtp-source rc {w.returncode}, "
                                           f"{counter.count} of {warm * r} delivered "
                                           f"{w.stderr.strip()[-200:]}")
                            return sample
                    os.sync()
                    sample.idle = wait_for_idle(args.wait_idle, args.max_wait)
                    expected = (warm + n) * r
                    sink0 = sink.count
                    counter.expect(expected)
                    t0 = time.monotonic()
                    src = send(n)
                    reached = counter.wait(120 + n * r / 50)
                    if reached is None:
                        sample.note = (f"{counter.count - warm * r} of {n * r} recipients "
                                       f"delivered in time; smtp-source rc {src.returncode}")
                        return sample
                    e2e = reached - t0
                    time.sleep(1.0)
                    left = relay.wait_queue_empty(queued, 10)
                    tx = sink.count - sink0
                    sample.extra = {"msg/s": n / e2e, "e2e_s": round(e2e, 2),
                                    "accept_s": round(src.elapsed, 2),
                                    "sink_transactions": tx,
                                    "queued_after": left if left is not None else "n/a"}
                    sample.value = n * r / e2e
                    problems = []
                    if not src.ok:
                        problems.append(f"smtp-source rc {src.returncode}: "
                                        f"{src.stderr.strip()[-200:]}")
                    if counter.count != expected:
                        problems.append(f"{counter.count} deliveries logged, "
                                        f"expected {expected}")
                    if counter.bad_count:
                        problems.append(f"{counter.bad_count} failed attempts: "
                                        f"{counter.bad_lines[:2]}")
                    if left not in (0, None):
                        problems.append(f"{left} still queued")
                    sample.ok = not problems
                    sample.note = "; ".join(problems)
                    if not sample.ok:
                        sample.value = None
                        if mta == "ferrymail":
                            sample.note += "\n--- ferrymail log ---\n" + server.log_tail(6)
    except Exception as e:                               # noqa: BLE001
        sample.note = f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return sample


def scenario_fanout(args, res: Results, binary) -> str:
    name = f"5 fan-out x{args.fanout_rcpts}"
    header(f"scenario {name}: smtp-source -s {args.sessions} -r {args.fanout_rcpts} "
           f"-m {args.fanout_count} (+{args.fanout_warmup} warm-up), 1 KiB -> MTA -> "
           f"smtp-sink; done when the MTA's log shows every recipient delivered; "
           f"{args.rounds} rounds")
    for rnd in range(1, args.rounds + 1):
        for mta in order_for(rnd, list(MTAS)):
            res.add(fanout_run(args, mta, rnd, binary, name))
    res.print_medians(name, MTAS, "rcpt/s")
    return name


# --------------------------------------------------------------------------
# scenario 4: isolation
# --------------------------------------------------------------------------

FAST_DOMAIN = "fast.example"
SLOW_DOMAIN = "slow.example"
FAST_HOST = "127.0.0.1"
TARPIT_HOST = "127.0.0.2"       # another address: another destination for both MTAs


def tcp_established_to(port: int, host: str) -> int:
    """Established TCP connections whose server side is host:port (from
    /proc/net/tcp): deliveries in flight to a sink, whoever makes them."""
    a = host.split(".")
    want = "".join(f"{int(x):02X}" for x in reversed(a)) + f":{port:04X}"
    n = 0
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[1] == want and parts[3] == "01":
                    n += 1
    except OSError:
        pass
    return n


def iso_ferry_toml(fast: tuple[str, int], tarpit: tuple[str, int],
                   concurrency: int, dest: int) -> str:
    return f"""
[queue.route.fast]
type = "relay"
address = "{fast[0]}"
port = {fast[1]}
protocol = "smtp"
tls.mode = "disable"

[queue.route.tarpit]
type = "relay"
address = "{tarpit[0]}"
port = {tarpit[1]}
protocol = "smtp"
tls.mode = "disable"

[queue.strategy]
route = [ {{ if = "rcpt_domain == '{SLOW_DOMAIN}'", then = "'tarpit'" }},
          {{ else = "'fast'" }} ]

[queue.virtual.default]
concurrency = {concurrency}
destination.concurrency = {dest}
"""


def iso_postfix_main(fast: tuple[str, int], tarpit: tuple[str, int],
                     dest: int) -> dict[str, str]:
    return {
        # inline: table (Postfix >= 3.0): no map file to build
        "transport_maps": (f"inline:{{ {FAST_DOMAIN}=smtp:[{fast[0]}]:{fast[1]}, "
                           f"{SLOW_DOMAIN}=smtp:[{tarpit[0]}]:{tarpit[1]} }}"),
        "smtp_tls_security_level": "none",
        "smtp_dns_support_level": "disabled",
        "smtp_address_preference": "ipv4",
        "smtp_destination_concurrency_limit": str(dest),
    }


class Stream:
    """A steady trickle of mail for the tarpit destination: every
    ``interval`` s, smtp-source sends ``batch`` messages over one session."""

    def __init__(self, port: int, batch: int, interval: float):
        self.port, self.batch, self.interval = port, batch, interval
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            r = run_smtp_source(self.port, self.batch, sessions=1, size=1024,
                                rcpt_local="t", rcpt_domain=SLOW_DOMAIN, timeout=30)
            if r.ok:
                self.sent += self.batch
            else:
                self.failed += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "Stream":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=40)


def iso_batch(port: int, sink: CountingSink, n: int, sessions: int) -> tuple[float | None, str]:
    """n messages for the fast destination; seconds from the start of
    smtp-source until the fast sink has them all (None on failure)."""
    base = sink.count
    sink.expect(base + n)
    t0 = time.monotonic()
    r = run_smtp_source(port, n, sessions=sessions, size=1024, rcpt_domain=FAST_DOMAIN)
    reached = sink.wait(120 + n / 20)
    note = "" if r.ok else f"smtp-source rc {r.returncode}: {r.stderr.strip()[-200:]}"
    if reached is None:
        return None, (note + f" fast sink got {sink.count - base} of {n}").strip()
    return (reached - t0 if r.ok else None), note


def isolation_round(args, mta: str, rnd: int, binary, name: str) -> list[Sample]:
    """Two instances of one MTA with the same config: A ("alone") gets only
    fast mail, B ("loaded") also has its tarpit destination saturated.
    Timed fast batches alternate between them."""
    dest, conc = args.dest_concurrency, args.iso_concurrency
    out: list[Sample] = []
    try:
        with SmtpSink(host=TARPIT_HOST, extra_args=[
                "-p", "-W", f"rcpt:{args.tarpit_delay}"]) as tarpit, \
                CountingSink() as fast_a, CountingSink() as fast_b:

            def make(fast):
                if mta == "postfix":
                    return TempPostfix(free_port(), keep=args.keep,
                                       extra_main=iso_postfix_main(
                                           fast.address, tarpit.address, dest))
                return TempFerrymail(free_port(), free_port(), binary=binary,
                                     keep=args.keep, extra_toml=iso_ferry_toml(
                                         fast.address, tarpit.address, conc, dest))
            with make(fast_a) as A, make(fast_b) as B:
                for inst, sink in ((A, fast_a), (B, fast_b)):
                    t, note = iso_batch(inst.port, sink, args.warmup, args.sessions)
                    if t is None:
                        raise RuntimeError(f"warm-up: {note}")
                # saturate B's tarpit, and keep mail for it coming
                r = run_smtp_source(B.port, args.iso_backlog, sessions=10, size=1024,
                                    rcpt_local="t", rcpt_domain=SLOW_DOMAIN)
                if not r.ok:
                    raise RuntimeError(f"tarpit backlog: smtp-source rc "
                                       f"{r.returncode}: {r.stderr.strip()[-200:]}")
                with Stream(B.port, args.iso_stream_batch, 0.5) as stream:
                    t0 = time.monotonic()
                    while (time.monotonic() - t0 < args.iso_settle
                           and tcp_established_to(tarpit.port, TARPIT_HOST) < dest):
                        time.sleep(0.5)
                    settle = time.monotonic() - t0
                    inflight0 = tcp_established_to(tarpit.port, TARPIT_HOST)
                    print(f"{'':>12}{mta}: tarpit has {inflight0} deliveries in "
                          f"flight after {settle:.0f} s (limit {dest})", flush=True)
                    for side in (("alone", "loaded") if rnd % 2 else ("loaded", "alone")):
                        inst, sink = (A, fast_a) if side == "alone" else (B, fast_b)
                        os.sync()
                        idle = wait_for_idle(args.wait_idle, args.max_wait)
                        infl = tcp_established_to(tarpit.port, TARPIT_HOST)
                        secs, note = iso_batch(inst.port, sink, args.iso_count,
                                               args.sessions)
                        infl_end = tcp_established_to(tarpit.port, TARPIT_HOST)
                        rate = args.iso_count / secs if secs else None
                        out.append(Sample(name, f"{mta}", rnd, rate, "msg/s", idle,
                                          rate is not None,
                                          {"side": side, "s": round(secs or 0, 2),
                                           "tarpit_conns": f"{infl}->{infl_end}"},
                                          note))
                    out_extra = (f"stream to the tarpit: {stream.sent} msgs sent, "
                                 f"{stream.failed} batches failed")
                print(f"{'':>12}{mta}: {out_extra}", flush=True)
                if stream.failed:
                    for s in out:
                        s.note += f" ({out_extra})"
    except Exception as e:                               # noqa: BLE001
        out.append(Sample(name, mta, rnd, None, "msg/s", None, False,
                          {"side": "?"}, f"{type(e).__name__}: {e}"))
    return out


def scenario_isolation(args, binary, res: Results) -> str:
    name = "4 isolation"
    header(f"scenario {name}: fast destination (smtp-sink) throughput, "
           f"{args.iso_count} msgs smtp-source -s {args.sessions}, alone vs with a "
           f"tarpit destination (smtp-sink -p -W rcpt:{args.tarpit_delay}, "
           f"{args.iso_backlog} msgs backlog + a steady stream) in the same MTA; "
           f"per-destination concurrency {args.dest_concurrency} in both, total "
           f"{args.iso_concurrency} (Postfix: smtp maxproc default 100); "
           f"{args.rounds} rounds")
    for rnd in range(1, args.rounds + 1):
        for mta in order_for(rnd, list(MTAS)):
            for s in isolation_round(args, mta, rnd, binary, name):
                # keep alone/loaded apart in the sample list
                s.mta = f"{mta}/{s.extra.get('side', '?')}"
                res.add(s)
    for mta in MTAS:
        res.print_medians(name, [f"{mta}/alone", f"{mta}/loaded"], "msg/s")
    return name


# --------------------------------------------------------------------------
# scenario 3: the million-recipient queue (bench/scale.py)
# --------------------------------------------------------------------------

def scenario_scale(args, binary, res: Results) -> dict | None:
    header(f"scenario 3: Ferrymail with {args.scale_recipients:,} deferred recipients "
           f"vs an empty Ferrymail (bench/scale.py). Postfix: no comparable figure "
           f"(not measured)")
    fd, out = tempfile.mkstemp(prefix="ferry-suite-scale-", suffix=".json")
    os.close(fd)
    argv = [sys.executable, str(BENCH / "scale.py"),
            "--recipients", str(args.scale_recipients),
            "--rounds", str(args.scale_rounds), "--count", str(args.scale_count),
            "--probe-count", str(args.scale_probe_count),
            "--wait-idle", str(args.wait_idle), "--max-wait", str(args.max_wait),
            "--ferry-binary", str(binary), "--json", out]
    if args.keep:
        argv.append("--keep")
    print("  " + " ".join(argv), flush=True)
    try:
        cp = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=4 * 3600)
        doc = json.loads(Path(out).read_text()) if Path(out).stat().st_size else None
    except (subprocess.TimeoutExpired, OSError, json.JSONDecodeError) as e:
        res.problems.append(f"scenario 3: {type(e).__name__}: {e}")
        return None
    finally:
        try:
            os.unlink(out)
        except OSError:
            pass
    if cp.returncode != 0:
        res.problems.append(f"scenario 3: scale.py exited {cp.returncode} "
                            "(see its 'problems' above)")
    if doc:
        for f in doc.get("failures", []):
            res.problems.append(f"scenario 3: {f}")
        doc["exit_status"] = cp.returncode
    return doc


# --------------------------------------------------------------------------
# the summary
# --------------------------------------------------------------------------

def ratio_row(res: Results, name: str, target: float, unit: str = "msg/s",
              key: str | None = None, label: str | None = None) -> None:
    p = res.median(name, "postfix", key)
    f = res.median(name, "ferrymail", key)
    ratio = f[0] / p[0] if p and f else None
    res.row(label or name, med_text(p, unit), med_text(f, unit), ratio,
            f">= {target:g}x Postfix" if target else "-",
            (ratio >= target) if (ratio is not None and target) else None)


def hop_row(res: Results, name: str, target: float) -> None:
    d = res.median(name, "direct")
    f = res.median(name, "ferrymail")
    ratio = f[0] / d[0] if d and f else None
    res.row(f"{name}: vs raw hop", "raw hop " + med_text(d, "msg/s"),
            med_text(f, "msg/s"), ratio, f">= {target:g}x raw hop",
            (ratio >= target) if ratio is not None else None)


def build_summary(res: Results, done: dict, args) -> None:
    for name in done.get("1", []):
        ratio_row(res, name, 10)
    for name in done.get("2", []):
        ratio_row(res, name, 10)
        hop_row(res, name, 0.6)
    doc = done.get("3")
    if "3" in done:
        if not doc:
            res.row("3 million-recipient queue", "n/a", "failed", None, "-", False)
        else:
            n = doc["recipients"]
            scaled = n < 1_000_000
            tag = f"3 ({n:,} rcpts)"
            note = (f"only {n:,} recipients: not the target's scale" if scaled else "")
            na = "n/a (Ferrymail only)"

            def met(ok):
                return None if ok is None else ok

            rss_vals = [doc.get(k) for k in ("rss_filled_mib", "rss_restart_mib",
                                             "rss_end_mib") if doc.get(k) is not None]
            rss_mb = max(rss_vals) * 1.048576 if rss_vals else None
            res.row(f"{tag} RSS, largest of filled/restart/end", na,
                    f"{rss_mb:,.0f} MB" if rss_mb else "-", None, "<= 256 MB",
                    met(rss_mb <= 256 if rss_mb else None), note)
            res.row(f"{tag} bytes per entry (after restart)", na,
                    f"{doc.get('bytes_per_rcpt_restart', 0):,.0f} B", None, "-", None)
            for key, label in (("restart_accepting_s", "restart -> accepting"),
                               ("restart_recovered_s", "restart -> queue recovered")):
                v = doc.get(key)
                res.row(f"{tag} {label}", na, f"{v:.2f} s" if v is not None else "never",
                        None, "<= 2 s", met(v <= 2 if v is not None else False), note)
            fresh = doc.get("fresh", {})
            e, l = fresh.get("E"), fresh.get("L")
            if e and l:
                r = l["rate"] / e["rate"]
                res.row(f"{tag} fresh throughput loaded/empty", na,
                        f"{l['rate']:,.0f} vs {e['rate']:,.0f} msg/s", r,
                        ">= 0.90x empty", r >= 0.9, note)
                r = l["e2e_p99_ms"] / e["e2e_p99_ms"]
                res.row(f"{tag} fresh p99 latency loaded/empty", na,
                        f"{l['e2e_p99_ms']:.1f} vs {e['e2e_p99_ms']:.1f} ms", r,
                        "<= 2x empty", r <= 2, note)
            else:
                res.row(f"{tag} fresh mail", na, "failed", None, "-", False)
    if "4" in done:
        name = done["4"]
        cells, ratios = {}, {}
        for mta in MTAS:
            a = res.median(name, f"{mta}/alone")
            b = res.median(name, f"{mta}/loaded")
            ratios[mta] = b[0] / a[0] if a and b else None
            cells[mta] = (f"{ratios[mta]:.2f}x ({fmt_num(b[0])} vs {fmt_num(a[0])} msg/s)"
                          if ratios[mta] is not None else "failed")
        rf = ratios["ferrymail"]
        res.row("4 isolation: loaded/alone", cells["postfix"], cells["ferrymail"],
                None, ">= 0.90x alone", (rf >= 0.9) if rf is not None else None,
                ratio_text="-")
    for name in done.get("5", []):
        if "fan-out" in name:
            ratio_row(res, name, 0, "rcpt/s")
        else:
            ratio_row(res, name, 0, "MB/s", key="MB/s", label=f"{name} (MB/s)")


def print_summary(res: Results) -> None:
    cols = ["scenario", "postfix", "ferrymail", "ratio_text", "target", "result"]
    heads = ["scenario", "Postfix", "Ferrymail", "ratio", "target", "met/missed"]
    widths = [max(len(h), *(len(str(r[c])) for r in res.rows)) if res.rows else len(h)
              for c, h in zip(cols, heads)]
    line = "  ".join(h.ljust(w) for h, w in zip(heads, widths))
    print(line)
    print("-" * len(line))
    for r in res.rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
        if r.get("note"):
            print(f"    ({r['note']})")


# --------------------------------------------------------------------------

# Timed runs should last a second or more: the fast destination in
# scenario 4 ran 1,000 messages in 0.2 s, and 10 x 10 MiB took 0.4 s, in the
# first quick runs; such runs mostly measure start-up and the 2 ms counters.
QUICK = dict(rounds=2, warmup=50, accept_count=1000, accept_d_count=5000,
             relay_count_1k=1000,
             relay_count_100k=300, scale_recipients=50_000, scale_rounds=1,
             scale_count=1000, scale_probe_count=200, iso_count=2000, iso_backlog=100,
             iso_settle=40, fanout_count=50, fanout_warmup=2, large_count=20,
             large_warmup=1)
FULL = dict(rounds=5, warmup=200, accept_count=5000, accept_d_count=20000,
            relay_count_1k=5000,
            relay_count_100k=2000, scale_recipients=1_000_000, scale_rounds=3,
            scale_count=5000, scale_probe_count=1000, iso_count=5000, iso_backlog=200,
            iso_settle=60, fanout_count=300, fanout_warmup=5, large_count=50,
            large_warmup=2)


def git_describe() -> str:
    try:
        cp = subprocess.run(["git", "-C", str(BENCH), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, timeout=10)
        return cp.stdout.strip() or "?"
    except Exception:                                    # noqa: BLE001
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: small counts, 2 rounds, 50,000 recipients "
                         "for scenario 3 (explicit options still win)")
    ap.add_argument("--scenarios", default=",".join(ALL_SCENARIOS),
                    help="comma-separated subset of 1,2,3,4,5 (default: all)")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (5; quick 2)")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source -s (20)")
    ap.add_argument("--warmup", type=int,
                    help="untimed messages first to every instance (200; quick 50)")
    ap.add_argument("--accept-count", type=int, help="scenario 1 msgs per run (5000)")
    ap.add_argument("--accept-d-count", type=int,
                    help="scenario 1 with -d, msgs per run (20000; quick 5000): "
                         "Ferrymail took 0.03 s for 500 with -d")
    ap.add_argument("--relay-count-1k", type=int, help="scenario 2, 1 KiB (5000)")
    ap.add_argument("--relay-count-100k", type=int, help="scenario 2, 100 KiB (2000)")
    ap.add_argument("--scale-recipients", type=int,
                    help="scenario 3 deferred recipients (1,000,000; quick 50,000)")
    ap.add_argument("--scale-rounds", type=int, help="scenario 3 fresh-mail rounds (3)")
    ap.add_argument("--scale-count", type=int, help="scenario 3 msgs per throughput run (5000)")
    ap.add_argument("--scale-probe-count", type=int, help="scenario 3 latency probes (1000)")
    ap.add_argument("--iso-count", type=int, help="scenario 4 fast msgs per timed batch (5000)")
    ap.add_argument("--iso-backlog", type=int, help="scenario 4 msgs queued for the tarpit (200)")
    ap.add_argument("--iso-stream-batch", type=int, default=2,
                    help="scenario 4: msgs for the tarpit every 0.5 s during the "
                         "measurement (2)")
    ap.add_argument("--iso-settle", type=float,
                    help="scenario 4: wait at most this long for the tarpit to "
                         "reach its concurrency limit (60 s)")
    ap.add_argument("--iso-concurrency", type=int, default=100,
                    help="scenario 4: Ferrymail's total concurrency; Postfix's smtp "
                         "process limit is its default 100 (default 100)")
    ap.add_argument("--tarpit-delay", type=int, default=5,
                    help="scenario 4: smtp-sink -W rcpt:SECONDS (5)")
    ap.add_argument("--fanout-count", type=int, help="scenario 5 msgs per run (300)")
    ap.add_argument("--fanout-rcpts", type=int, default=100,
                    help="scenario 5 recipients per message (100)")
    ap.add_argument("--fanout-warmup", type=int, help="scenario 5 warm-up msgs (5)")
    ap.add_argument("--large-count", type=int, help="scenario 5 large msgs per run (50)")
    ap.add_argument("--large-warmup", type=int, help="scenario 5 large warm-up msgs (2)")
    ap.add_argument("--large-size", type=int, default=10 << 20,
                    help="scenario 5 large body bytes (10485760)")
    ap.add_argument("--large-sessions", type=int, default=20,
                    help="scenario 5 large: smtp-source -s (20)")
    ap.add_argument("--concurrency", type=int, default=20,
                    help="Ferrymail [queue.virtual.default] concurrency in "
                         "scenarios 2 and 5, as relay.py (20)")
    ap.add_argument("--dest-concurrency", type=int, default=20,
                    help="per-destination concurrency, both MTAs "
                         "(Postfix smtp_destination_concurrency_limit) (20)")
    ap.add_argument("--wait-idle", type=float, default=85.0, metavar="PCT",
                    help="before each timed run wait until the machine is PCT%% "
                         "idle for a second (85; 0 = don't wait)")
    ap.add_argument("--max-wait", type=float, default=300.0,
                    help="...but at most this many seconds (300)")
    ap.add_argument("--ferry-binary", default=None,
                    help="ferrymail binary (default target/release/ferrymail, "
                         "built if missing)")
    ap.add_argument("--build", action="store_true", help="cargo build --release first")
    ap.add_argument("--json", default=None, metavar="FILE",
                    help="write the summary table and every run to FILE")
    ap.add_argument("--keep", action="store_true",
                    help="keep the instances' temporary directories")
    args = ap.parse_args()
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in wanted if s not in ALL_SCENARIOS]
    if bad:
        ap.error(f"unknown scenario(s) {bad}; choose from {','.join(ALL_SCENARIOS)}")
    if os.geteuid() != 0:
        print("suite.py needs root (Postfix's master, smtp-sink -u)", file=sys.stderr)
        return 2
    binary = ensure_binary(args.ferry_binary, force_build=args.build)

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    scratch = bench_tmpdir() or os.environ.get("TMPDIR") or "/tmp"
    print(f"Ferrymail benchmark suite (issue 7) -- {started}")
    print(f"  postfix {postfix_version()}; ferrymail {binary} "
          f"(built {time.strftime('%Y-%m-%d %H:%M', time.localtime(binary.stat().st_mtime))}); "
          f"tree {git_describe()}")
    print(f"  scenarios {','.join(wanted)}; {args.rounds} rounds; "
          f"{'QUICK (smoke run, small counts)' if args.quick else 'full size'}")
    print(f"  {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; scratch dirs in "
          f"{scratch} ({fs_type(scratch)}); wait for >= {args.wait_idle:g}% idle "
          f"(at most {args.max_wait:g} s) before each timed run", flush=True)

    res = Results(args.wait_idle)
    done: dict = {}
    t_start = time.monotonic()
    if "1" in wanted:
        done["1"] = [scenario_accept(args, binary, res, False),
                     scenario_accept(args, binary, res, True)]
    if "2" in wanted:
        done["2"] = scenario_relay(args, binary, res)
    if "4" in wanted:
        done["4"] = scenario_isolation(args, binary, res)
    if "5" in wanted:
        done["5"] = [scenario_fanout(args, res, binary),
                     scenario_large(args, binary, res)]
    if "3" in wanted:
        done["3"] = scenario_scale(args, binary, res)

    build_summary(res, done, args)
    busy = [s for s in res.samples if s.idle is not None and s.idle < args.wait_idle]
    scale_idle = [i for v in ((done.get("3") or {}).get("fresh") or {}).values()
                  for i in v.get("idle", []) if i is not None]
    scale_busy = [i for i in scale_idle if i < args.wait_idle]
    print(f"\n=== summary -- {time.strftime('%Y-%m-%d %H:%M:%S')}, "
          f"{(time.monotonic() - t_start) / 60:.0f} min; medians (min-max) of the "
          f"successful rounds ===")
    print_summary(res)
    print(f"\n{len(busy)} of {len(res.samples)} timed runs (scenarios 1, 2, 4, 5) "
          f"started on a busy machine (< {args.wait_idle:g}% idle): compare with care."
          if busy else (f"\nevery timed run of scenarios 1, 2, 4, 5 started with the "
                        f"machine >= {args.wait_idle:g}% idle." if res.samples else ""))
    if scale_idle:
        r_idle = (done.get("3") or {}).get("restart_idle")
        print(f"scenario 3: {len(scale_busy)} of {len(scale_idle)} fresh-mail "
              f"throughput runs started busy (idle % per run: "
              f"{', '.join(f'{i:.0f}' for i in scale_idle)})"
              + (f"; the restart {r_idle:.0f}% idle." if r_idle is not None else "."))
    if args.quick:
        print("QUICK run: counts too small for the targets; this proves the harness, "
              "not the figures.")
    if res.problems:
        print("\nproblems:")
        for p in res.problems:
            print(f"  - {p}")
    if args.json:
        doc = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "quick": args.quick, "binary": str(binary), "tree": git_describe(),
               "postfix": postfix_version(), "cpus": os.cpu_count(),
               "options": {k: v for k, v in vars(args).items()
                           if isinstance(v, (int, float, str, bool, type(None)))},
               "summary": res.rows, "runs": [asdict(s) for s in res.samples],
               "busy_runs": len(busy), "scale_busy_runs": len(scale_busy),
               "scale": done.get("3"),
               "problems": res.problems}
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"\nwrote {args.json}")
    return 1 if res.problems else 0


if __name__ == "__main__":
    sys.exit(main())
