"""Whether a process of this host is still there (for leases and run workers)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host (also one of another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, we may just not signal it
        pass
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that exited and was not reaped yet (Linux): dead, though its pid is taken.
    An orphaned worker stays one where nothing reaps orphans (a container's first process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False
