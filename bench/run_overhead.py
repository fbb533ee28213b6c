"""What a Dagster run costs on doc_pipeline's own instance when it has nothing to do: the floor
under the framework tax of `ingest`, which runs every document as two runs of the document job.

Jobs of 1 and of 4 partitioned assets that return None (no IO manager writes, no metadata), in
process (the in-process executor, as the document job), each run for a new partition of a
dynamic partitions definition, on the instance `doc-pipeline` opens (PooledInstance: pooled
storage connections, schema checks remembered, no compute-log capture). Prints the seconds per
run (median of `--runs`, after one warm-up run), and from the two the cost of one more step.

    python bench/run_overhead.py [--runs 20] [--json]

Runs in a temporary home with its own embedded Postgres, stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dagster import (  # noqa: E402
    AssetKey,
    Definitions,
    DynamicPartitionsDefinition,
    JobDefinition,
    asset,
    define_asset_job,
    execute_job,
    in_process_executor,
    reconstructable,
)

PARTITIONS = DynamicPartitionsDefinition(name="bench_overhead")
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@asset(partitions_def=PARTITIONS)
def first() -> None:
    return None


@asset(partitions_def=PARTITIONS, deps=[first])
def second() -> None:
    return None


@asset(partitions_def=PARTITIONS, deps=[second])
def third() -> None:
    return None


@asset(partitions_def=PARTITIONS, deps=[third])
def fourth() -> None:
    return None


ASSETS = [first, second, third, fourth]


def _job(steps: int) -> JobDefinition:
    selection = [AssetKey(a.key.path) for a in ASSETS[:steps]]
    job = define_asset_job(
        f"overhead_{steps}", selection=selection, executor_def=in_process_executor
    )
    return Definitions(assets=ASSETS, jobs=[job]).resolve_job_def(f"overhead_{steps}")


def one_step_job() -> JobDefinition:
    return _job(1)


def four_step_job() -> JobDefinition:
    return _job(4)


def seconds_per_run(instance, job_fn, runs: int, label: str) -> float:
    keys = [f"{label}-{n}" for n in range(runs + 1)]
    instance.add_dynamic_partitions(PARTITIONS.name, keys)
    timings = []
    for key in keys:
        started = time.perf_counter()
        result = execute_job(
            reconstructable(job_fn),
            instance=instance,
            tags={"dagster/partition": key},
            run_config=QUIET,
        )
        timings.append(time.perf_counter() - started)
        if not result.success:
            sys.exit(f"run for {key} failed")
    return statistics.median(timings[1:])  # the first run warms imports and caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="doc-pipeline-bench-"))
    os.environ["DOC_PIPELINE_HOME"] = str(home)
    os.environ.pop("DATABASE_URL", None)
    from doc_pipeline.db.server import stop_embedded
    from doc_pipeline.instance import open_instance
    from doc_pipeline.settings import Settings

    settings = Settings.from_env()
    try:
        with open_instance(settings) as instance:
            one = seconds_per_run(instance, one_step_job, args.runs, "one")
            four = seconds_per_run(instance, four_step_job, args.runs, "four")
    finally:
        stop_embedded(settings.pgdata)
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "instance": type(instance).__name__,
        "runs": args.runs,
        "one_step_run_seconds": round(one, 4),
        "four_step_run_seconds": round(four, 4),
        "seconds_per_more_step": round((four - one) / 3, 4),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(figures["machine"], f"({figures['instance']}, median of {args.runs} runs)")
    print(f"a run of 1 step that does nothing:  {one:.3f} s")
    print(f"a run of 4 steps that do nothing:   {four:.3f} s")
    print(f"each step more:                     {(four - one) / 3:.3f} s")


if __name__ == "__main__":
    main()
