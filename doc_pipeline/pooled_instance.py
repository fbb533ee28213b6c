"""The Dagster instance class of doc_pipeline's homes (`instance_class` in dagster.yaml): the
storage of dagster-postgres on pooled connections, and its schema looked up once.

dagster-postgres opens a new database connection for almost every read and write of the run
and event-log storage (1.13.27 has no pool option: dagster-io/dagster#33935); a run of the
document job opened about 194 of them. Its webserver holds pooled engines instead, through
`DagsterInstance.optimize_for_webserver`; this class turns that on for every process that opens
the instance (the CLI, run workers, the daemon, code servers). That method is not part of
Dagster's documented API, so the Dagster packages are pinned and `test_pooled_instance.py`
checks that the storages' engines are pooled, that disposing the instance closes them, and what
a run costs in connections.

Dagster's SQL storages also ask the database whether a table or column exists (SQLAlchemy
reflection of the catalog) before many reads and writes, about 40 catalog queries a run, never
cached. A table or column of the instance's schema that exists keeps existing while the
instance is open (only `dagster instance migrate` adds them), so a "yes" is remembered; a "no"
is asked again, so a migration made by another process meanwhile is still seen.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
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


# The storages' schema checks that reflect the catalog on every call (dagster 1.13.27; the
# others are cached by Dagster itself). `_on_connection` variants take a connection first.
SCHEMA_CHECKS = {
    "_event_storage": (
        "has_table",
        "has_asset_key_col",
        "has_asset_key_index_cols",
        "_has_asset_key_col_on_connection",
        "_has_asset_key_index_cols_on_connection",
    ),
    "_run_storage": (
        "has_run_stats_index_cols",
        "has_bulk_actions_selector_cols",
        "has_backfill_id_column",
        "has_bulk_action_job_name_column",
        "has_backfill_tags_table",
    ),
    "_schedule_storage": ("has_instigators_table", "has_secondary_index_table"),
}


def _remembering_yes(check: Callable[..., bool], takes_connection: bool) -> Callable[..., bool]:
    known: set[tuple] = set()

    @functools.wraps(check)
    def remembered(*args: Any) -> bool:
        key = args[1:] if takes_connection else args
        if key in known:
            return True
        found = check(*args)
        if found:
            known.add(key)
        return found

    return remembered


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
        self._remember_schema()

    def _remember_schema(self) -> None:
        for attribute, names in SCHEMA_CHECKS.items():
            storage = getattr(self, attribute, None)
            for name in names:
                check = getattr(storage, name, None)
                if check is not None:
                    remembered = _remembering_yes(check, name.endswith("_on_connection"))
                    setattr(storage, name, remembered)

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
