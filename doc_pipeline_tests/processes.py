"""Helpers for tests that start servers: free ports, readiness, and stopping by pid."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable


def ended_process_pid() -> int:
    """A pid that no process has now: that of a process that just ended (pids are not reused
    for a long while)."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(ended.stdout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(port: int, log_path) -> subprocess.Popen:
    """`doc-pipeline ui` (dagster dev) in its own process group, with the test's environment."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "doc_pipeline", "ui", "--port", str(port)],
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_ingest(
    env: dict[str, str], *args: object, preexec_fn: Callable[[], None] | None = None
) -> subprocess.Popen:
    """`doc-pipeline ingest --json ARGS` as a user runs it, in its own process group (so that
    stop_process_group ends it and its children), with pipes for its output."""
    return subprocess.Popen(
        [sys.executable, "-m", "doc_pipeline", "ingest", "--json", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )


def run_cli(env: dict[str, str], *args: object, timeout: float) -> subprocess.CompletedProcess:
    """`doc-pipeline ARGS` as a user runs it in a terminal-less shell, in its own process group
    (stopped with everything in it if it outlives `timeout`); its output as text."""
    process = subprocess.Popen(
        [sys.executable, "-m", "doc_pipeline", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        stop_process_group(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def wait_for_graphql(port: int, query: str, process: subprocess.Popen, timeout: float) -> dict:
    """Post the query to the Dagster webserver until it answers; fail if the process exits."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.loads(response.read())
            if "errors" not in body:
                return body["data"]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"no answer on port {port} within {timeout} s")


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started with start_new_session, and everything in its group: SIGTERM
    first, then SIGKILL for whatever is left (children can outlive their leader)."""
    group = process.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break  # nothing is left in the group
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            time.sleep(0.5)  # let children finish their own graceful exit before SIGKILL


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    """One GraphQL request to the Dagster webserver; fails on GraphQL errors."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    if "errors" in body:
        raise AssertionError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll until condition() returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
