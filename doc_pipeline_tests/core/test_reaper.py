from datetime import UTC, datetime, timedelta

from doc_pipeline.core.reaper import StartedRun, dead_runs

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
STALE = timedelta(minutes=30)


def _judge(*runs: StartedRun, alive=lambda pid: True) -> dict[str, str]:
    verdicts = dead_runs(list(runs), now=NOW, stale_after=STALE, this_host="here", pid_alive=alive)
    return {v.run_id: v.reason for v in verdicts}


def _run(
    run_id, *, beat_minutes_ago=None, started_minutes_ago=60, host="here", pid=10, stale_after=None
):
    beat = NOW - timedelta(minutes=beat_minutes_ago) if beat_minutes_ago is not None else None
    started = NOW - timedelta(minutes=started_minutes_ago)
    return StartedRun(
        run_id,
        "doc",
        started,
        beat,
        host if beat else None,
        pid if beat else None,
        stale_after=stale_after,
    )


def test_a_beating_run_is_alive_even_when_it_started_long_ago():
    assert _judge(_run("r", beat_minutes_ago=29, started_minutes_ago=600)) == {}


def test_a_silent_run_is_stale():
    reasons = _judge(_run("r", beat_minutes_ago=31))
    assert "31 min ago" in reasons["r"] and "stale after 30 min" in reasons["r"]


def test_a_run_whose_worker_died_on_this_host_is_reaped_at_once():
    reasons = _judge(_run("r", beat_minutes_ago=0), alive=lambda pid: pid != 10)
    assert "pid 10" in reasons["r"] and "gone" in reasons["r"]


def test_a_run_that_never_beat_is_reaped_at_once_when_its_named_worker_died_on_this_host():
    # Killed after it claimed its AI pool slot and before its first heartbeat.
    silent = StartedRun("r", "doc", NOW, None, None, None, worker_host="here", worker_pid=11)
    assert "pid 11" in _judge(silent, alive=lambda pid: pid != 11)["r"]
    assert _judge(silent, alive=lambda pid: True) == {}
    # Alive and silent for an hour: waiting for a pool slot, not dead.
    waiting = StartedRun(
        "w", "doc", NOW - timedelta(minutes=60), None, None, None, worker_host="here", worker_pid=11
    )
    assert _judge(waiting, alive=lambda pid: True) == {}
    elsewhere = StartedRun("r", "doc", NOW, None, None, None, worker_host="there", worker_pid=11)
    assert _judge(elsewhere, alive=lambda pid: False) == {}


def test_a_worker_on_another_host_is_judged_by_its_heartbeat_only():
    assert _judge(_run("r", beat_minutes_ago=1, host="there"), alive=lambda pid: False) == {}


def test_a_run_that_never_beat_gets_the_stale_period_from_its_start():
    assert _judge(_run("young", started_minutes_ago=5)) == {}
    assert "never sent a heartbeat" in _judge(_run("old", started_minutes_ago=45))["old"]


def test_a_job_can_allow_its_runs_a_longer_silence():
    hour = timedelta(minutes=60)
    patient = _run("slow", beat_minutes_ago=45, started_minutes_ago=120, stale_after=hour)
    assert _judge(patient, _run("other", beat_minutes_ago=45)).keys() == {"other"}
    late = _run("late", beat_minutes_ago=61, started_minutes_ago=120, stale_after=hour)
    assert "stale after 60 min" in _judge(late)["late"]


def test_a_verdict_says_whether_the_worker_is_known_gone():
    """Only a worker that may be alive (silent, hung, on another host) is worth terminating."""
    verdicts = dead_runs(
        [_run("gone", beat_minutes_ago=0), _run("silent", beat_minutes_ago=31, pid=12)],
        now=NOW,
        stale_after=STALE,
        this_host="here",
        pid_alive=lambda pid: pid != 10,
    )
    assert {v.run_id: v.worker_gone for v in verdicts} == {"gone": True, "silent": False}


def test_short_silences_are_said_in_seconds():
    seconds = timedelta(seconds=9)
    run = StartedRun("r", "doc", NOW, NOW - timedelta(seconds=12), "there", 1, stale_after=seconds)
    (verdict,) = dead_runs([run], now=NOW, stale_after=STALE, this_host="here", pid_alive=bool)
    assert "was 12 s ago (stale after 9 s)" in verdict.reason
