#!/usr/bin/env python3
"""Ferrymail with 1,000,000 deferred recipients queued (issue 3's scale table).

Two Ferrymail instances with the same configuration run side by side:

* E ("empty"): never holds more than the fresh mail in flight;
* L ("loaded"): filled with RECIPIENTS deferred recipients (default 1M =
  10,000 messages x 100 recipients, sent by a pipelining client in this
  program) routed to a relay route whose port refuses connections, with
  ``[queue.schedule] retry = "[24h]"``: every recipient is attempted once
  (or deferred at once while the dead destination is suspended) and then
  waits about 24 h.

Measured, in this order:

1. memory: VmRSS (and VmHWM) of L empty, after the fill, and again after
   the restart once the queue is recovered; bytes per queued recipient;
2. restart of L: SIGTERM (time to exit), start again; times from the exec
   until (a) the SMTP port answers 220 ("accepting"), (b) a new message sent
   right after the 220 reached the sink, (c) the management API answers for
   a queued message, (d) the server logs "recovered the queue from the
   store" (its own elapsed_ms is printed too);
3. fresh mail, alternating E and L for several rounds:
   * throughput: ``smtp-source -s 20 -m N`` (1 KiB, one message per
     connection) to rcpt@fresh.example, relayed to smtp-sink; delivered/s =
     N / (start of smtp-source -> smtp-sink's counter reached N);
   * latency: a fixed-rate probe (default 100 msg/s for 1,000 messages, one
     connection each, in this program) to probe.example, relayed to a
     Python sink that timestamps arrivals; end-to-end latency = from the
     probe's connect to the sink's receipt of the end of DATA; accept
     latency = connect to the 250 after DATA. p50/p99/max.
4. a full check of L's queue: every filled message read back through the
   management API (``GET /api/queue/messages/ID``): all recipients still
   queued, in the deferred lane, attempted, due >= 20 h ahead.
   ``ferrymail queue list --json`` is not used for 1M recipients: it builds
   one JSON document of every recipient (hundreds of MB) in the server.

Prints figures; it is not a test.  Needs root only for smtp-sink -u.

    python3 bench/scale.py                          # 1M, ~5 minutes
    python3 bench/scale.py --recipients 100000 --rounds 2   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
from postfix import bench_tmpdir, free_port, fs_type, run_smtp_source  # noqa: E402
from ferry import TempFerrymail, ensure_binary  # noqa: E402
from sink import (CountingSink, ProbeSink, proc_cpu_seconds,  # noqa: E402
                  proc_status_kib, wait_for_idle)

FRESH = "fresh.example"
PROBE = "probe.example"
RECOVERED_LINE = "recovered the queue from the store"


def now_s() -> str:
    return time.strftime("%H:%M:%S")


def log(msg: str) -> None:
    print(f"[{now_s()}] {msg}", flush=True)


def ferry_toml(sink, probe, dead_port: int, concurrency: int, dest: int) -> str:
    return f"""
[queue.route.sink]
type = "relay"
address = "{sink[0]}"
port = {sink[1]}
protocol = "smtp"
tls.mode = "disable"

[queue.route.probe]
type = "relay"
address = "{probe[0]}"
port = {probe[1]}
protocol = "smtp"
tls.mode = "disable"

[queue.route.dead]
type = "relay"
address = "127.0.0.1"
port = {dead_port}
protocol = "smtp"
tls.mode = "disable"

[queue.strategy]
route = [ {{ if = "rcpt_domain == '{FRESH}'", then = "'sink'" }},
          {{ if = "rcpt_domain == '{PROBE}'", then = "'probe'" }},
          {{ else = "'dead'" }} ]

[queue.schedule]
retry = "[24h]"

