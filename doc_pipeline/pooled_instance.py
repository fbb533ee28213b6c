"""The Dagster instance class of doc_pipeline's homes (`instance_class` in dagster.yaml): the
storage of dagster-postgres on pooled connections.

dagster-postgres opens a new database connection for almost every read and write of the run
and event-log storage (1.13.27 has no pool option: dagster-io/dagster#33935); a run of the
document job opened about 194 of them. Its webserver holds pooled engines instead, through
`DagsterInstance.optimize_for_webserver`; this class turns that on for every process that opens
the instance (the CLI, run workers, the daemon, code servers). That method is not part of
Dagster's documented API, so the Dagster packages are pinned and `test_pooled_instance.py`
checks that the storages' engines are pooled, that disposing the instance closes them, and what
a run costs in connections.
"""

from __future__ import annotations

import contextlib
from typing import Any

import sqlalchemy.exc
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from sqlalchemy import event

# No statement timeout (the webserver's default is 15 s: a run's writes must not be cut off);
# connections older than an hour are replaced; beyond the one kept open per storage, up to
# this many more at once (threads of one process: heartbeats, concurrent AI requests logging).
STATEMENT_TIMEOUT_MS = 0
POOL_RECYCLE_SECONDS = 3600
MAX_OVERFLOW = 10


def _ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """A pooled connection is tried before use (SQLAlchemy's pessimistic disconnect handling):
    after the server restarted, the pool connects again instead of failing the run's next
    write, and a server that is down fails it with a connection error naming the server."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT 1")
    except Exception as error:
        raise sqlalchemy.exc.DisconnectionError() from error
    finally:
        with contextlib.suppress(Exception):
            cursor.close()


class PooledInstance(DagsterInstance):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.optimize_for_webserver(
            statement_timeout=STATEMENT_TIMEOUT_MS,
            pool_recycle=POOL_RECYCLE_SECONDS,
            max_overflow=MAX_OVERFLOW,
        )
        for engine in self.storage_engines():
            event.listen(engine, "checkout", _ping)

    # A custom instance class must say its own config and defaults (InstanceRef.from_dir).
    @classmethod
    def config_schema(cls) -> dict:
        return {}  # no settings of its own in dagster.yaml

    @classmethod
    def config_defaults(cls, base_dir: str) -> dict:
        return InstanceRef.config_defaults(base_dir)

    def storage_engines(self) -> list[Any]:
        """The SQLAlchemy engines of the run, event-log and schedule storage."""
        storages = (self._run_storage, self._event_storage, self._schedule_storage)
        return [storage._engine for storage in storages if hasattr(storage, "_engine")]

    def dispose(self) -> None:
        super().dispose()
        # Dagster's storages do not dispose their engines; pooled ones hold connections open
        # (a database being renamed or dropped must have none).
        for engine in self.storage_engines():
            engine.dispose()
