"""Benchmark: recovery from a killed run worker, on a real instance with its daemon.

For a crash in each AI stage (chunking, embedding), a document run is launched in `doc-pipeline
ui` (dagster dev: webserver, daemon, the stale-run reaper sensor), its run worker is killed with
SIGKILL mid-stage, and the script measures the seconds from the kill to the run being failed
(detection) and to the document being `connected` again (completion), and the AI requests the
retry made compared with those it had to make (the clean run's requests not yet answered at the
kill): 1.00 means nothing was redone needlessly. AI requests go to the fake Gemini server, slowed
to 0.5 s each so that the kill lands inside the stage.

    python bench/recovery.py [--book PATH] [--reaper-interval 5] [--json]
"""

from __future__ import annotations

import argparse
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

CRASH_POINTS = [("chunking", "generateContent"), ("embedding", "batchEmbedContents")]
PAID = ("generateContent", "batchEmbedContents")


def paid(fake) -> int:
    return sum(1 for r in fake.requests if r.get("api_method") in PAID and r.get("status") == 200)


def crash_and_recover(book: Path, stage: str, slowed: str, work: Path, interval: int) -> dict:
    import sqlalchemy as sa

    from doc_pipeline.core.registration import register_file
    from doc_pipeline.db import store
    from doc_pipeline.db.server import stop_embedded
    from doc_pipeline.ingest import prepare_app_database
    from doc_pipeline.instance import open_instance
    from doc_pipeline.partitions import documents_partitions
    from doc_pipeline.settings import Settings
    from doc_pipeline_tests.dagster_ui import launch_document_run, running_step_pid
    from doc_pipeline_tests.fakes import FakeGemini
    from doc_pipeline_tests.processes import free_port, start_ui, stop_process_group, wait_until

    home = work / stage
    with FakeGemini() as fake:
        os.environ.update(
            DOC_PIPELINE_HOME=str(home),
            GEMINI_API_KEY="bench-key",
            GOOGLE_GEMINI_BASE_URL=fake.base_url,
            DOC_PIPELINE_REAPER_INTERVAL_SECONDS=str(interval),
        )
        os.environ.pop("DATABASE_URL", None)
        settings = Settings.from_env()
        ui = None
        try:
            engine = prepare_app_database(settings)
            document_id = register_file(engine, settings.blob_dir, book).document_id
            with open_instance(settings) as instance:
                instance.add_dynamic_partitions(documents_partitions.name, [document_id])
            fake.add_fault(slowed, delay_seconds=0.5)
            port = free_port()
            ui = start_ui(port, work / f"{stage}-ui.log")
            run_id = launch_document_run(port, ui, document_id)
            started = time.perf_counter()

            def worker_mid_stage():
                if store.get_document(engine, document_id)["stage"] != stage:
                    return None
                if stage == "chunking" and paid(fake) < 3:
                    return None
                return running_step_pid(engine, run_id)

            pid = wait_until(worker_mid_stage, 300, f"the run to be {stage}", interval=0.05)
            os.kill(pid, signal.SIGKILL)
            killed = time.perf_counter()
            answered_before = paid(fake)

            with open_instance(settings) as instance:

                def failed():
                    return instance.get_run_by_id(run_id).status.value == "FAILURE"

                wait_until(failed, 600, "the reaper to fail the run", interval=0.2)
            detected = time.perf_counter()

            def connected():
                return store.get_document(engine, document_id)["stage"] == "connected"

            wait_until(connected, 900, "the retry to complete the document", interval=0.2)
            completed = time.perf_counter()
            total = paid(fake)
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
            if ui is not None:
                stop_process_group(ui)
            stop_embedded(settings.pgdata)
    needed = clean_requests - committed_before
    redone = total - answered_before
    return {
        "stage": stage,
        "seconds_before_kill": round(killed - started, 1),
        "seconds_to_detection": round(detected - killed, 1),
        "seconds_to_completion": round(completed - killed, 1),
        "requests_clean_run": clean_requests,
        "requests_answered_before_kill": answered_before,
        "requests_committed_before_kill": committed_before,
        "requests_made_on_resume": redone,
        "requests_needed_on_resume": needed,
        "redone_over_needed": round(redone / needed, 2) if needed else None,
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
        crash_and_recover(args.book.resolve(), stage, slowed, work, args.reaper_interval)
        for stage, slowed in CRASH_POINTS
    ]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.json:
        print(
            json.dumps({"machine": machine, "book": args.book.name, "results": results}, indent=2)
        )
        return
    print(f"{machine}; {args.book.name}; reaper every {args.reaper_interval} s")
    header = f"{'crash in':<10}{'kill at s':>10}{'detect s':>10}{'complete s':>12}"
    print(header + f"{'clean req':>11}{'answered':>10}{'resume req':>12}{'needed':>8}{'ratio':>7}")
    for r in results:
        print(
            f"{r['stage']:<10}{r['seconds_before_kill']:>10}{r['seconds_to_detection']:>10}"
            f"{r['seconds_to_completion']:>12}{r['requests_clean_run']:>11}"
            f"{r['requests_answered_before_kill']:>10}{r['requests_made_on_resume']:>12}"
            f"{r['requests_needed_on_resume']:>8}{r['redone_over_needed'] or '-':>7}"
        )


if __name__ == "__main__":
    main()
