"""Bounded concurrent requests (core/parallel.py): never more than the limit at once, each
result as it arrives, and on a failure nothing new starts, what is in flight finishes, and the
failure is raised."""

from __future__ import annotations

import threading
import time

import pytest

from doc_pipeline.core.parallel import BoundedRequests


class Calls:
    """A callee that counts how many of its calls overlap, and which ones ran to the end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.finished: list[int] = []

    def __call__(self, number: int, seconds: float = 0.05, error: Exception | None = None):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(seconds)
            if error is not None:
                raise error
            with self.lock:
                self.finished.append(number)
            return number * 10
        finally:
            with self.lock:
                self.running -= 1


def test_no_more_than_the_limit_run_at_once_and_every_result_arrives():
    calls = Calls()
    with BoundedRequests[int](3) as requests:
        for number in range(10):
            requests.submit(number, calls, number)
        results = dict(requests.completed())
    assert results == {number: number * 10 for number in range(10)}
    assert calls.peak == 3


def test_a_failure_lets_the_calls_in_flight_finish_and_starts_no_new_one():
    calls = Calls()
    with BoundedRequests[int](3) as requests:
        requests.submit(0, calls, 0, 0.05, RuntimeError("the API refused"))
        for number in range(1, 10):
            requests.submit(number, calls, number, 0.3)
        arrived = []
        with pytest.raises(RuntimeError, match="the API refused"):
            for key, _ in requests.completed():
                arrived.append(key)
        assert not requests.submit(99, calls, 99)  # nothing new after the failure
    # Calls 1 and 2 were in flight with the failing one: they finished and were delivered;
    # the others never started.
    assert sorted(calls.finished) == sorted(arrived) == [1, 2]


def test_the_caller_can_fail_it_and_send_more_while_results_arrive():
    calls = Calls()
    with BoundedRequests[int](2) as requests:
        requests.submit(1, calls, 1, 0.01)
        seen = []
        with pytest.raises(ValueError, match="enough"):
            for key, _ in requests.completed():
                seen.append(key)
                if key < 4:
                    requests.submit(key + 1, calls, key + 1, 0.01)
                else:
                    requests.fail(ValueError("enough"))
    assert seen == [1, 2, 3, 4]


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError):
        BoundedRequests(0)


def test_a_follow_up_goes_ahead_of_the_queued_calls():
    calls = Calls()
    order = []
    with BoundedRequests[int](1) as requests:
        for number in (1, 2, 3):
            requests.submit(number, calls, number, 0.01)
        for key, _ in requests.completed():
            order.append(key)
            if key == 1:
                requests.submit(11, calls, 11, 0.01, ahead=True)
    assert order == [1, 11, 2, 3]
