"""Test fakes. `FakeGemini` is a local server speaking the Gemini REST API.

Imported lazily so `python -m doc_pipeline_tests.fakes.gemini` does not import itself twice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FakeGemini"]


def __getattr__(name: str) -> Any:
    if name == "FakeGemini":
        from doc_pipeline_tests.fakes.gemini import FakeGemini

        return FakeGemini
    raise AttributeError(name)
