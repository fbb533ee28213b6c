"""The instance's concurrency limits from dagster.yaml, on a real instance with its daemon: one
active run per document (a second run of the same document waits in the queue), and the `ai`
pool (steps that call the provider wait for a slot, across runs); a killed run gives its slot
back."""

from __future__ import annotations

import json
import os
import signal

import sqlalchemy as sa

from doc_pipeline.concurrency import AI_POOL
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.db.registration import register_file
from doc_pipeline.db.store import engine_for
from doc_pipeline.instance import open_instance
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home
from doc_pipeline_tests.dagster_ui import launch_document_run
from doc_pipeline_tests.fakes import FakeGemini
from doc_pipeline_tests.processes import (
    free_port,
    start_ingest,
    start_ui,
    stop_process_group,
    wait_until,
)

BOOKS = [
    CORPUS / "epub" / "se-abbott-flatland.epub3.epub",
    CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub",
]
AI_STEPS = {"chunks", "embeddings"}


def test_one_active_run_per_document_and_ai_steps_share_the_pool(
    postgres_server, tmp_path, monkeypatch
):
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    with FakeGemini() as fake:
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        # Answers slow enough that the first run is still going when the other document's run
        # has been dequeued and its worker started (0.2 s left the runs 0.16 s apart once runs
        # got cheaper).
        fake.add_fault("generateContent", delay_seconds=1.0)
        settings = Settings.from_env()
        engine = prepare_app_database(settings)
        flatland, rabbit = (register_file(engine, settings.blob_dir, b).document_id for b in BOOKS)
        with open_instance(settings) as instance:
            assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
            instance.add_dynamic_partitions(documents_partitions.name, [flatland, rabbit])
            # The documented way to change the pool's size for a running instance.
            instance.event_log_storage.set_concurrency_slots(AI_POOL, 1)

        port = free_port()
        ui = start_ui(port, tmp_path / "ui.log")
        try:
            first = launch_document_run(port, ui, flatland)
            again = launch_document_run(port, ui, flatland)
            other = launch_document_run(port, ui, rabbit)
            with open_instance(settings) as instance:

                def finished():
                    records = instance.get_run_records()
                    return all(r.dagster_run.is_finished for r in records) and records

                records = wait_until(finished, 300, "the three runs to finish", interval=1)
                runs = {r.dagster_run.run_id: r for r in records}
                steps = {run_id: instance.get_run_step_stats(run_id) for run_id in (first, other)}
        finally:
            stop_process_group(ui)
        engine.dispose()

    assert {r.dagster_run.status.value for r in runs.values()} == {"SUCCESS"}
    # The second run of the same document started only after the first had ended.
    assert runs[again].start_time >= runs[first].end_time
    # The other document's run was active at the same time as the first ...
    assert runs[other].start_time < runs[first].end_time
    assert runs[first].start_time < runs[other].end_time
    # ... but with one slot in the pool, no two AI steps ever ran at once.
    ai_steps = sorted(
        (stats.start_time, stats.end_time, stats.step_key)
        for run_id in (first, other)
        for stats in steps[run_id]
        if stats.step_key in AI_STEPS
    )
    assert len(ai_steps) == 4
    for (_, ended, step), (started, _, next_step) in zip(ai_steps, ai_steps[1:], strict=False):
        assert started >= ended, f"{next_step} started while {step} still ran"


def test_runs_killed_holding_ai_slots_before_their_first_heartbeat_do_not_block_the_next_ingest(
    postgres_server, tmp_path
):
    """Two ingests are SIGKILLed after their run claimed an `ai` pool slot and before the step's
    first heartbeat (held back by a lock on the heartbeats table). Each ingest finds the runs
    before it dead by the pid their launcher named, fails them and frees their slots; the last
    one finishes. (Judged by heartbeats alone, the two dead runs held both slots of the pool
    for 30 minutes and the last ingest waited for them.)"""
    database_url = create_database(postgres_server)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "GOOGLE_API_KEY")}
    env |= {"DOC_PIPELINE_HOME": str(home), "DATABASE_URL": database_url}
    env.pop("GEMINI_API_KEY", None)
    engine = prepare_app_database(Settings(home=home, database_url=database_url))
    url = sa.engine.make_url(database_url)
    dagster_engine = engine_for(
        url.set(database=f"{url.database}_dagster").render_as_string(hide_password=False)
    )

    def slot_holders(besides: frozenset[str] = frozenset()) -> set[str]:
        try:
            with dagster_engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT run_id FROM concurrency_slots WHERE run_id IS NOT NULL")
                )
                return {run_id for (run_id,) in rows} - besides
        except sa.exc.SQLAlchemyError:
            return set()  # the instance's database is not made yet

    killed: frozenset[str] = frozenset()
    with engine.connect() as lock:
        lock.execute(sa.text("LOCK TABLE heartbeats IN SHARE MODE"))  # reads go on, beats wait
        for _ in range(2):
            process = start_ingest(env, BOOKS[0])
            try:
                holders = wait_until(
                    lambda seen=killed: slot_holders(seen), 120, "a new run's slot", interval=0.02
                )
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
            finally:
                stop_process_group(process)
            killed |= holders
        lock.rollback()
    assert len(killed) == 2 and slot_holders() and slot_holders() <= killed
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM heartbeats")).scalar() == 0

    process = start_ingest(env, BOOKS[0])
    try:
        stdout, stderr = process.communicate(timeout=240)
    finally:
        stop_process_group(process)
    assert process.returncode == 0, stderr[-3000:]
    (outcome,) = json.loads(stdout)
    assert outcome["stage"] == "connected" and outcome["chunks"] > 0
    with dagster_engine.connect() as conn:
        statuses = conn.execute(
            sa.text("SELECT run_id, status FROM runs WHERE run_id = ANY(:ids)"),
            {"ids": list(killed)},
        ).all()
    assert {status for _, status in statuses} == {"FAILURE"} and len(statuses) == 2
    assert slot_holders() == set()
    engine.dispose()
    dagster_engine.dispose()
