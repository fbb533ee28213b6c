"""What a worker on another host does in the multi-host tests (run there by hosts.py):

python -m doc_pipeline_tests.remote_worker pay URL LEASE_SECONDS RELEASE_FILE
    pays for REQUEST through the ledger; the API call lasts until RELEASE_FILE exists
python -m doc_pipeline_tests.remote_worker beat URL RUN_ID DOCUMENT_ID INTERVAL_SECONDS
    heartbeats for a run's `chunks` step until killed
"""

from __future__ import annotations

import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

from doc_pipeline.core.ledger import AIAnswer, AIRequest, Usage
from doc_pipeline.db import store
from doc_pipeline.db.heartbeats import Heartbeat
from doc_pipeline.db.ledger_store import Ledger

REQUEST = AIRequest("gemini", "gemini-x", "chunking-v1", {"text": "a chapter", "n": 7})
ANSWER = {"chunks": ["paid on another host"]}


def pay(url: str, lease_seconds: float, release: Path) -> None:
    def fetch() -> AIAnswer:
        while not release.exists():  # the API is slow to answer
            time.sleep(0.05)
        return AIAnswer(ANSWER, Usage(100, 10, 0), Decimal("0.01"))

    Ledger(store.engine_for(url), lease_seconds=lease_seconds).call(
        REQUEST, fetch, document_id=None, stage="chunks"
    )


def beat(url: str, run_id: str, document_id: str, interval: float) -> None:
    with Heartbeat(
        store.engine_for(url),
        run_id=run_id,
        step_key="chunks",
        document_id=document_id,
        interval_seconds=interval,
    ):
        threading.Event().wait()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "pay":
        pay(args[0], float(args[1]), Path(args[2]))
    elif command == "beat":
        beat(args[0], args[1], args[2], float(args[3]))
    else:
        sys.exit(f"unknown command {command!r}")
