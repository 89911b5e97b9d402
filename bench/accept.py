#!/usr/bin/env python3
"""Accept throughput, delivery not running: Postfix 3.7 vs Ferrymail.

For each round, both MTAs (the order alternates between rounds) get a fresh
instance in a fresh directory, and Postfix's smtp-source sends COUNT messages
of SIZE body bytes over SESSIONS parallel sessions, one connection per
message.  Accepted messages/s = COUNT / smtp-source's wall-clock time; a run
counts only if smtp-source saw 250 after every DATA (it aborts otherwise).
The queue is counted afterwards as a cross-check.

Postfix: TempPostfix(defer_delivery=True): every message goes to the hold
queue, the queue manager never touches it.  Ferrymail: every message is
routed to a relay that never answers (Blackhole), so delivery only waits.
See bench/README.md.  Prints figures; it is not a test.  Needs root.

    python3 bench/accept.py --only postfix --count 2000
    python3 bench/accept.py                      # 3 rounds x 5000, both
"""

from __future__ import annotations

import argparse
import os
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
from ferry import (Blackhole, TempFerrymail, blackhole_route_toml,  # noqa: E402
                   ensure_binary)
from sink import wait_for_idle  # noqa: E402

MTAS = ("postfix", "ferrymail")
# --with-floor: crates/ferrymail/examples/floor_relay.rs without a next hop,
# fdatasync (group commit, pre-zeroed journal) before each 250 and nothing
# else: the least any server that acknowledges durably does here.
FLOOR_BINARY = Path(__file__).resolve().parent.parent / "target/release/examples/floor_relay"


@dataclass
class Run:
    round: int
    mta: str
    ok: bool
    count: int
    seconds: float = 0.0
    queued: int | None = None
    expected_queued: int = 0
    note: str = ""
    idle: float | None = None       # machine idle % just before the timed run
    warnings: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return self.count / self.seconds if self.ok and self.seconds > 0 else None


def source_kwargs(args) -> dict:
    # getattr: bench/suite.py calls in here with its own option set
    return dict(sessions=args.sessions, size=args.size,
                one_msg_per_conn=not getattr(args, "many_per_conn", False),
                rcpt_domain=args.rcpt_domain)


def measure(port: int, args, rnd: int, mta: str) -> Run:
    """Warm-up, then the timed smtp-source run against 127.0.0.1:port."""
    run = Run(round=rnd, mta=mta, ok=False, count=args.count,
              expected_queued=args.count + args.warmup)
    if args.warmup:
        w = run_smtp_source(port, args.warmup, **source_kwargs(args))
        if not w.ok:
            run.note = f"warm-up failed (rc {w.returncode}): {w.stderr.strip()[-300:]}"
            return run
    os.sync()          # don't let the previous run's dirty pages land on us
    # other people compile on this machine: wait for a quiet second (and
    # print how quiet it was) so a busy run shows as such
    run.idle = wait_for_idle(getattr(args, "wait_idle", 0.0),
                             getattr(args, "max_wait", 0.0))
    r = run_smtp_source(port, args.count, **source_kwargs(args))
    run.seconds = r.elapsed
    run.ok = r.ok
    if not r.ok:
        run.note = f"smtp-source rc {r.returncode}: {r.stderr.strip()[-300:]}"
    return run


def run_postfix(args, rnd: int) -> Run:
    port = free_port()
    try:
        with TempPostfix(port, defer_delivery=True, keep=args.keep) as pf:
            run = measure(port, args, rnd, "postfix")
            try:
                run.queued = pf.queued_count()
            except Exception as e:                       # noqa: BLE001
                run.warnings.append(f"queue count failed: {e}")
            run.warnings += pf.log_problems()[:5]
            if args.keep:
                run.warnings.append(f"kept {pf.base}")
            return run
    except Exception as e:                               # noqa: BLE001
        return Run(round=rnd, mta="postfix", ok=False, count=args.count,
                   note=f"{type(e).__name__}: {e}")


