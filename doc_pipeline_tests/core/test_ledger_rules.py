"""The AI ledger's rules without its table: a request's key, and when a lease may be taken
over (its holder's process gone on this host, or the lease expired; never once answered)."""

from __future__ import annotations

import os
import socket

from doc_pipeline.core.ledger import AIRequest, holder_is_dead, lease_owner, may_take_over

HOST = socket.gethostname()


def test_the_key_is_the_request_whatever_the_order_of_its_fields():
    one = AIRequest("gemini", "m", "v1", {"prompt": "p", "config": {"a": 1, "b": 2}})
    same = AIRequest("gemini", "m", "v1", {"config": {"b": 2, "a": 1}, "prompt": "p"})
    other = AIRequest("gemini", "m", "v2", {"prompt": "p", "config": {"a": 1, "b": 2}})
    assert one.key == same.key != other.key and len(one.key) == 64


def test_a_lease_names_this_process_and_is_unique_per_ledger():
    first, second = lease_owner(), lease_owner()
    assert first.startswith(f"{HOST}:{os.getpid()}:") and first != second


def test_a_holder_is_dead_only_when_its_process_on_this_host_is_gone():
    assert not holder_is_dead(f"{HOST}:{os.getpid()}:abcd1234")  # this very process
    assert holder_is_dead(f"{HOST}:4242:abcd1234", alive=lambda pid: False)
    assert not holder_is_dead(f"{HOST}:4242:abcd1234", alive=lambda pid: True)
    # Another host's pid means nothing here: only the lease's expiry can free it.
    assert not holder_is_dead("elsewhere:4242:abcd1234", alive=lambda pid: False)
    assert holder_is_dead(None) and holder_is_dead("")


def test_a_lease_is_taken_over_when_expired_or_orphaned_never_when_answered():
    alive = f"{HOST}:{os.getpid()}:abcd1234"
    assert not may_take_over("leased", expired=False, owner=alive)
    assert may_take_over("leased", expired=True, owner=alive)
    assert may_take_over("leased", expired=False, owner=None)
    assert not may_take_over("done", expired=True, owner=None)
