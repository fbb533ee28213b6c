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

Two more cuts of what a run costs the instance's database: a pooled connection is pinged before
use only after it was idle a while, and debug log lines that are not Dagster events are not
stored in the event log.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy.exc
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.log_manager import get_log_record_metadata, has_log_record_metadata
from sqlalchemy import event

# No statement timeout (the webserver's default is 15 s: a run's writes must not be cut off);
# connections older than an hour are replaced; beyond the one kept open per storage, up to
# this many more at once (threads of one process: heartbeats, concurrent AI requests logging).
STATEMENT_TIMEOUT_MS = 0
POOL_RECYCLE_SECONDS = 3600
MAX_OVERFLOW = 10
# A connection given back longer ago than this is pinged before it is used again.
PING_AFTER_IDLE_SECONDS = 1.0


def _remember_checkin(dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """A pooled connection that was idle for a while is tried before use (SQLAlchemy's
    pessimistic disconnect handling): after the server restarted, the pool connects again
    instead of failing the run's next write, and a server that is down fails it with a
    connection error naming the server. One just given back is not: a run of the document job
    checks a connection out about 130 times, and those pings were two in five of the statements
    it sent to the instance's database. A server that went away in the last second fails one write,
    and SQLAlchemy then replaces the pool's connections."""
    checked_in_at = record.info.get("checked_in_at")
    if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_SECONDS:
        return  # just connected, or just given back
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


def _stored_in_event_log(record: logging.LogRecord) -> bool:
    """Dagster's events (STEP_START and others are logged at DEBUG) and log lines at INFO or
    above. Debug lines are not stored: Dagster's IO manager writes three a step ("Loading 1
    partitions...", "Loading partition ... from ...", "Writing file at ...") that repeat what
    its LOADED_INPUT and HANDLED_OUTPUT events say, 13% of a run's events; a run's console logger
    set to DEBUG still prints them."""
    if record.levelno >= logging.INFO or not has_log_record_metadata(record):
        return True
    return get_log_record_metadata(record).get("dagster_event") is not None


class PooledInstance(DagsterInstance):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.optimize_for_webserver(
            statement_timeout=STATEMENT_TIMEOUT_MS,
            pool_recycle=POOL_RECYCLE_SECONDS,
            max_overflow=MAX_OVERFLOW,
        )
        for engine in self.storage_engines():
            event.listen(engine, "checkin", _remember_checkin)
            event.listen(engine, "checkout", _ping_if_idle)
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

    def get_event_log_handler(self) -> logging.Handler:
        handler = super().get_event_log_handler()
        handler.addFilter(_stored_in_event_log)
        return handler

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