def run_ferrymail(args, rnd: int, binary: Path) -> Run:
    port, mgmt = free_port(), free_port()
    try:
        with Blackhole() as bh:
            extra = args.ferry_extra if args.ferry_extra is not None \
                else blackhole_route_toml(bh.address)
            with TempFerrymail(port, mgmt, extra_toml=extra, binary=binary,
                               keep=args.keep) as fm:
                run = measure(port, args, rnd, "ferrymail")
                run.queued = fm.queued_count()
                if run.queued is None:
                    run.warnings.append("`ferrymail queue list --json` gave no "
                                        "count; not cross-checked")
                if args.keep:
                    run.warnings.append(f"kept {fm.base}")
                if not run.ok:
                    run.note += "\n--- ferrymail log tail ---\n" + fm.log_tail(15)
            status = getattr(fm, "exit_status", None)
            if status not in (0, None):
                run.warnings.append(f"ferrymail exit status after SIGTERM: "
                                    f"{status} (INTERFACE.md wants 0)")
            return run
    except Exception as e:                               # noqa: BLE001
        return Run(round=rnd, mta="ferrymail", ok=False, count=args.count,
                   note=f"{type(e).__name__}: {e}")


def run_floor(args, rnd: int) -> Run:
    port = free_port()
    journal = Path(bench_tmpdir() or "/tmp") / f"floor-accept-{os.getpid()}-{rnd}"
    proc = None
    try:
        proc = subprocess.Popen(
            [str(FLOOR_BINARY), "--listen", f"127.0.0.1:{port}",
             "--fsync", str(journal), "--prealloc"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        if proc.stdout.readline().strip() != "READY":
            raise RuntimeError(f"floor_relay did not start: {proc.stderr.read()[-300:]}")
        return measure(port, args, rnd, "floor")
    except Exception as e:                               # noqa: BLE001
        return Run(round=rnd, mta="floor", ok=False, count=args.count,
                   note=f"{type(e).__name__}: {e}")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        import shutil
        shutil.rmtree(journal, ignore_errors=True)


def fmt_rate(x: float | None) -> str:
    return f"{x:,.0f}" if x is not None else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=5000,
                    help="messages per timed run (default 5000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--size", type=int, default=1024,
                    help="body bytes per message, headers extra (default 1024)")
    ap.add_argument("--sessions", type=int, default=20,
                    help="parallel smtp-source sessions (default 20)")
    ap.add_argument("--warmup", type=int, default=200,
                    help="untimed messages sent first to each instance (default 200)")
    ap.add_argument("--only", choices=MTAS, help="measure one MTA only")
    ap.add_argument("--with-floor", action="store_true",
                    help="also measure the floor: examples/floor_relay with an "
                         "fdatasync before each 250 and nothing else (built "
                         "if missing)")
    ap.add_argument("-d", "--many-per-conn", action="store_true",
                    help="smtp-source -d: many messages per connection "
                         "(default: one message per connection)")
    ap.add_argument("--wait-idle", type=float, default=85.0, metavar="PCT",
                    help="before each timed run wait until the machine is PCT%% "
                         "idle for a second (default 85; 0 = don't wait)")
    ap.add_argument("--max-wait", type=float, default=300.0,
                    help="...but at most this many seconds (default 300)")
    ap.add_argument("--rcpt-domain", default="bench.example",
                    help="recipient domain (default bench.example)")
    ap.add_argument("--ferry-binary", default=None,
                    help="ferrymail binary (default target/release/ferrymail, "
                         "built if missing)")
    ap.add_argument("--build", action="store_true",
                    help="run cargo build --release first even if the binary exists")
    ap.add_argument("--ferry-extra-toml", default=None, metavar="FILE",
                    help="TOML appended to Ferrymail's config INSTEAD of the "
                         "default route-everything-to-a-blackhole snippet")
    ap.add_argument("--keep", action="store_true",
                    help="keep the instances' temporary directories")
    args = ap.parse_args()
    args.ferry_extra = (Path(args.ferry_extra_toml).read_text()
                        if args.ferry_extra_toml else None)

    if os.geteuid() != 0:
        print("accept.py needs root (Postfix's master, smtp-sink -u)", file=sys.stderr)
        return 2
    mtas = [args.only] if args.only else list(MTAS)
    if args.with_floor:
        mtas.append("floor")
        if not FLOOR_BINARY.exists() or args.build:
            subprocess.run(["cargo", "build", "--release", "-p", "ferrymail",
                            "--example", "floor_relay"],
                           cwd=FLOOR_BINARY.parents[3], check=True,
                           stdin=subprocess.DEVNULL)

    binary = None
    ferry_missing = False
    if "ferrymail" in mtas:
        try:
            binary = ensure_binary(args.ferry_binary, force_build=args.build)
        except Exception as e:                           # noqa: BLE001
            print(f"ferrymail unavailable: {e}", file=sys.stderr)
            if args.only == "ferrymail":
                return 1
            mtas.remove("ferrymail")
            ferry_missing = True

    scratch = bench_tmpdir() or os.environ.get("TMPDIR") or "/tmp"
    print(f"accept throughput, delivery not running -- {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"  postfix {postfix_version()}; ferrymail {binary or '-'}")
    print(f"  {args.rounds} rounds x {args.count} msgs (+{args.warmup} warm-up), "
          f"{args.size}-byte body, smtp-source -s {args.sessions}, "
          f"{'many messages per connection (-d)' if args.many_per_conn else 'one message per connection'}"
          f", rcpt @{args.rcpt_domain}")
    print(f"  {os.cpu_count()} CPUs; scratch dirs in {scratch} ({fs_type(scratch)})")
    print(flush=True)

    runs: list[Run] = []
    hdr = (f"{'round':>5}  {'mta':<10} {'msgs':>6} {'seconds':>8} {'msg/s':>8} "
           f"{'idle%':>5}  queued")
    print(hdr)
    print("-" * len(hdr))
    for rnd in range(1, args.rounds + 1):
        order = mtas if rnd % 2 == 1 else list(reversed(mtas))
        for mta in order:
            if mta == "postfix":
                run = run_postfix(args, rnd)
            elif mta == "floor":
                run = run_floor(args, rnd)
            else:
                run = run_ferrymail(args, rnd, binary)
            runs.append(run)
            if run.queued is None:
                q = "n/a"
            else:
                q = f"{run.queued}" + ("" if run.queued == run.expected_queued
                                       else f" (expected {run.expected_queued}!)")
            secs = f"{run.seconds:.2f}" if run.seconds else "-"
            idle = f"{run.idle:.0f}" if run.idle is not None else "-"
            line = (f"{rnd:>5}  {mta:<10} {run.count:>6} {secs:>8} "
                    f"{fmt_rate(run.rate):>8} {idle:>5}  {q}")
            if not run.ok:
                line += "  FAILED: " + run.note.strip().splitlines()[0][:200] \
                    if run.note.strip() else "  FAILED"
            print(line, flush=True)
            for extra in run.note.strip().splitlines()[1:12] if not run.ok else []:
                print(f"{'':>7}{extra}")
            for w in run.warnings:
                print(f"{'':>7}note: {w[:200]}")

    print()
    medians = {}
    for mta in mtas:
        rates = [r.rate for r in runs if r.mta == mta and r.rate is not None]
        n_fail = sum(1 for r in runs if r.mta == mta and r.rate is None)
        if rates:
            medians[mta] = statistics.median(rates)
            print(f"median {mta:<10} {medians[mta]:>8,.0f} msg/s  "
                  f"(min {min(rates):,.0f}, max {max(rates):,.0f}, "
                  f"{len(rates)} ok, {n_fail} failed)")
        else:
            print(f"median {mta:<10} {'-':>8}        (no successful run)")
    if "postfix" in medians and "ferrymail" in medians:
        print(f"ratio ferrymail/postfix: {medians['ferrymail'] / medians['postfix']:.2f}x")
    if "postfix" in medians and "floor" in medians:
        print(f"ratio floor/postfix:     {medians['floor'] / medians['postfix']:.2f}x")
    if "floor" in medians and "ferrymail" in medians:
        print(f"ratio ferrymail/floor:   {medians['ferrymail'] / medians['floor']:.2f}x")
    bad = [r for r in runs if not r.ok
           or (r.queued is not None and r.queued != r.expected_queued)]
    if ferry_missing:
        print("ferrymail was not measured (binary unavailable, see above)")
    return 1 if bad or not runs or ferry_missing else 0


if __name__ == "__main__":
    sys.exit(main())