[queue.virtual.default]
concurrency = {concurrency}
destination.concurrency = {dest}
"""


class Instance(TempFerrymail):
    """TempFerrymail that can be restarted in place, with timings."""

    def __init__(self, name: str, *a, **kw):
        super().__init__(*a, **kw)
        self.name = name

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_mib(self, field: str = "VmRSS") -> float | None:
        v = proc_status_kib(self.pid, field)
        return v / 1024 if v is not None else None

    def api(self, path: str, timeout: float = 60) -> object | None:
        url = f"http://127.0.0.1:{self.mgmt_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def message(self, qid: str) -> dict | None:
        doc = self.api(f"/api/queue/messages/{qid}")
        return doc if isinstance(doc, dict) else None

    def log_text_from(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop_timed(self) -> tuple[float, int | None]:
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        return time.monotonic() - t0, self.proc.returncode

    def kill_timed(self) -> tuple[float, int | None]:
        """SIGKILL: a crash, nothing written out (``--crash``)."""
        assert self.proc is not None
        t0 = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return time.monotonic() - t0, self.proc.returncode

    def start_again(self) -> float:
        """Starts the server again (same config, store and log); returns the
        monotonic time of the exec."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "-c", str(self.config_file)],
            cwd=self.base, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        return t0


# --------------------------------------------------------------------------
# SMTP clients
# --------------------------------------------------------------------------

async def read_reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed while reading a reply")
        s = line.decode("latin-1").rstrip("\r\n")
        lines.append(s)
        if len(s) < 4 or s[3] != "-":
            return int(s[:3]), "\n".join(lines)


