"""Another host on this machine, for what must hold across hosts: a process tree in UTS and PID
namespaces of its own (its own hostname, its own pids: `unshare --uts --pid --fork
--mount-proc`) that still reaches the test's Postgres, servers on loopback and files.

Killing a host kills everything in it at once, as a machine that loses power: the namespace's
first process is SIGKILLed and the kernel kills the rest of its PID namespace with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# sh names the host, then becomes the program (the namespace's first process, pid 1), or
# starts it as its child with the pid asked for (the kernel gives the next pid after
# ns_last_pid; `echo` and `$((...))` are built in, so nothing forks in between).
_NAME_THEN_EXEC = 'hostname "$1" && shift && exec "$@"'
_NAME_THEN_START_WITH_PID = (
    'hostname "$1" && echo $(($2 - 1)) > /proc/sys/kernel/ns_last_pid'
    ' && shift 2 && { "$@" & wait; }'
)


@dataclass
class Host:
    name: str
    process: subprocess.Popen  # `unshare`, outside the namespaces

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Everything on the host, at once (`unshare --kill-child` passes the SIGKILL on to
        the namespace's first process)."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


def start_on_host(
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    pid: int | None = None,
) -> Host:
    """`argv` on a new host called `name` (as its first process, or with pid `pid` there),
    output to `log_path`."""
    start = (
        [_NAME_THEN_EXEC, "sh", name]
        if pid is None
        else [
            _NAME_THEN_START_WITH_PID,
            "sh",
            name,
            str(pid),
        ]
    )
    command = [
        "unshare",
        "--uts",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child=SIGKILL",
        "sh",
        "-c",
        *start,
        *argv,
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Host(name, process)
