"""Which started runs are dead (DESIGN rule 5): decided from their heartbeats, never assumed.

A run is reaped when the process that runs it is gone (when it ran on this host): the one that
beat for it, or, before its first beat, the one its launcher named (a run killed after it claimed
an AI pool slot and before its first heartbeat would otherwise hold that slot for `stale_after`).
It is also reaped when its newest heartbeat is older than `stale_after`, or when it never beat
and started longer ago than that (unless its named worker is alive here: waiting for a pool slot
is not silence). A run that is alive, for example one blocked for 20 minutes in one AI call with
its heartbeat thread still beating, is never reaped.

Where the run launcher checks its run workers' health (Kubernetes), Dagster's run monitoring
says whether a worker is dead: a run of that launcher that never beat is left to it (its worker
may be waiting for a pool slot on another host, where no pid can be checked); one whose beats
stopped is still reaped, since its worker is alive to the launcher but hung.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

DEFAULT_STALE_AFTER = timedelta(minutes=30)


def is_stale(last_beat: datetime | None, now: datetime, stale_after: timedelta) -> bool:
    """A step with no beat at all, or whose newest beat is older than `stale_after`."""
    return last_beat is None or now - last_beat > stale_after


@dataclass(frozen=True)
class StartedRun:
    run_id: str
    document_id: str | None
    started_at: datetime | None
    last_beat: datetime | None  # newest heartbeat of any of its steps
    beat_host: str | None  # where that heartbeat came from
    beat_pid: int | None
    stale_after: timedelta | None = None  # this run's own limit (a job or run tag), if any
    # The process its launcher said would run it (the CLI runs its runs in its own process).
    worker_host: str | None = None
    worker_pid: int | None = None
    # Its launcher checks its worker's health, and Dagster's run monitoring acts on it.
    health_checked: bool = False


@dataclass(frozen=True)
class Verdict:
    run_id: str
    document_id: str | None
    reason: str
    # Its worker's process is known to be gone; otherwise it may be alive but hung.
    worker_gone: bool = False


def _duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def dead_runs(
    runs: list[StartedRun],
    *,
    now: datetime,
    stale_after: timedelta,
    this_host: str,
    pid_alive: Callable[[int], bool],
) -> list[Verdict]:
    verdicts = []
    default_stale_after = stale_after
    for run in runs:
        stale_after = run.stale_after or default_stale_after
        reason = None
        gone = False
        host, pid = (
            (run.beat_host, run.beat_pid)
            if run.beat_pid is not None
            else (run.worker_host, run.worker_pid)
        )
        watched = host == this_host and pid is not None
        if watched and not pid_alive(pid):
            reason = f"its run worker (pid {pid} on {this_host}) is gone"
            gone = True
        elif run.last_beat is None:
            # A named worker alive here that never beat is waiting, e.g. for an `ai` pool slot;
            # so may be one the launcher watches.
            started = run.started_at
            judged_by_age = not watched and not run.health_checked
            if judged_by_age and started is not None and is_stale(started, now, stale_after):
                reason = f"it started {_duration(now - started)} ago and never sent a heartbeat"
        elif is_stale(run.last_beat, now, stale_after):
            reason = (
                f"its last heartbeat was {_duration(now - run.last_beat)} ago "
                f"(stale after {_duration(stale_after)})"
            )
        if reason:
            verdicts.append(Verdict(run.run_id, run.document_id, reason, worker_gone=gone))
    return verdicts
