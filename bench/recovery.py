"""Benchmark: recovery from a crash, on a real instance with its daemon.

For a crash inside each stage (extracting, chunking, embedding, connecting), a document run is
launched in `doc-pipeline ui` (dagster dev: webserver, daemon, the stale-run reaper sensor) and
its run worker is killed with SIGKILL inside the stage; a last case kills the whole Dagster
process tree mid-chunking and starts `doc-pipeline ui` again. Measured: seconds from the kill to
the run being failed (detection) and to the document being `connected` again (completion); the
steps the retry ran against the steps the crash left unfinished, and the AI requests it made
against those not yet answered at the kill (the clean run's requests not committed before it):
1.00 means nothing that had been done was done again. AI requests go to the fake Gemini server;
those of the stage crashed in are slowed to 0.5 s each, and the short stages are held by a lock
until the kill (see doc_pipeline_tests/crash_points.py).

    python bench/recovery.py [--book PATH] [--reaper-interval 5] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fake server and process helpers live in the test package

STAGES = ("source_document", "extracted_markdown", "chunks", "embeddings", "connections")
SCENARIOS = [
    ("extracting", "extracting"),
    ("chunking", "chunking"),
    ("embedding", "embedding"),
    ("connecting", "connecting"),
    ("whole tree", "chunking"),  # every Dagster process killed, then started again
]


def crash_and_recover(book: Path, scenario: str, stage: str, work: Path, interval: int) -> dict:
    import sqlalchemy as sa
    from dagster._core.execution.stats import StepEventStatus

    from doc_pipeline.db.app import prepare_app_database
    from doc_pipeline.db.registration import register_file
    from doc_pipeline.db.server import stop_embedded
    from doc_pipeline.instance import open_instance
    from doc_pipeline.partitions import documents_partitions
    from doc_pipeline.settings import Settings
    from doc_pipeline_tests.crash_points import paid_bodies, slow_down, worker_inside
    from doc_pipeline_tests.dagster_ui import document_settled, launch_document_run
    from doc_pipeline_tests.fakes import FakeGemini
    from doc_pipeline_tests.processes import free_port, start_ui, stop_process_group, wait_until

    home = work / scenario.replace(" ", "-")
    with FakeGemini() as fake:
        os.environ.update(
            DOC_PIPELINE_HOME=str(home),
            GEMINI_API_KEY="bench-key",
            GOOGLE_GEMINI_BASE_URL=fake.base_url,
            DOC_PIPELINE_REAPER_INTERVAL_SECONDS=str(interval),
        )
        os.environ.pop("DATABASE_URL", None)
        settings = Settings.from_env()
        uis = []
        try:
            engine = prepare_app_database(settings)
            document_id = register_file(engine, settings.blob_dir, book).document_id
            with open_instance(settings) as instance:
                instance.add_dynamic_partitions(documents_partitions.name, [document_id])
            slow_down(fake, stage)
            port = free_port()
            uis.append(start_ui(port, work / f"{home.name}-ui.log"))
            run_id = launch_document_run(port, uis[0], document_id)
            started = time.perf_counter()
            with worker_inside(stage, engine, fake, document_id, run_id) as pid:
                if scenario == "whole tree":
                    os.killpg(uis[0].pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed = time.perf_counter()
            answered_before = len(paid_bodies(fake))
            if scenario == "whole tree":
                uis[0].wait(30)
                uis.append(start_ui(free_port(), work / f"{home.name}-ui-2.log"))

            with open_instance(settings) as instance:

                def failed():
                    return instance.get_run_by_id(run_id).status.value == "FAILURE"

                wait_until(failed, 600, "the reaper to fail the run", interval=0.2)
                detected = time.perf_counter()

                connected = document_settled(engine, document_id, "connected")
                wait_until(connected, 900, "the retry to complete the document", interval=0.2)
                completed = time.perf_counter()
                original = instance.get_run_by_id(run_id)
                selected = len(original.asset_selection or ()) or len(STAGES)
                # Asset steps only: the asset checks run as steps of their own.
                done_before = sum(
                    1
                    for stats in instance.get_run_step_stats(run_id)
                    if stats.status == StepEventStatus.SUCCESS and stats.step_key in STAGES
                )
                steps_rerun = sum(
                    1
                    for run in instance.get_runs()
                    if run.run_id != run_id
                    for stats in instance.get_run_step_stats(run.run_id)
                    if stats.step_key in STAGES
                )
            total = len(paid_bodies(fake))
            with engine.connect() as conn:
                committed_before = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM ai_calls WHERE run_id = :run AND outcome = 'paid'"
                    ),
                    {"run": run_id},
                ).scalar()
                clean_requests = conn.execute(
                    sa.text("SELECT count(*) FROM ai_responses WHERE state = 'done'")
                ).scalar()
            engine.dispose()
        finally:
            for ui in uis:
                stop_process_group(ui)
            stop_embedded(settings.pgdata)
    needed = clean_requests - committed_before
    redone = total - answered_before
    unfinished = selected - done_before
    return {
        "crash": scenario,
        "seconds_before_kill": round(killed - started, 1),
        "seconds_to_detection": round(detected - killed, 1),
        "seconds_to_completion": round(completed - killed, 1),
        "steps_unfinished_at_kill": unfinished,
        "steps_run_on_resume": steps_rerun,
        "steps_ratio": round(steps_rerun / unfinished, 2),
        "requests_clean_run": clean_requests,
        "requests_answered_before_kill": answered_before,
        "requests_committed_before_kill": committed_before,
        "requests_made_on_resume": redone,
        "requests_needed_on_resume": needed,
        "requests_ratio": round(redone / needed, 2) if needed else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--book",
        type=Path,
        default=ROOT.parent / "shared/corpus/epub/se-abbott-flatland.epub3.epub",
    )
    parser.add_argument("--reaper-interval", type=int, default=5, help="sensor interval, seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not args.book.is_file():
        sys.exit(f"no such book: {args.book}")
    work = Path(tempfile.mkdtemp(prefix="doc-pipeline-bench-recovery-"))
    results = [
        crash_and_recover(args.book.resolve(), scenario, stage, work, args.reaper_interval)
        for scenario, stage in SCENARIOS
    ]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.json:
        print(
            json.dumps({"machine": machine, "book": args.book.name, "results": results}, indent=2)
        )
        return
    print(f"{machine}; {args.book.name}; reaper every {args.reaper_interval} s")
    print(
        f"{'crash in':<12}{'kill at s':>10}{'detect s':>10}{'complete s':>12}"
        f"{'steps left':>11}{'rerun':>7}{'ratio':>7}"
        f"{'clean req':>11}{'answered':>10}{'resume req':>12}{'needed':>8}{'ratio':>7}"
    )
    for r in results:
        print(
            f"{r['crash']:<12}{r['seconds_before_kill']:>10}{r['seconds_to_detection']:>10}"
            f"{r['seconds_to_completion']:>12}{r['steps_unfinished_at_kill']:>11}"
            f"{r['steps_run_on_resume']:>7}{r['steps_ratio']:>7}{r['requests_clean_run']:>11}"
            f"{r['requests_answered_before_kill']:>10}{r['requests_made_on_resume']:>12}"
            f"{r['requests_needed_on_resume']:>8}{r['requests_ratio'] or '-':>7}"
        )


if __name__ == "__main__":
    main()
