"""Test fakes. `FakeGemini` is a local server speaking the Gemini REST API; `Latency` makes it
take as long as the real one.

Imported lazily so `python -m doc_pipeline_tests.fakes.gemini` does not import itself twice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FakeGemini", "Latency"]


def __getattr__(name: str) -> Any:
    if name == "FakeGemini":
        from doc_pipeline_tests.fakes.gemini import FakeGemini

        return FakeGemini
    if name == "Latency":
        from doc_pipeline_tests.fakes.gemini_timing import Latency

        return Latency
    raise AttributeError(name)
