"""AI requests sent concurrently, bounded, without widening what a failure costs (DESIGN rule 8).

At most `limit` calls run at once, on worker threads; each answer comes back to the caller's
thread as it arrives, so the caller decides in one place what it means (and may send more).
The callee commits each answer itself (the AI ledger), so a crash re-pays at most the calls in
flight. On the first failure no new call starts, calls still queued are dropped, the calls in
flight are let finish (their answers are paid for: they are kept), and then the failure is
raised. Callers put results back in request order, so the output equals a sequential run's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any, Generic, TypeVar

K = TypeVar("K")


class BoundedRequests(Generic[K]):
    """Calls on at most `limit` worker threads; `completed()` yields (key, result) as each
    call returns, and raises the first failure once nothing is in flight any more. Calls wait
    in a queue of this object's, not the thread pool's, so that after a failure none starts."""

    def __init__(self, limit: int, name: str = "ai-request") -> None:
        if limit < 1:
            raise ValueError("the limit of concurrent requests must be at least 1")
        self.limit = limit
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix=name)
        self._queued: deque[tuple[K, Callable[..., Any], tuple[Any, ...]]] = deque()
        self._running: dict[Future, tuple[int, K]] = {}
        self._started = 0
        self.failure: BaseException | None = None

    def __enter__(self) -> BoundedRequests[K]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Also on the caller's own error: nothing queued starts, what runs is waited for.
        self._queued.clear()
        self._pool.shutdown(wait=True)

    def submit(self, key: K, call: Callable[..., Any], *args: Any, ahead: bool = False) -> bool:
        """Queue `call(*args)`, behind the queued calls or `ahead` of them (a follow-up that
        should be settled first); False (and nothing queued) once a failure happened."""
        if self.failure is not None:
            return False
        if ahead:
            self._queued.appendleft((key, call, args))
        else:
            self._queued.append((key, call, args))
        self._start_queued()
        return True

    def fail(self, error: BaseException) -> None:
        """Stop: nothing new starts, queued calls are dropped; `completed()` raises `error`
        (the first failure wins) after the calls in flight have returned."""
        if self.failure is None:
            self.failure = error
        self._queued.clear()

    def _start_queued(self) -> None:
        while self._queued and len(self._running) < self.limit and self.failure is None:
            key, call, args = self._queued.popleft()
            self._running[self._pool.submit(call, *args)] = (self._started, key)
            self._started += 1

    def completed(self) -> Iterator[tuple[K, Any]]:
        """Each result as it arrives (of simultaneous ones, the earliest started first); a
        call's exception fails the whole, as `fail` does."""
        while self._running:
            done, _ = wait(self._running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: self._running[f][0]):
                _, key = self._running.pop(future)
                error = future.exception()
                if error is not None:
                    self.fail(error)
                    continue
                yield key, future.result()
                # Only now: what the caller queued on seeing the result may go ahead.
                self._start_queued()
        if self.failure is not None:
            raise self.failure
