"""A private PostgreSQL 15 for the benchmarks (Python 3.11, stdlib only).

``TempPostgres`` runs initdb into a scratch directory and starts a server on
a free loopback port with durable settings (fsync, synchronous_commit and
full_page_writes on: PostgreSQL's defaults) and ``pg_stat_statements``
loaded, so a benchmark can count the statements each message costs.  It is
not the test server of ``scripts/postgres-test-server``, which runs with
fsync off and must not be measured.

initdb refuses to run as root: as root the cluster belongs to ``postgres``
(or ``nobody``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from postfix import bench_tmpdir, free_port

PG_BIN = Path(os.environ.get("FERRYMAIL_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _owner() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


class TempPostgres:
    """PostgreSQL 15 in a temporary directory; ``url(db)`` names a database."""

    def __init__(self, shared_buffers: str = "128MB", keep: bool = False):
        self.shared_buffers = shared_buffers
        self.keep = keep
        self.base: Path | None = None
        self.port = 0
        self.owner = _owner()

    def _as_owner(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        if self.owner:
            argv = ["runuser", "-u", self.owner, "--", *argv]
        return subprocess.run(argv, cwd=self.base, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, **kw)

    def __enter__(self) -> "TempPostgres":
        if not (PG_BIN / "initdb").exists():
            raise FileNotFoundError(f"{PG_BIN}/initdb (run scripts/test-deps)")
        self.base = Path(tempfile.mkdtemp(prefix="ferry-bench-pg-", dir=bench_tmpdir()))
        os.chmod(self.base, 0o700)
        if self.owner:
            shutil.chown(self.base, self.owner)
        r = self._as_owner([str(PG_BIN / "initdb"), "-D", str(self.base / "data"),
                            "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"],
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stdout}{r.stderr}")
        self.port = free_port()
        conf = self.base / "data" / "postgresql.auto.conf"
        conf.write_text(f"""listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.base}'
max_connections = 300
shared_buffers = {self.shared_buffers}
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
logging_collector = off
""")
        if self.owner:
            shutil.chown(conf, self.owner)
        r = self._as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.base / "data"),
                            "-l", str(self.base / "server.log"), "-w", "-t", "60",
                            "start"], timeout=90)
        if r.returncode != 0:
            log = (self.base / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start: {r.stderr}\n{log}")
        self.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return self

    def __exit__(self, *exc) -> None:
        if self.base is None:
            return
        self._as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.base / "data"),
                        "-m", "fast", "-w", "-t", "60", "stop"], timeout=90)
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def sql(self, query: str, db: str = "postgres") -> str:
        """Runs ``query`` with psql; its unaligned, tuples-only output."""
        r = subprocess.run([str(PG_BIN / "psql"), "-X", "-A", "-t", "-F", "\t",
                            "-v", "ON_ERROR_STOP=1", "-d", self.url(db), "-c", query],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"psql {query!r}: {r.stderr.strip()}")
        return r.stdout.strip()

    def backend_cpu_seconds(self) -> float:
        """utime + stime of every process of this server (postmaster and its
        children: backends, WAL writer, checkpointer), in seconds, as far
        as they are alive now."""
        assert self.base is not None
        try:
            pid = int((self.base / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        total = 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            fields = data[data.rfind(")") + 2:].split()
            if int(entry) == pid or int(fields[1]) == pid:
                # own CPU plus that of children already reaped
                total += (int(fields[11]) + int(fields[12]) + int(fields[13])
                          + int(fields[14])) / ticks
        return total


def wait_sql(pg: TempPostgres, query: str, want: str, db: str,
             timeout: float) -> str:
    """Polls ``query`` until it prints ``want`` (or timeout); the last value."""
    deadline = time.monotonic() + timeout
    got = pg.sql(query, db)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = pg.sql(query, db)
    return got
