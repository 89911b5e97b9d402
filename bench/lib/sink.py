"""Sinks that count what they receive (Python 3.11, stdlib only).

* ``CountingSink`` - Postfix's ``smtp-sink -c``: its running counter
  (``sess=N quit=N mesg=N``, one line per event, ``\\r``-separated, written
  live to stdout) is read by a thread, so the benchmark knows *exactly* how
  many messages the sink has received and *when* a given count was reached.
  This is how end-to-end time is measured: from the start of smtp-source
  until the sink has seen every message.
* ``ProbeSink`` - a small asyncio SMTP server in a thread that records the
  arrival time of each recipient (for per-message end-to-end latency). Slow
  compared with smtp-sink (pure Python), so only for low, fixed-rate probes.
* ``proc_rss_kib``, ``proc_cpu_seconds`` - /proc readings of a process.

Everything started here is stopped again (context managers, bounded waits).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import threading
import time

from postfix import _stop_process, free_port, wait_for_banner, which

_MESG = re.compile(rb"mesg=(\d+)")


class CountingSink:
    """``smtp-sink -c -u nobody -m MAXCONN [extra] 127.0.0.1:PORT BACKLOG``.

    ``count`` is the number of messages the sink has received ("." seen).
    ``expect(n)`` arms a target; ``wait(timeout)`` returns the monotonic time
    at which the count first reached it (taken by the reader thread the
    moment it read the counter line), or None on timeout.
    """

    POLL_S = 0.002

    def __init__(self, port: int | None = None, backlog: int = 1000,
                 max_conns: int = 1000, extra_args: list[str] | None = None,
                 host: str = "127.0.0.1"):
        self.host = host
        self.port = port or free_port(host)
        self.backlog = backlog
        self.max_conns = max_conns
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.count = 0
        self._target: int | None = None
        self._reached_at: float | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _reader(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        tail = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            now = time.monotonic()
            # Batch: at 10,000 msg/s the sink writes ~30,000 counter lines a
            # second; waking up for each would make this thread a noticeable
            # load on a 2-core machine.  The count is taken at most
            # POLL_S late (and the arrival time with it).
            time.sleep(self.POLL_S)
            tail += chunk
            # only the last complete record matters: the counter is monotonic
            end = tail.rfind(b"\r")
            if end < 0:
                continue
            m = None
            for m in _MESG.finditer(tail, 0, end):
                pass
            tail = tail[end + 1:]
            if m is None:
                continue
            n = int(m.group(1))
            with self._cond:
                self.count = n
                if (self._target is not None and self._reached_at is None
                        and n >= self._target):
                    self._reached_at = now
                    self._cond.notify_all()

    def expect(self, n: int) -> None:
        with self._cond:
            self._target = n
            self._reached_at = time.monotonic() if self.count >= n else None

    def wait(self, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._reached_at is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc is None or self.proc.poll() is not None:
                    return self._reached_at
                self._cond.wait(min(left, 0.5))
            return self._reached_at

    def wait_count(self, n: int, timeout: float) -> bool:
        self.expect(n)
        return self.wait(timeout) is not None

    def __enter__(self) -> "CountingSink":
        argv = [which("smtp-sink"), "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += ["-m", str(self.max_conns)] + self.extra_args
        argv += [f"{self.host}:{self.port}", str(self.backlog)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()
        try:
            wait_for_banner(self.host, self.port, timeout=10, proc=self.proc)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            _stop_process(self.proc, term_timeout=5)
            if self._thread is not None:
                self._thread.join(timeout=5)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None


# --------------------------------------------------------------------------
# a Python sink that timestamps every recipient
# --------------------------------------------------------------------------

class ProbeSink:
    """Minimal ESMTP server (asyncio, own thread) on 127.0.0.1:port.

    Answers 250 to everything (EHLO advertises PIPELINING and 8BITMIME),
    stores for each RCPT address the monotonic time at which the end of its
    message's DATA arrived: ``arrivals[address] = [t, ...]`` (a list, so a
    duplicate delivery is visible).  Handles connection reuse and RSET.
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port = free_port(host)
        self.arrivals: dict[str, list[float]] = {}
        self.messages = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def _session(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        rcpts: list[str] = []
        try:
            writer.write(b"220 probe-sink ESMTP\r\n")
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    return
                cmd = line[:4].upper()
                if cmd in (b"EHLO", b"LHLO"):
                    writer.write(b"250-probe-sink\r\n250-PIPELINING\r\n"
                                 b"250-8BITMIME\r\n250 SIZE 104857600\r\n")
                elif cmd == b"MAIL":
                    rcpts = []
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif cmd == b"RCPT":
                    m = re.search(rb"<([^>]*)>", line)
                    rcpts.append(m.group(1).decode("latin-1").lower() if m else "")
                    writer.write(b"250 2.1.5 Ok\r\n")
                elif cmd == b"DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    await writer.drain()
                    while True:
                        l = await reader.readline()
                        if not l:
                            return
                        if l == b".\r\n" or l == b".\n":
                            break
                    now = time.monotonic()
                    with self._lock:
                        self.messages += 1
                        for r in rcpts:
                            self.arrivals.setdefault(r, []).append(now)
                    rcpts = []
                    writer.write(b"250 2.0.0 Ok: queued\r\n")
                elif cmd == b"RSET":
                    rcpts = []
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif cmd == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"250 2.0.0 Ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            try:
                writer.close()
            except Exception:                            # noqa: BLE001
                pass

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def start():
            self._server = await asyncio.start_server(
                self._session, self.host, self.port, limit=1 << 20, backlog=1000)
        loop.run_until_complete(start())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

    def __enter__(self) -> "ProbeSink":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("probe sink did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def first_arrival(self, address: str) -> float | None:
        with self._lock:
            v = self.arrivals.get(address.lower())
            return v[0] if v else None

    def duplicates(self) -> int:
        with self._lock:
            return sum(len(v) - 1 for v in self.arrivals.values() if len(v) > 1)


# --------------------------------------------------------------------------
# /proc readings
# --------------------------------------------------------------------------

def proc_status_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, ...), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def proc_rss_kib(pid: int) -> int | None:
    return proc_status_kib(pid, "VmRSS")


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        fields = data[data.rfind(")") + 2:].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------
# is anybody else using the machine?
# --------------------------------------------------------------------------

def _cpu_snapshot() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]          # total, idle + iowait


def idle_pct(interval: float = 1.0) -> float:
    """Machine-wide idle CPU % (idle + iowait) over ``interval`` seconds."""
    t0, i0 = _cpu_snapshot()
    time.sleep(interval)
    t1, i1 = _cpu_snapshot()
    return 100.0 * (i1 - i0) / max(1, t1 - t0)


def wait_for_idle(min_idle: float, max_wait: float, interval: float = 1.0) -> float:
    """Before a timed run: waits (at most ``max_wait`` s) until the machine
    was at least ``min_idle`` % idle for one ``interval``; returns the last
    idle figure (the caller prints it, so a run on a busy machine shows)."""
    deadline = time.monotonic() + max_wait
    idle = idle_pct(interval)
    while idle < min_idle and time.monotonic() < deadline:
        idle = idle_pct(interval)
    return idle
