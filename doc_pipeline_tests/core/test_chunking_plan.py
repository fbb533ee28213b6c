"""The AI chunking plan, with no provider and no ledger: which requests it makes, what each
answer means (accept, ask again for the halves, refuse), and that driving it with canned
answers gives chunks that partition the markdown in order."""

from __future__ import annotations

import json

import pytest

from doc_pipeline.core.ai_chunking import (
    Accepted,
    AskAgain,
    ChunkingFailed,
    ChunkingPlan,
    Refused,
    SafetyBlocked,
    WindowRequest,
    chunk_with_model,
)
from doc_pipeline.core.model_text import TEXT_END, TEXT_START

TEMPLATE = "Chunk this book.\n\n{text_block}\n\nAnswer with JSON."
META = {"themes": ["a", "b"], "importance": 0.5, "summary": "s", "domain": "d"}


def _book(chapters: int, paragraphs: int) -> str:
    parts = []
    for c in range(chapters):
        parts.append(f"## Chapter {c + 1}")
        parts += [f"Paragraph {p} of chapter {c + 1} says it plainly." for p in range(paragraphs)]
    return "\n\n".join(parts) + "\n"


def _window_text(request: WindowRequest) -> str:
    return request.prompt.split(TEXT_START + "\n", 1)[1].rsplit("\n" + TEXT_END, 1)[0]


def _copy_answer(request: WindowRequest) -> dict:
    """What an obedient model answers: each paragraph of the window as a chunk (v1: copied;
    v2: by the number of its first block, every other block)."""
    if request.blocks is not None:
        numbers = range(1, request.blocks.count + 1, 2)
        chunks = [{"first_block": number, **META} for number in numbers]
    else:
        paragraphs = [p for p in _window_text(request).split("\n\n") if p.strip()]
        chunks = [{"content": p, **META} for p in paragraphs]
    return {"text": json.dumps({"chunks": chunks}), "finish_reason": "STOP"}


def test_one_request_per_chapter_in_text_order():
    markdown = _book(3, 40)
    plan = ChunkingPlan(markdown, TEMPLATE, version="v1", window_chars=4_000, overlap_chars=200)
    requests = plan.requests()
    assert [r.window for r in requests] == plan.windows and len(requests) == 3
    assert all(r.depth == 0 and r.prompt.startswith("Chunk this book.") for r in requests)
    assert [r.chapter for r in requests] == ["Chapter 1", "Chapter 2", "Chapter 3"]
    assert _window_text(requests[1]) == markdown[requests[1].window.start : requests[1].window.end]


def test_an_answer_is_accepted_with_its_refused_texts_counted():
    markdown = _book(1, 6)
    plan = ChunkingPlan(markdown, TEMPLATE, version="v1")
    (request,) = plan.requests()
    answer = json.loads(_copy_answer(request)["text"])
    answer["chunks"].append({"content": "Text the book never had, invented.", **META})
    verdict = plan.judge(request, {"text": json.dumps(answer), "finish_reason": "STOP"})
    assert isinstance(verdict, Accepted)
    assert (verdict.items, verdict.refused, len(verdict.anchors)) == (8, 1, 7)


def test_an_unusable_answer_asks_again_for_both_halves_then_refuses():
    markdown = _book(1, 60)
    plan = ChunkingPlan(markdown, TEMPLATE, max_splits=1)
    (request,) = plan.requests()
    verdict = plan.judge(request, {"text": '{"chunks": [', "finish_reason": "STOP"})
    assert isinstance(verdict, AskAgain) and verdict.problem.reason == "invalid_json"
    first, second = verdict.halves
    assert (first.depth, second.depth) == (1, 1)
    assert first.window.start == request.window.start and second.window.end == request.window.end
    assert first.window.end == second.window.start  # the halves share their cut, lose nothing
    final = plan.judge(first, {"text": None, "finish_reason": "MAX_TOKENS"})
    assert isinstance(final, Refused) and isinstance(final.error, ChunkingFailed)
    assert "after 1 splits: truncated" in str(final.error)


