"""Postfix-side helpers for the Ferrymail benchmarks (Python 3.11, stdlib only).

* ``TempPostfix``  - a private Postfix 3.7 instance in a temporary directory.
* ``SmtpSink``     - Postfix's ``smtp-sink`` as a context manager.
* ``run_smtp_source`` - Postfix's ``smtp-source`` load generator.
* ``free_port``, ``wait_for_banner``, ``fs_type`` - small shared utilities.

Everything here starts processes and always stops them again (context managers),
with bounded waits everywhere.  Must run as root (Postfix's master needs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

POSTFIX_BIN_DIRS = ["/usr/sbin", "/usr/bin", "/usr/lib/postfix/sbin"]

# Where benchmark scratch directories go.  Keep it on a real disk: on tmpfs
# fsync is free and both MTAs would look faster than they are.
BENCH_TMPDIR_ENV = "FERRY_BENCH_TMPDIR"


# --------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------

def which(prog: str) -> str:
    """Absolute path of a Postfix program, or raise with a hint."""
    found = shutil.which(prog)
    if found:
        return found
    for d in POSTFIX_BIN_DIRS:
        cand = os.path.join(d, prog)
        if os.access(cand, os.X_OK):
            return cand
    raise FileNotFoundError(
        f"{prog} not found; run scripts/test-deps (installs Postfix)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_banner(host: str, port: int, timeout: float = 20.0,
                    proc: subprocess.Popen | None = None) -> str:
    """Connect until the server sends a 220 greeting; return that line.

    Bounded by ``timeout``; if ``proc`` is given and exits meanwhile, fail fast.
    """
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server process exited with {proc.returncode} before "
                f"answering on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=2.0) as s:
                s.settimeout(max(0.5, min(5.0, deadline - time.monotonic())))
                data = b""
                while b"\n" not in data:
                    chunk = s.recv(512)
                    if not chunk:
                        break
                    data += chunk
                line = data.split(b"\n", 1)[0].decode("latin-1").rstrip("\r")
                if line.startswith("220"):
                    try:
                        s.sendall(b"QUIT\r\n")
                    except OSError:
                        pass
                    return line
                last_err = RuntimeError(f"unexpected greeting {line!r}")
        except OSError as e:
            last_err = e
        time.sleep(0.1)
    raise TimeoutError(
        f"no 220 banner from {host}:{port} within {timeout:.0f}s "
        f"(last error: {last_err})")


def fs_type(path: str | os.PathLike) -> str:
    """File-system type holding ``path`` (from /proc/self/mounts), or '?'."""
    path = os.path.realpath(path)
    best, best_type = "", "?"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) \
                        and len(mnt) >= len(best):
                    best, best_type = mnt, parts[2]
    except OSError:
        pass
    return best_type


def bench_tmpdir() -> str | None:
    """Parent directory for scratch dirs ($FERRY_BENCH_TMPDIR or the default)."""
    d = os.environ.get(BENCH_TMPDIR_ENV)
    if d:
        os.makedirs(d, exist_ok=True)
    return d or None


def _stop_process(proc: subprocess.Popen, term_timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL.  Only for processes this module started."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------
# smtp-source
# --------------------------------------------------------------------------

@dataclass
class SourceResult:
    ok: bool            # smtp-source exited 0: every message got 250 after DATA
    elapsed: float      # wall-clock seconds, process start to exit
    count: int          # messages requested
    returncode: int
    stderr: str         # smtp-source's complaints (first few KiB)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.ok and self.elapsed > 0 else 0.0


def run_smtp_source(port: int, count: int, sessions: int = 20, size: int = 1024,
                    one_msg_per_conn: bool = True, host: str = "127.0.0.1",
                    sender: str = "bench@source.example",
                    rcpt_local: str = "rcpt",
                    rcpt_domain: str = "bench.example",
                    recipients: int = 1,
                    helo: str = "source.example",
                    timeout: float | None = None,
                    extra_args: list[str] | None = None) -> SourceResult:
    """Send ``count`` messages with Postfix's ``smtp-source`` and time it.

    smtp-source defaults to one message per connection (QUIT after each
    message); ``one_msg_per_conn=False`` adds ``-d`` (many per connection).
    ``-l size`` is the body length, headers not counted.  Without ``-A``
    smtp-source aborts (exit != 0) on any reply other than the expected
    positive one, so ``ok`` means all ``count`` messages were accepted with
    250 after DATA.  The wait is bounded by ``timeout`` (default: generous,
    scales with ``count``); on timeout smtp-source is killed and ok=False.
    """
    argv = [which("smtp-source"), "-4",
            "-s", str(sessions), "-l", str(size), "-m", str(count),
            "-f", sender, "-t", f"{rcpt_local}@{rcpt_domain}",
            "-M", helo]
    if recipients > 1:
        argv += ["-r", str(recipients)]
    if not one_msg_per_conn:
        argv.append("-d")
    if extra_args:
        argv += extra_args
    argv.append(f"{host}:{port}")
    if timeout is None:
        timeout = 60.0 + count / 20.0      # >= 20 msg/s or it is broken anyway
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        rc = -9
        err = (err or b"") + f"\n(smtp-source killed after {timeout:.0f}s)".encode()
    elapsed = time.monotonic() - start
    return SourceResult(ok=(rc == 0), elapsed=elapsed, count=count,
                        returncode=rc,
                        stderr=(err or b"").decode("utf-8", "replace")[-4000:])


# --------------------------------------------------------------------------
# smtp-sink
# --------------------------------------------------------------------------

class SmtpSink:
    """Postfix's ``smtp-sink`` on 127.0.0.1:port, as a context manager.

    ``extra_args`` go before the address (e.g. ``["-r", "RCPT"]`` to 4xx every
    RCPT, ``["-W", "DATA:5"]`` to stall).  Runs ``-u nobody`` when root (it
    refuses to run as root otherwise).  ``-c`` prints running counters on
    stdout, which we discard; pass ``-M N`` in extra_args to stop after N msgs.
    """

    def __init__(self, port: int | None = None, backlog: int = 1000,
                 extra_args: list[str] | None = None, host: str = "127.0.0.1",
                 max_conns: int = 1000):
        self.host = host
        self.port = port or free_port(host)
        self.backlog = backlog
        self.extra_args = list(extra_args or [])
        self.max_conns = max_conns
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __enter__(self) -> "SmtpSink":
        argv = [which("smtp-sink")]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += ["-m", str(self.max_conns)] + self.extra_args
        argv += [f"{self.host}:{self.port}", str(self.backlog)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE,
                                     start_new_session=True)
        try:
            wait_for_banner(self.host, self.port, timeout=10, proc=self.proc)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            _stop_process(self.proc, term_timeout=5)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None


# --------------------------------------------------------------------------
# a private Postfix instance
# --------------------------------------------------------------------------

# master.cf for the private instance.  Debian's stock master.cf chroots most
# daemons (column 5 = y), which needs copies of /etc files inside the queue
# directory; a benchmark instance runs everything unchrooted instead.
# {listen} is replaced by "127.0.0.1:PORT".
_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen}  inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class TempPostfix:
    """A private Postfix instance with its own config and queue directories.

    ``TempPostfix(port)`` listens with smtpd on 127.0.0.1:port, relays for
    127.0.0.0/8 (mynetworks) and has no local domains (mydestination empty).

    ``relay_to=(host, port)``: all mail goes to ``relayhost = [host]:port``
    (e.g. an smtp-sink), no DNS, no TLS, no connection caching tricks beyond
    Postfix's defaults.

    ``defer_delivery=True``: accept-only.  Every message is put on the
    ``hold`` queue at RCPT time (``smtpd_recipient_restrictions =
    check_client_access static:HOLD``), so the queue manager never sees it:
    no move to ``active``, no delivery agent, no defer log.  What is measured
    is Postfix's accept path: smtpd -> cleanup (-> trivial-rewrite) -> queue
    file written and fsync'ed -> 250, plus one "hold" log line per message.
    Rejected alternatives, both measured on the 2-core box:
    * ``defer_transports = smtp`` (+ a relayhost): qmgr still moves every
      message incoming -> active -> deferred and the bounce daemon writes a
      defer log per message, i.e. delivery-side disk work during the
      measurement; about 35% slower than hold, so unfair to Postfix.
    * dropping ``qmgr`` from master.cf: cleanup then fails to notify
      public/qmgr, logs a warning and stalls about a second per message
      (20 msg/s with 20 sessions), so that is not accept throughput either.

    fsync stays on (Postfix's default).  Needs root.  Logs go to
    ``<tmp>/log/maillog`` (``maillog_file`` + the ``postlog`` service), not
    syslog.  ``keep=True`` leaves the directory behind for inspection.
    """

    def __init__(self, port: int, relay_to: tuple[str, int] | None = None,
                 defer_delivery: bool = False, keep: bool = False,
                 extra_main: dict[str, str] | None = None,
                 hostname: str = "postfix-bench.localdomain"):
        self.port = port
        self.relay_to = relay_to
        self.defer_delivery = defer_delivery
        self.keep = keep
        self.extra_main = dict(extra_main or {})
        self.hostname = hostname
        self.base: Path | None = None
        self.started = False

    # -- paths ---------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        assert self.base is not None
        return self.base / "etc"

    @property
    def queue_dir(self) -> Path:
        assert self.base is not None
        return self.base / "spool"

    @property
    def data_dir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        assert self.base is not None
        return self.base / "log" / "maillog"

    # -- configuration -------------------------------------------------
    def main_cf(self) -> dict[str, str]:
        assert self.base is not None
        p = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "mydomain": "localdomain",
            "myorigin": "$myhostname",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtpd_relay_restrictions":
                "permit_mynetworks, reject_unauth_destination",
            "smtpd_banner": "$myhostname ESMTP",
            "biff": "no",
            # distinct names so several instances' logs never mix
            "syslog_name": f"postfix-bench-{self.port}",
            "maillog_file": str(self.log_file),
            # maillog_file must start with one of these prefixes
            "maillog_file_prefixes": str(self.base),
        }
        if self.defer_delivery:
            # accept and queue, never deliver: everything goes to "hold"
            p["smtpd_recipient_restrictions"] = "check_client_access static:HOLD"
        if self.relay_to is not None:
            h, pt = self.relay_to
            p.update({
                "relayhost": f"[{h}]:{pt}",
                "smtp_tls_security_level": "none",
                "smtp_dns_support_level": "disabled",
                "smtp_address_preference": "ipv4",
                "smtp_helo_name": "$myhostname",
                "smtp_destination_concurrency_limit": "20",
            })
        p.update(self.extra_main)
        return p

    def master_cf(self) -> str:
        return _MASTER_CF.format(listen=f"127.0.0.1:{self.port}")

    def _run(self, *args: str, check: bool = True, timeout: float = 60,
             quiet: bool = False) -> subprocess.CompletedProcess:
        cp = subprocess.run(list(args), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({cp.returncode}):\n"
                f"{cp.stdout}{cp.stderr}\n{self.log_tail()}")
        return cp

    def setup(self) -> None:
        if os.geteuid() != 0:
            raise PermissionError("TempPostfix needs root (Postfix master)")
        self.base = Path(tempfile.mkdtemp(prefix=f"ferry-postfix-{self.port}-",
                                          dir=bench_tmpdir()))
        # Postfix's own processes run as "postfix" and must traverse the
        # path; mkdtemp makes 0700.  Config and queue dirs must be root-owned
        # and not group/other writable or postfix-script complains.
        os.chmod(self.base, 0o755)
        for d in (self.config_dir, self.queue_dir, self.log_file.parent):
            d.mkdir(mode=0o755)
            os.chmod(d, 0o755)
        (self.config_dir / "master.cf").write_text(self.master_cf())
        (self.config_dir / "main.cf").write_text(
            "# written by bench/lib/postfix.py\n")
        # postconf -e writes main.cf with Postfix's own quoting rules
        settings = [f"{k}={v}" for k, v in self.main_cf().items()]
        self._run(which("postconf"), "-c", str(self.config_dir), "-e", *settings)
        for f in ("main.cf", "master.cf"):
            os.chmod(self.config_dir / f, 0o644)

    def start(self) -> None:
        # "postfix start" runs post-install create-missing (queue dirs with
        # the right owners), postsuper, then master -w which returns once
        # the master is up.
        cp = self._run(which("postfix"), "-c", str(self.config_dir), "start",
                       check=False, timeout=120)
        if cp.returncode != 0:
            raise RuntimeError(f"postfix start failed ({cp.returncode}):\n"
                               f"{cp.stdout}{cp.stderr}\n{self.log_tail()}")
        self.started = True
        wait_for_banner("127.0.0.1", self.port, timeout=20)

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        try:
            self._run(which("postfix"), "-c", str(self.config_dir), "stop",
                      check=False, timeout=30)
        except subprocess.TimeoutExpired:
            pass
        # postfix stop waits up to 5 s, then kill -9's the process group;
        # make sure our master is really gone before removing its files.
        pid = self._master_pid()
        if pid:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _master_pid(self) -> int | None:
        try:
            txt = (self.queue_dir / "pid" / "master.pid").read_text().split()
            return int(txt[0]) if txt else None
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        if self.base is not None and not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "TempPostfix":
        try:
            self.setup()
            self.start()
        except BaseException:
            self.stop()
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.cleanup()

    # -- inspection ----------------------------------------------------
    def postconf(self, *names: str) -> dict[str, str]:
        cp = self._run(which("postconf"), "-c", str(self.config_dir), *names)
        out = {}
        for line in cp.stdout.splitlines():
            k, _, v = line.partition(" = ")
            out[k.strip()] = v
        return out

    QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")

    def queue_files(self) -> dict[str, int]:
        """Queue files per queue, counted on disk (cheap, needs root)."""
        counts = {}
        for q in self.QUEUES:
            n = 0
            for _root, _dirs, files in os.walk(self.queue_dir / q):
                n += len(files)
            counts[q] = n
        return counts

    def queue_json(self) -> list[dict]:
        """``postqueue -c DIR -j``: one dict per queued message (via showq)."""
        cp = self._run(which("postqueue"), "-c", str(self.config_dir), "-j",
                       timeout=120)
        return [json.loads(l) for l in cp.stdout.splitlines() if l.strip()]

    def queued_count(self) -> int:
        """Messages in the queue (postqueue -j, falling back to a file count)."""
        try:
            return len(self.queue_json())
        except Exception:
            return sum(self.queue_files().values())

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except (OSError, AssertionError):
            return "(no Postfix log)"
        return "\n".join(lines[-n:])

    def log_problems(self) -> list[str]:
        """warning/error/fatal/panic lines from the instance's log."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return []
        return [l for l in text.splitlines()
                if re.search(r"\b(warning|error|fatal|panic):", l)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def postfix_version() -> str:
    try:
        cp = subprocess.run([which("postconf"), "-d", "-h", "mail_version"],
                            capture_output=True, text=True, timeout=30)
        return cp.stdout.strip() or "?"
    except Exception:
        return "?"
