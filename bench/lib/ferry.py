"""Ferrymail-side helpers for the benchmarks (Python 3.11, stdlib only).

* ``TempFerrymail`` - runs ``target/release/ferrymail serve -c FILE`` with a
  config written into a temporary directory (keys per
  shared/design/INTERFACE.md), waits for the 220 banner, stops it with
  SIGTERM (SIGKILL after 10 s).
* ``Blackhole``     - a TCP listener that never accepts: a delivery route
  pointed at it hangs in connect, so the MTA's delivery side does no work.
* ``ensure_binary`` - builds the release binary when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from postfix import bench_tmpdir, free_port, wait_for_banner  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = REPO_ROOT / "target" / "release" / "ferrymail"


def ensure_binary(binary: str | os.PathLike | None = None,
                  force_build: bool = False, timeout: float = 3600) -> Path:
    """Path of the ferrymail binary.

    The default (``target/release/ferrymail``) is built with ``cargo build
    --release`` at the workspace root when missing, or always with
    ``force_build`` (a quick no-op when up to date).  An explicit ``binary``
    is used as it is.
    """
    path = Path(binary).resolve() if binary else DEFAULT_BINARY
    if path == DEFAULT_BINARY and (force_build or not path.exists()):
        print(f"building {path} (cargo build --release) ...",
              file=sys.stderr, flush=True)
        subprocess.run(["cargo", "build", "--release"], cwd=REPO_ROOT,
                       check=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found (after cargo build --release, is there a "
            "`ferrymail` bin target yet?)")
    return path


class Blackhole:
    """127.0.0.1:port that listens but never accepts.

    The first connection or so completes in the kernel's backlog and then
    never sees a greeting; later SYNs are dropped, so connects hang until the
    client's own timeout.  Either way a delivery attempt just waits, costing
    the MTA nothing while the benchmark runs.
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.sock: socket.socket | None = None
        self.port = 0

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __enter__(self) -> "Blackhole":
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((self.host, 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def blackhole_route_toml(address: tuple[str, int],
                         route_id: str = "blackhole") -> str:
    """TOML that sends every message to one relay route (INTERFACE.md)."""
    host, port = address
    return f"""
[queue.route.{route_id}]
type = "relay"
address = "{host}"
port = {port}
protocol = "smtp"

[queue.strategy]
route = "'{route_id}'"
"""


class TempFerrymail:
    """``ferrymail serve`` on 127.0.0.1:port with its own store directory.

    The config has exactly the tables below; ``extra_toml`` is appended
    verbatim, so it may add tables but must not repeat these ones
    (``[server]``, ``[server.listener.smtp]``, ``[server.listener.management]``,
    ``[store.local]``, ``[storage]``, ``[session.rcpt]``): TOML forbids that.
    ``[session.rcpt] relay = "true"`` lets anyone relay: benchmark only.
    """

    def __init__(self, port: int, mgmt_port: int, extra_toml: str = "",
                 binary: str | os.PathLike | None = None, keep: bool = False,
                 hostname: str = "ferry-bench.localdomain",
                 start_timeout: float = 20.0, env: dict | None = None):
        """``env``: extra environment variables for ferrymail (e.g. RUST_LOG)."""
        self.port = port
        self.mgmt_port = mgmt_port
        self.extra_toml = extra_toml
        self.binary = binary
        self.keep = keep
        self.hostname = hostname
        self.start_timeout = start_timeout
        # plain log lines in the log file (tracing honours NO_COLOR)
        self.env = {**os.environ, "NO_COLOR": "1", **(env or {})}
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def config_file(self) -> Path:
        assert self.base is not None
        return self.base / "ferrymail.toml"

    @property
    def data_dir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        assert self.base is not None
        return self.base / "ferrymail.log"

    def config_text(self) -> str:
        assert self.base is not None
        return f"""# written by bench/lib/ferry.py
[server]
hostname = "{self.hostname}"

[server.listener.smtp]
bind = ["127.0.0.1:{self.port}"]
protocol = "smtp"

[server.listener.management]
bind = ["127.0.0.1:{self.mgmt_port}"]
protocol = "http"

[store.local]
type = "embedded"
path = "{self.data_dir}"

[storage]
data = "local"
blob = "local"

[session.rcpt]
relay = "true"
{self.extra_toml}
"""

    def _cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binary), *args], cwd=self.base,
                              stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, env=self.env)

    def __enter__(self) -> "TempFerrymail":
        self.binary = ensure_binary(self.binary)
        self.base = Path(tempfile.mkdtemp(prefix=f"ferry-serve-{self.port}-",
                                          dir=bench_tmpdir()))
        try:
            self.config_file.write_text(self.config_text())
            # advisory: a clear message if the config is rejected
            try:
                chk = self._cli("check", "-c", str(self.config_file), timeout=30)
                check_note = (f"`ferrymail check` exited {chk.returncode}: "
                              f"{chk.stdout}{chk.stderr}".strip())
            except (OSError, subprocess.TimeoutExpired) as e:
                check_note = f"`ferrymail check` failed: {e}"
            self._log = open(self.log_file, "wb")
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "-c", str(self.config_file)],
                cwd=self.base, stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
            try:
                wait_for_banner("127.0.0.1", self.port,
                                timeout=self.start_timeout, proc=self.proc)
            except Exception as e:
                raise RuntimeError(
                    f"ferrymail did not come up: {e}\n"
                    f"--- log tail ---\n{self.log_tail()}\n{check_note}\n"
                    f"--- config ---\n{self.config_text()}") from None
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def stop(self) -> int | None:
        """SIGTERM, up to 10 s for the graceful drain, then SIGKILL.
        Returns the exit status (negative: killed by that signal)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        return proc.returncode

    def __exit__(self, *exc) -> None:
        try:
            self.exit_status = self.stop()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self.base is not None and not self.keep:
                shutil.rmtree(self.base, ignore_errors=True)

    # -- inspection ----------------------------------------------------
    def queue_list(self) -> object | None:
        """``ferrymail queue list --json`` parsed, or None if unavailable."""
        try:
            cp = self._cli("queue", "list", "-c", str(self.config_file),
                           "--json", timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if cp.returncode != 0:
            return None
        try:
            return json.loads(cp.stdout)
        except json.JSONDecodeError:
            return None

    def queued_count(self) -> int | None:
        """Distinct queued messages per ``queue list --json``; None if the
        command is not there yet or its shape is unknown."""
        doc = self.queue_list()
        if isinstance(doc, dict):
            for key in ("messages", "items", "queue", "entries", "recipients"):
                if isinstance(doc.get(key), list):
                    doc = doc[key]
                    break
        if not isinstance(doc, list):
            return None
        ids = set()
        for item in doc:
            if isinstance(item, dict):
                for key in ("id", "message_id", "queue_id", "msg_id"):
                    if key in item:
                        ids.add(str(item[key]))
                        break
                else:
                    return len(doc)
            else:
                return len(doc)
        return len(ids)

    def log_tail(self, n: int = 30) -> str:
        try:
            if self._log is not None:
                self._log.flush()
            lines = self.log_file.read_text(errors="replace").splitlines()
        except (OSError, AssertionError):
            return "(no ferrymail log)"
        return "\n".join(lines[-n:])