def test_a_blocked_answer_refuses_the_document_naming_the_chapter():
    plan = ChunkingPlan(_book(2, 10), TEMPLATE, window_chars=1_500, overlap_chars=100)
    request = plan.requests()[1]
    verdict = plan.judge(request, {"text": None, "finish_reason": "SAFETY"})
    assert isinstance(verdict, Refused) and isinstance(verdict.error, SafetyBlocked)
    assert "'Chapter 2'" in str(verdict.error) and "SAFETY" in str(verdict.error)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_driving_the_plan_asks_each_request_once_and_keeps_text_order(version):
    markdown = _book(2, 40)
    plan = ChunkingPlan(markdown, TEMPLATE, version=version, window_chars=2_500, overlap_chars=100)
    asked: list[WindowRequest] = []

    def ask(request: WindowRequest) -> dict:
        asked.append(request)
        if request.depth == 0 and request is asked[0]:
            return {"text": "not json", "finish_reason": "STOP"}  # the first: halves instead
        return _copy_answer(request)

    chunks = chunk_with_model(plan, ask)
    assert sorted(r.depth for r in asked) == [0] * len(plan.windows) + [1, 1]
    assert [c.index for c, _ in chunks] == list(range(len(chunks)))
    starts = [c.start for c, _ in chunks]
    assert starts == sorted(starts) and chunks[0][0].start == 0
    assert " ".join(c.content for c, _ in chunks).split() == markdown.split()  # every word once


def test_v2_prompts_number_the_blocks_and_answers_point_at_them():
    markdown = "## One\n\nFirst paragraph here.\n\n- an item\n- another item\n\nLast words.\n"
    plan = ChunkingPlan(markdown, TEMPLATE)
    (request,) = plan.requests()
    assert _window_text(request) == (
        "[B1] ## One\n\n[B2] First paragraph here.\n\n[B3] - an item\n[B4] - another item"
        "\n\n[B5] Last words.\n"
    )
    assert [markdown[start:].split("\n")[0] for start in request.blocks.starts] == [
        "## One",
        "First paragraph here.",
        "- an item",
        "- another item",
        "Last words.",
    ]
    answer = {"chunks": [{"first_block": n, **META} for n in (1, 3, 3, 9, 2, 5, True, 4.0)]}
    verdict = plan.judge(request, {"text": json.dumps(answer), "finish_reason": "STOP"})
    assert isinstance(verdict, Accepted)
    # 3 again, 9 (out of range), 2 and 4.0 (not after 5), True (not a number) are refused.
    assert [markdown[a.start : a.end] for a in verdict.anchors] == [
        markdown[: markdown.index("- an item")],
        markdown[markdown.index("- an item") : markdown.index("Last")],
        markdown[markdown.index("Last") :],
    ]
    assert (verdict.items, verdict.refused) == (8, 5)
    assert verdict.anchors[0].metadata == {
        **META,
        "concepts": [],
        "emotional_polarity": None,
        "primary_emotion": None,
        "emotional_intensity": None,
    }


def test_a_v2_answer_without_a_usable_block_number_is_asked_again():
    plan = ChunkingPlan(_book(1, 60), TEMPLATE)
    (request,) = plan.requests()
    answer = {"chunks": [{"first_block": 0, **META}, {"first_block": "1", **META}]}
    verdict = plan.judge(request, {"text": json.dumps(answer), "finish_reason": "STOP"})
    assert isinstance(verdict, AskAgain) and verdict.problem.reason == "unanchored"
    assert verdict.halves[0].blocks.starts[0] == request.window.start


def test_a_v1_answer_with_no_text_of_the_window_is_asked_again():
    plan = ChunkingPlan(_book(1, 60), TEMPLATE, version="v1")
    (request,) = plan.requests()
    answer = {"chunks": [{"content": "DROP TABLE documents; nothing of the book.", **META}]}
    verdict = plan.judge(request, {"text": json.dumps(answer), "finish_reason": "STOP"})
    assert isinstance(verdict, AskAgain) and verdict.problem.reason == "unanchored"
    assert str(verdict.problem) == "unanchored: no chunk text of the answer is in the source"
    assert (verdict.items, verdict.refused) == (1, 1)