def body_bytes(size: int, subject: str) -> bytes:
    hdr = (f"From: <bench@source.example>\r\nTo: <rcpt@bench.example>\r\n"
           f"Subject: {subject}\r\nMessage-ID: <{random.getrandbits(64):x}@bench>\r\n\r\n")
    line = ("x" * 76 + "\r\n").encode()
    body = (line * (size // len(line) + 1))[:size]
    if not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n"
    return hdr.encode() + body


QUEUED_AS = re.compile(r"queued as (\S+)", re.I)


async def fill_connection(port: int, jobs: list[int], rcpts: int, domains: int,
                          body: bytes, ids: dict[int, str], progress) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    code, _ = await read_reply(reader)
    if code != 220:
        raise RuntimeError(f"greeting {code}")
    writer.write(b"EHLO filler.example\r\n")
    code, text = await read_reply(reader)
    if code != 250 or "PIPELINING" not in text.upper():
        raise RuntimeError(f"EHLO: {text!r} (PIPELINING needed)")
    for m in jobs:
        cmds = [b"MAIL FROM:<fill@source.example>\r\n"]
        for i in range(rcpts):
            d = (m * rcpts + i) % domains
            cmds.append(f"RCPT TO:<u{m}-{i}@d{d}.example>\r\n".encode())
        cmds.append(b"DATA\r\n")
        writer.write(b"".join(cmds))
        for k in range(rcpts + 2):
            code, text = await read_reply(reader)
            want = 354 if k == rcpts + 1 else 250
            if code != want:
                raise RuntimeError(f"message {m}: reply {k}: {text!r}")
        writer.write(body + b".\r\n")
        code, text = await read_reply(reader)
        mm = QUEUED_AS.search(text)
        if code != 250 or not mm:
            raise RuntimeError(f"message {m}: end of data: {text!r}")
        ids[m] = mm.group(1)
        progress()
    writer.write(b"QUIT\r\n")
    try:
        await asyncio.wait_for(read_reply(reader), 5)
    except Exception:                                    # noqa: BLE001
        pass
    writer.close()


def fill(port: int, messages: int, rcpts: int, conns: int, domains: int,
         size: int, rss_fn) -> tuple[list[str], float]:
    ids: dict[int, str] = {}
    body = body_bytes(size, "fill")
    done = [0]
    t0 = time.monotonic()
    step = max(1, messages // 10)

    def progress():
        done[0] += 1
        if done[0] % step == 0 or done[0] == messages:
            el = time.monotonic() - t0
            log(f"  filled {done[0]:,} messages ({done[0] * rcpts:,} recipients) "
                f"in {el:.1f} s, {done[0] * rcpts / el:,.0f} rcpt/s, "
                f"server RSS {rss_fn():.0f} MiB")

    async def main():
        parts = [list(range(k, messages, conns)) for k in range(conns)]
        await asyncio.gather(*(fill_connection(port, p, rcpts, domains, body, ids,
                                               progress) for p in parts if p))
    asyncio.run(main())
    return [ids[m] for m in range(messages)], time.monotonic() - t0


async def probe_one(port: int, rcpt: str, body: bytes) -> tuple[float, float]:
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        steps = [(None, 220), (b"EHLO probe.source.example\r\n", 250),
                 (b"MAIL FROM:<probe@source.example>\r\n", 250),
                 (f"RCPT TO:<{rcpt}>\r\n".encode(), 250), (b"DATA\r\n", 354),
                 (body + b".\r\n", 250)]
        for cmd, want in steps:
            if cmd is not None:
                writer.write(cmd)
            code, text = await read_reply(reader)
            if code != want:
                raise RuntimeError(f"probe {rcpt}: {text!r}")
        t_acc = time.monotonic()
        writer.write(b"QUIT\r\n")
        try:
            await asyncio.wait_for(read_reply(reader), 5)
        except Exception:                                # noqa: BLE001
            pass
        return t0, t_acc
    finally:
        writer.close()


def latency_probe(port: int, sink: ProbeSink, tag: str, n: int, rate: float,
                  wait: float = 60) -> dict:
    """n messages at a fixed rate; returns latency figures in ms."""
    body = body_bytes(1024, f"probe {tag}")
    rcpts = [f"{tag}-{i}@{PROBE}" for i in range(n)]

    async def main():
        start = time.monotonic() + 0.05
        tasks = []
        for i, r in enumerate(rcpts):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(probe_one(port, r, body)))
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(
            sink.first_arrival(r) is None for r in rcpts):
        time.sleep(0.05)
    acc, e2e, errors, lost = [], [], 0, 0
    for r, res in zip(rcpts, results):
        if isinstance(res, BaseException):
            errors += 1
            continue
        t0, ta = res
        acc.append((ta - t0) * 1000)
        arr = sink.first_arrival(r)
        if arr is None:
            lost += 1
        else:
            e2e.append((arr - t0) * 1000)
    return {"acc": acc, "e2e": e2e, "errors": errors, "lost": lost}


def pct(v: list[float], p: float) -> float:
    if not v:
        return float("nan")
    s = sorted(v)                       # nearest rank
    k = min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


# --------------------------------------------------------------------------
# waiting and checking
# --------------------------------------------------------------------------

def wait_quiet(pid: int, max_cpu: float = 0.03, window: float = 2.0,
               timeout: float = 600) -> float:
    """Waits until the process uses < max_cpu of a core over ``window``."""
    t0 = time.monotonic()
    c0 = proc_cpu_seconds(pid) or 0.0
    while time.monotonic() - t0 < timeout:
        time.sleep(window)
        c1 = proc_cpu_seconds(pid) or 0.0
        if (c1 - c0) / window < max_cpu:
            return time.monotonic() - t0
        c0 = c1
    return time.monotonic() - t0


def check_message(doc: dict | None, rcpts: int, min_due_ms: int) -> dict:
    out = {"missing": 0, "deferred": 0, "pending": 0, "unattempted": 0,
           "due_soon": 0, "leased": 0, "recipients": 0}
    if doc is None:
        out["missing"] = 1
        return out
    rs = doc.get("recipients", [])
    out["recipients"] = len(rs)
    for r in rs:
        out["deferred" if r.get("lane") == "deferred" else "pending"] += 1
        if not r.get("attempts"):
            out["unattempted"] += 1
        if int(r.get("due", 0)) < min_due_ms:
            out["due_soon"] += 1
        if r.get("lease_owner") is not None:
            out["leased"] += 1
    return out


def sum_checks(checks) -> dict:
    tot: dict[str, int] = {}
    for c in checks:
        for k, v in c.items():
            tot[k] = tot.get(k, 0) + v
    return tot


def all_settled(inst: Instance, ids: list[str], rcpts: int) -> bool:
    """The last 20 filled messages and 20 random ones are fully deferred."""
    sample = ids[-20:] + random.sample(ids, min(20, len(ids)))
    min_due = int(time.time() * 1000) + 20 * 3600 * 1000
    tot = sum_checks(check_message(inst.message(q), rcpts, min_due) for q in sample)
    return (tot["missing"] == 0 and tot["pending"] == 0 and tot["unattempted"] == 0
            and tot["due_soon"] == 0 and tot["recipients"] == len(sample) * rcpts)


def full_check(inst: Instance, ids: list[str], rcpts: int) -> tuple[dict, float]:
    min_due = int(time.time() * 1000) + 20 * 3600 * 1000
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as ex:
        tot = sum_checks(ex.map(lambda q: check_message(inst.message(q), rcpts,
                                                        min_due), ids))
    return tot, time.monotonic() - t0


# --------------------------------------------------------------------------
# fresh-mail measurements
# --------------------------------------------------------------------------

WAIT_IDLE = (0.0, 0.0)      # (min idle %, max wait s), from the command line


def throughput(inst: Instance, sink: CountingSink, n: int, sessions: int) -> dict:
    base = sink.count
    os.sync()
    idle = wait_for_idle(*WAIT_IDLE)
    sink.expect(base + n)
    c0 = proc_cpu_seconds(inst.pid)
    t0 = time.monotonic()
    r = run_smtp_source(inst.port, n, sessions=sessions, size=1024,
                        rcpt_domain=FRESH)
    reached = sink.wait(120 + n / 20)
    c1 = proc_cpu_seconds(inst.pid)
    out = {"ok": r.ok and reached is not None, "accept_s": r.elapsed,
           "idle": idle, "note": "" if r.ok else r.stderr.strip()[-200:]}
    if reached is not None:
        out["e2e_s"] = reached - t0
        out["rate"] = n / out["e2e_s"]
    else:
        out["note"] += f" sink got {sink.count - base} of {n}"
    if c0 is not None and c1 is not None:
        out["cpu_us"] = (c1 - c0) / n * 1e6
    time.sleep(0.5)
    if sink.count != base + n:
        out["ok"] = False
        out["note"] += f" sink count {sink.count - base} != {n}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipients", type=int, default=1_000_000,
                    help="deferred recipients to queue (default 1,000,000)")
    ap.add_argument("--per-message", type=int, default=100,
                    help="recipients per filled message (default 100)")
    ap.add_argument("--fill-connections", type=int, default=8)
    ap.add_argument("--domains", type=int, default=20_000,
                    help="distinct recipient domains in the backlog (default 20,000)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="fresh-mail rounds per instance after the fill (default 3)")
    ap.add_argument("--count", type=int, default=5000,
                    help="smtp-source messages per throughput run (default 5000)")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--probe-count", type=int, default=1000)
    ap.add_argument("--probe-rate", type=float, default=100.0,
                    help="latency probe messages per second (default 100)")
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--dest-concurrency", type=int, default=20)
    ap.add_argument("--no-full-check", action="store_true",
                    help="skip reading every filled message back at the end")
    ap.add_argument("--wait-idle", type=float, default=85.0, metavar="PCT",
                    help="before each timed run wait until the machine is PCT%% "
                         "idle (default 85; 0 = don't wait)")
    ap.add_argument("--max-wait", type=float, default=300.0,
                    help="...but at most this many seconds (default 300)")
    ap.add_argument("--crash", action="store_true",
                    help="restart after SIGKILL instead of SIGTERM: the start "
                         "must then replay the store's journal")
    ap.add_argument("--ferry-binary", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None, metavar="FILE",
                    help="also write the summary figures to FILE as JSON "
                         "(bench/suite.py reads them from there)")
    args = ap.parse_args()
    global WAIT_IDLE
    WAIT_IDLE = (args.wait_idle, args.max_wait)
    if os.geteuid() != 0:
        print("scale.py needs root (smtp-sink -u nobody)", file=sys.stderr)
        return 2
    messages = args.recipients // args.per_message
    n_rcpt = messages * args.per_message
    binary = ensure_binary(args.ferry_binary)
    scratch = bench_tmpdir() or os.environ.get("TMPDIR") or "/tmp"
    print(f"Ferrymail with {n_rcpt:,} deferred recipients -- "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"  binary {binary}")
    print(f"  fill: {messages:,} messages x {args.per_message} recipients over "
          f"{args.domains:,} domains, {args.fill_connections} pipelining connections")
    print(f"  fresh mail: {args.rounds} rounds x (smtp-source -s {args.sessions} -m "
          f"{args.count}, 1 KiB; probe {args.probe_count} msgs at {args.probe_rate:g}/s)")
    print(f"  [queue.virtual.default] concurrency = {args.concurrency}, "
          f"destination.concurrency = {args.dest_concurrency}; retry = [24h]")
    print(f"  {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; scratch in "
          f"{scratch} ({fs_type(scratch)})", flush=True)

    failures: list[str] = []
    # a bound socket that never listens: connects are refused at once, and
    # nobody else can take the port while we hold it
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    with CountingSink() as sink, ProbeSink() as psink:
        toml = ferry_toml(sink.address, psink.address, dead_port,
                          args.concurrency, args.dest_concurrency)
        with Instance("E", free_port(), free_port(), extra_toml=toml,
                      binary=binary, keep=args.keep) as E, \
             Instance("L", free_port(), free_port(), extra_toml=toml,
                      binary=binary, keep=args.keep) as L:
            log(f"E pid {E.pid} in {E.base}; L pid {L.pid} in {L.base}")
            # warm both (pools, allocator), then the empty baseline
            for inst in (E, L):
                throughput(inst, sink, 500, args.sessions)
                latency_probe(inst.port, psink, f"warm{inst.name}", 100, args.probe_rate)
                wait_quiet(inst.pid, timeout=30)
            rss_empty = {i.name: i.rss_mib() for i in (E, L)}
            log(f"RSS empty: E {rss_empty['E']:.1f} MiB, L {rss_empty['L']:.1f} MiB")

            results: dict[str, list] = {"E": [], "L": [], "L-before": []}

            def measure(inst: Instance, label: str, rnd: int) -> None:
                t = throughput(inst, sink, args.count, args.sessions)
                lat = latency_probe(inst.port, psink, f"r{rnd}{label}",
                                    args.probe_count, args.probe_rate)
                t["lat"] = lat
                results[label].append(t)
                ok = t["ok"] and not lat["errors"] and not lat["lost"]
                if not ok:
                    failures.append(f"{label} round {rnd}: {t['note']} "
                                    f"probe errors {lat['errors']} lost {lat['lost']}")
                log(f"  round {rnd} {label:<8} delivered {t.get('rate', 0):>6,.0f} msg/s "
                    f"(accept {args.count / t['accept_s']:,.0f}/s, idle before "
                    f"{t['idle']:.0f}%, cpu {t.get('cpu_us', 0):.0f} us/msg); probe e2e "
                    f"p50 {pct(lat['e2e'], 50):.1f} p99 {pct(lat['e2e'], 99):.1f} "
                    f"max {max(lat['e2e'] or [0]):.1f} ms, accept p99 "
                    f"{pct(lat['acc'], 99):.1f} ms; RSS {inst.rss_mib():.0f} MiB"
                    f"{'' if ok else '  FAILED ' + t['note']}")

            log("fresh mail before the fill (both empty):")
            measure(E, "E", 0)
            results["E"].pop()           # round 0 of E: reference only, printed
            measure(L, "L-before", 0)

            # ---- fill -------------------------------------------------
            log(f"filling L with {n_rcpt:,} recipients ...")
            ids, fill_s = fill(L.port, messages, args.per_message,
                               args.fill_connections, args.domains, 1024,
                               lambda: L.rss_mib() or 0)
            log(f"fill accepted in {fill_s:.1f} s ({n_rcpt / fill_s:,.0f} rcpt/s); "
                "waiting until every recipient has been attempted and deferred ...")
            t0 = time.monotonic()
            settled = False
            while time.monotonic() - t0 < 1200:
                if all_settled(L, ids, args.per_message):
                    settled = True
                    break
                time.sleep(2)
            log(f"  sampled messages all deferred: {settled} after "
                f"{time.monotonic() - t0:.0f} s; waiting for the server to go idle")
            q = wait_quiet(L.pid, timeout=600)
            log(f"  idle after {q:.0f} s more")
            if not settled:
                failures.append("the filled queue did not settle (sampled "
                                "messages not all deferred)")
            rss_filled, hwm_filled = L.rss_mib(), L.rss_mib("VmHWM")
            log(f"RSS L after the fill: {rss_filled:.1f} MiB (peak {hwm_filled:.1f} MiB)")

            # ---- restart ----------------------------------------------
            # the restart is timed too: not while someone else's build runs
            restart_idle = wait_for_idle(*WAIT_IDLE)
            how = "SIGKILL (a crash)" if args.crash else "SIGTERM"
            log(f"restarting L ({how}, start again; machine {restart_idle:.0f}% "
                "idle the second before) ...")
            offset = L.log_file.stat().st_size
            stop_s, status = L.kill_timed() if args.crash else L.stop_timed()
            t_exec = L.start_again()
            wall_exec = time.time()
            t_accept = t_delivered = t_api = t_recovered = None
            recovered_line = ""
            probe_rcpt = f"restart@{PROBE}"
            deadline = t_exec + 300
            while time.monotonic() < deadline and t_accept is None:
                if L.proc.poll() is not None:
                    failures.append("L exited during restart")
                    break
                try:
                    with socket.create_connection(("127.0.0.1", L.port), timeout=5) as s:
                        s.settimeout(10)
                        if s.recv(512).startswith(b"220"):
                            t_accept = time.monotonic()
                            s.sendall(b"QUIT\r\n")
                except OSError:
                    time.sleep(0.005)
            if t_accept is not None:
                body = body_bytes(1024, "restart probe")
                try:
                    asyncio.run(probe_one(L.port, probe_rcpt, body))
                except Exception as e:                   # noqa: BLE001
                    failures.append(f"restart probe: {e}")
            while time.monotonic() < deadline and None in (t_delivered, t_api, t_recovered):
                now = time.monotonic()
                if t_delivered is None and psink.first_arrival(probe_rcpt) is not None:
                    t_delivered = psink.first_arrival(probe_rcpt)
                if t_api is None:
                    try:
                        doc = L.message(ids[len(ids) // 2])
                        if doc and len(doc.get("recipients", [])) == args.per_message:
                            t_api = time.monotonic()
                    except Exception:                    # noqa: BLE001
                        pass
                if t_recovered is None:
                    text = L.log_text_from(offset)
                    for line in text.splitlines():
                        if RECOVERED_LINE in line:
                            t_recovered = now
                            recovered_line = line
                            break
                time.sleep(0.01)
            m_ent = re.search(r"entries=(\d+)", recovered_line)
            m_ms = re.search(r"elapsed_ms=(\d+)", recovered_line)
            rec_entries = int(m_ent.group(1)) if m_ent else None
            rec_ms = int(m_ms.group(1)) if m_ms else None

            def since(t):
                return f"{t - t_exec:.3f} s" if t is not None else "never"
            log(f"  stop ({how} to exit): {stop_s:.3f} s, exit status {status}")
            log(f"  accepting (220):              {since(t_accept)}")
            log(f"  new message delivered:        {since(t_delivered)}")
            log(f"  management API answers:       {since(t_api)}")
            log(f"  queue recovered (log line):   {since(t_recovered)}; server says "
                f"entries={rec_entries} elapsed_ms={rec_ms}")
            if rec_entries != n_rcpt + 0:
                failures.append(f"recovered {rec_entries} entries, expected {n_rcpt}")
            q = wait_quiet(L.pid, timeout=300)
            rss_restart, hwm_restart = L.rss_mib(), L.rss_mib("VmHWM")
            log(f"RSS L after restart + recovery (idle after {q:.0f} s): "
                f"{rss_restart:.1f} MiB (peak {hwm_restart:.1f} MiB)")

            # ---- fresh mail, E vs L -----------------------------------
            log("fresh mail, E (empty) vs L (loaded), alternating:")
            for rnd in range(1, args.rounds + 1):
                for inst in ((E, L) if rnd % 2 else (L, E)):
                    measure(inst, inst.name, rnd)

            # ---- full check ------------------------------------------
            check = None
            rss_rounds = L.rss_mib()
            log(f"RSS L after the fresh-mail rounds: {rss_rounds:.1f} MiB")
            if not args.no_full_check:
                log("reading every filled message back through the management API ...")
                check, chk_s = full_check(L, ids, args.per_message)
                log(f"  {chk_s:.0f} s: {check}")
                bad = (check["missing"] or check["pending"] or check["unattempted"]
                       or check["due_soon"] or check["recipients"] != n_rcpt)
                if bad:
                    failures.append(f"full check: {check}")
            rss_end, hwm_end = L.rss_mib(), L.rss_mib("VmHWM")
        e_status = getattr(E, "exit_status", None)
        L_status = getattr(L, "exit_status", None)
    dead.close()

    # ---- summary ------------------------------------------------------
    print()
    print(f"summary ({n_rcpt:,} deferred recipients in L)")
    base = rss_empty["L"]
    print(f"  RSS L empty {base:.1f} MiB; filled {rss_filled:.1f} MiB (peak "
          f"{hwm_filled:.1f}); after restart {rss_restart:.1f} MiB (peak "
          f"{hwm_restart:.1f}); after the fresh-mail rounds {rss_rounds:.1f} MiB; "
          f"at the end {rss_end:.1f} MiB (peak {hwm_end:.1f})")
    per = (rss_restart - base) * 1048576 / n_rcpt
    per_f = (rss_filled - base) * 1048576 / n_rcpt
    print(f"  bytes per queued recipient (RSS growth over empty): {per:.0f} after "
          f"restart, {per_f:.0f} after the fill   (target: RSS <= 256 MB)")
    print(f"  restart: accepting {since(t_accept)}, first new message delivered "
          f"{since(t_delivered)}, queue recovered {since(t_recovered)} (server: "
          f"{rec_ms} ms)   (target <= 2 s)")

    def agg(label):
        rs = [r for r in results[label] if r.get("rate")]
        rates = [r["rate"] for r in rs]
        p99 = [pct(r["lat"]["e2e"], 99) for r in rs]
        p50 = [pct(r["lat"]["e2e"], 50) for r in rs]
        ap99 = [pct(r["lat"]["acc"], 99) for r in rs]
        return rates, p50, p99, ap99
    rows = {}
    for label in ("E", "L"):
        rates, p50, p99, ap99 = agg(label)
        if rates:
            rows[label] = (statistics.median(rates), statistics.median(p99),
                           statistics.median(p50), statistics.median(ap99))
            print(f"  {label}: delivered {rows[label][0]:,.0f} msg/s ({min(rates):,.0f}-"
                  f"{max(rates):,.0f}); probe e2e p50 {rows[label][2]:.1f} ms, p99 "
                  f"{rows[label][1]:.1f} ms ({min(p99):.1f}-{max(p99):.1f}); accept p99 "
                  f"{rows[label][3]:.1f} ms")
    if "E" in rows and "L" in rows:
        print(f"  throughput L/E: {rows['L'][0] / rows['E'][0]:.2f}   (target >= 0.90)")
        print(f"  e2e p99 L/E:    {rows['L'][1] / rows['E'][1]:.2f}   (target <= 2)")
        print(f"  accept p99 L/E: {rows['L'][3] / rows['E'][3]:.2f}")
    for s in (e_status, L_status):
        if s not in (0, None):
            failures.append(f"exit status after SIGTERM {s}")
    if args.json:
        def rel(t):
            return t - t_exec if t is not None else None
        doc = {
            "recipients": n_rcpt,
            "rss_empty_mib": base, "rss_filled_mib": rss_filled,
            "hwm_filled_mib": hwm_filled, "rss_restart_mib": rss_restart,
            "hwm_restart_mib": hwm_restart, "rss_rounds_mib": rss_rounds,
            "rss_end_mib": rss_end, "hwm_end_mib": hwm_end,
            "bytes_per_rcpt_restart": per, "bytes_per_rcpt_fill": per_f,
            "restart_stop_s": stop_s, "restart_accepting_s": rel(t_accept),
            "restart_delivered_s": rel(t_delivered),
            "restart_recovered_s": rel(t_recovered),
            "restart_server_scan_ms": rec_ms, "restart_idle": restart_idle,
            "fresh": {
                label: {"rate": rows[label][0], "e2e_p99_ms": rows[label][1],
                        "e2e_p50_ms": rows[label][2], "accept_p99_ms": rows[label][3],
                        "rates": [r.get("rate") for r in results[label]],
                        "idle": [r.get("idle") for r in results[label]]}
                for label in rows},
            "failures": failures,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    if failures:
        print("\nproblems:")
        for f in failures:
            print(f"  - {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
