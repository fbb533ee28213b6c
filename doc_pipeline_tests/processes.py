"""Helpers for tests that start servers: free ports, readiness, and stopping by pid."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """SIGTERM the process's own group (started with start_new_session), then SIGKILL."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)
    except ProcessLookupError:
        pass
