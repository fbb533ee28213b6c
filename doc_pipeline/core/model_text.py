"""Text to and from a model: the prompt's data block, and an answer made safe to store and read.

A book's text goes into a prompt between marker lines; a marker inside the book would end the
data block early (or open a second one), so it is defused by a WORD JOINER (U+2060, invisible,
not whitespace) inside it, and each marker is a unique line of the prompt. An answer is
untrusted: NUL characters and unpaired surrogates (which Postgres refuses) are removed before
it is stored, and reading it as JSON names what is wrong with it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from doc_pipeline.core.failures import KnownFailure

TEXT_START, TEXT_END = "<<<TEXT", "TEXT>>>"
TEXT_PLACEHOLDER = "{text_block}"
# Finish reasons with which the model refused to answer (Gemini's names).
BLOCKED_FINISH_REASONS = frozenset(
    {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION"}
)

_JOINER = "\u2060"
_DEFUSED = ((TEXT_START, "<<<" + _JOINER + "TEXT"), (TEXT_END, "TEXT" + _JOINER + ">>>"))
_FENCE = re.compile(r"\A\s*```[A-Za-z]*[ \t]*\n?(.*?)\n?\s*(?:```\s*)?\Z", re.S)
_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holds them only unpaired (not UTF-8)
_RISKY_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")  # NUL, surrogates


def build_prompt(template: str, text: str) -> str:
    """The template with `text` in place of {text_block}, on lines between TEXT_START and
    TEXT_END. Markers inside the text are defused, so the marker lines of the result are
    unique and the data block cannot be closed from inside."""
    if template.count(TEXT_PLACEHOLDER) != 1:
        raise ValueError(f"the template needs {TEXT_PLACEHOLDER} exactly once")
    if TEXT_START in template or TEXT_END in template:
        raise ValueError("the template must not contain the text markers itself")
    for marker, defused in _DEFUSED:
        text = text.replace(marker, defused)
    return template.replace(TEXT_PLACEHOLDER, f"{TEXT_START}\n{text}\n{TEXT_END}")


def undefuse(text: str) -> str:
    """A model's copy of prompt text with the defused markers as the book had them."""
    for marker, defused in _DEFUSED:
        text = text.replace(defused, marker)
    return text


class MalformedAnswer(KnownFailure, ValueError):
    """The model's answer cannot be used as is."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        # "truncated" | "invalid_json" | "schema" | "empty" | "unanchored"
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (e.g. across processes) keep the reason
        return type(self), (self.reason, self.detail)


def storable(text: str) -> str:
    """The text without NUL characters and with unpaired surrogates replaced (U+FFFD):
    Postgres refuses both in text and JSON, and a model's answer may hold them."""
    return _SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def _storable_value(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_storable_value(v) for v in value]
    if isinstance(value, dict):
        return {storable(k): _storable_value(v) for k, v in value.items()}
    return value


def clean_answer_text(text: str | None) -> str | None:
    """A model's answer text made safe to store and parse: NUL characters and unpaired
    surrogates go (`storable`), also those the JSON only escapes, which parsing would bring
    back: a JSON answer (fenced or not) is written again with its strings cleaned. Anything
    else (a truncated answer, prose) keeps its text, cleaned as it is."""
    if text is None:
        return None
    text = storable(text)
    if not _RISKY_ESCAPE.search(text):
        return text  # the common case: kept verbatim
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
        return json.dumps(_storable_value(value), ensure_ascii=False)
    except (ValueError, RecursionError):
        return text


def answer_json(
    text: str | None,
    finish_reason: str | None,
    malformed: type[MalformedAnswer] = MalformedAnswer,
) -> Any:
    """The JSON value of an answer (fenced or not); `malformed` (reason truncated, empty or
    invalid_json) when there is none."""
    if str(finish_reason or "").upper().endswith("MAX_TOKENS"):
        raise malformed("truncated", "the answer hit the output token limit")
    if not isinstance(text, str) or not text.strip():
        raise malformed("empty", "no answer text")
    if fenced := _FENCE.match(text):
        text = fenced.group(1)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as problem:
        raise malformed("invalid_json", str(problem)[:200]) from None
