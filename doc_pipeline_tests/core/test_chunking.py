from __future__ import annotations

import random
import re
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doc_pipeline.core.chunking import (
    ChunkingConfig,
    TextChunk,
    chunk_markdown,
    count_words,
    is_no_space,
    scan_blocks,
)

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
CJK_SENTENCE = "这是一个测试句子。"


def _words(n: int, seed: int = 0, sentence: int = 12) -> str:
    """n words in sentences of `sentence` words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        word = rng.choice(WORDS)
        out.append(word + ("." if (i + 1) % sentence == 0 or i == n - 1 else ""))
    return " ".join(out)


def _check_invariants(markdown: str, chunks: list[TextChunk], config: ChunkingConfig) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    previous_end = 0
    for chunk in chunks:
        assert markdown[chunk.start : chunk.end] == chunk.content
        assert chunk.content == chunk.content.strip() and chunk.content
        assert chunk.start >= previous_end
        assert not markdown[previous_end : chunk.start].strip()  # gaps are whitespace
        assert chunk.char_count == len(chunk.content)
        previous_end = chunk.end
    assert not markdown[previous_end:].strip()
    # every non-space character lands in exactly one chunk, in order
    assert "".join("".join(c.content.split()) for c in chunks) == "".join(markdown.split())
    if is_no_space(markdown):
        assert all(c.word_count <= config.max_chars_no_spaces for c in chunks)
    else:
        assert all(c.word_count <= config.max_words for c in chunks)
        spaced = [c for c in chunks if not is_no_space(c.content)]
        assert all(count_words(c.content) == c.word_count for c in spaced)
        # chunks are cut at whitespace only: the words are the same
        chunk_words = Counter(w for c in chunks for w in c.content.split())
        assert chunk_words == Counter(markdown.split())


def _heading_lines(content: str) -> list[int]:
    """Offsets of ATX heading lines inside a chunk's content."""
    return [m.start() for m in re.finditer(r"^#{1,6} ", content, re.MULTILINE)]


# --- examples ---------------------------------------------------------------------------------


def test_empty_and_whitespace() -> None:
    assert chunk_markdown("") == []
    assert chunk_markdown("  \n\n\t \n") == []


def test_short_document_is_one_chunk() -> None:
    markdown = "\n# Title\n\nA short book. It has *two* paragraphs.\n\nThe second one.\n\n"
    chunks = chunk_markdown(markdown)
    assert len(chunks) == 1
    chunk = chunks[0]
    assert chunk.content == markdown.strip()
    assert chunk.start == 1 and chunk.heading_path == ("Title",)
    assert chunk.word_count == 11


def test_three_chapters_of_2000_words() -> None:
    chapters = []
    for n in range(3):
        paragraphs = [_words(100, seed=n * 100 + p) for p in range(20)]
        chapters.append(f"# Chapter {n + 1}\n\n" + "\n\n".join(paragraphs))
    markdown = "\n\n".join(chapters)
    config = ChunkingConfig()
    chunks = chunk_markdown(markdown, config)
    _check_invariants(markdown, chunks, config)
    assert len(chunks) == 6
    for chunk in chunks:
        assert 500 <= chunk.word_count <= 1200
        assert all(offset == 0 for offset in _heading_lines(chunk.content))  # no # crossed
    assert [c.heading_path for c in chunks[::2]] == [(f"Chapter {n}",) for n in (1, 2, 3)]


def test_long_paragraph_split_at_sentences() -> None:
    markdown = _words(5000, seed=7, sentence=17)
    config = ChunkingConfig()
    chunks = chunk_markdown(markdown, config)
    _check_invariants(markdown, chunks, config)
    assert len(chunks) == 5
    assert all(c.word_count <= 1200 for c in chunks)
    assert all(c.content.endswith(".") for c in chunks)


def test_sentence_longer_than_max_split_at_words() -> None:
    markdown = " ".join(["word"] * 3000)
    config = ChunkingConfig()
    chunks = chunk_markdown(markdown, config)
    _check_invariants(markdown, chunks, config)
    assert len(chunks) == 3
    assert all(950 <= c.word_count <= 1050 for c in chunks)  # balanced, to runs of 24 words


def test_paragraph_kept_whole_when_it_fits() -> None:
    paragraphs = [_words(300, seed=p) for p in range(5)]
    markdown = "\n\n".join(paragraphs)
    chunks = chunk_markdown(markdown)
    assert all(c.content.count("\n\n") + 1 in (1, 2, 3, 4) for c in chunks)
    spans = {(c.start, c.end) for c in chunks}
    pieces = [p for c in chunks for p in c.content.split("\n\n")]
    assert pieces == paragraphs
    assert len(spans) == 2


def test_heading_paths_nested() -> None:
    markdown = "\n\n".join(
        [
            "# Part I #",
            _words(30, 1),
            "## Section 3. Concerning the **Inhabitants**",
            _words(30, 2),
            "### A _small_ [note](#n1)",
            _words(30, 3),
            "## Section 4",
            _words(30, 4),
            "# Part II",
            "## Section 1",
            _words(30, 5),
        ]
    )
    config = ChunkingConfig(min_words=10, max_words=40)
    chunks = chunk_markdown(markdown, config)
    _check_invariants(markdown, chunks, config)
    assert [c.heading_path for c in chunks] == [
        ("Part I",),
        ("Part I", "Section 3. Concerning the Inhabitants"),
        ("Part I", "Section 3. Concerning the Inhabitants", "A small note"),
        ("Part I", "Section 4"),
        ("Part II", "Section 1"),  # a lone part heading opens the next section's chunk
    ]
    assert chunks[-1].content.startswith("# Part II\n\n## Section 1")


def test_headings_inside_code_fences_are_ignored() -> None:
    markdown = "# Real\n\n```python\n# comment\n\nx = 1\n```\n\nafter"
    chunks = chunk_markdown(markdown)
    assert len(chunks) == 1 and chunks[0].heading_path == ("Real",)


def test_small_sections_merge_but_big_ones_stand_alone() -> None:
    config = ChunkingConfig(min_words=50, max_words=120)
    small = [f"## S{n}\n\n{_words(20, n)}" for n in range(4)]
    big = [f"## B{n}\n\n{_words(80, n)}" for n in range(2)]
    markdown = "\n\n".join(small + big)
    chunks = chunk_markdown(markdown, config)
    _check_invariants(markdown, chunks, config)
    assert [c.heading_path for c in chunks] == [("S0",), ("S3",), ("B1",)]
    assert [c.word_count for c in chunks] == [63, 21 + 81, 81]  # '## S0' is one word


def test_chinese_sized_by_characters() -> None:
    paragraphs = [CJK_SENTENCE * 40 for _ in range(30)]  # 8 letters a sentence, 320 a paragraph
    markdown = "# 第一章\n\n" + "\n\n".join(paragraphs)
    config = ChunkingConfig()
    chunks = chunk_markdown(markdown, config)
    _check_invariants(markdown, chunks, config)
    assert count_words(CJK_SENTENCE) == 8
    assert count_words(markdown) == 3 + 30 * 320
    assert all(800 <= c.word_count <= 2000 for c in chunks)
    assert len(chunks) == 5
    assert chunks[0].heading_path == ("第一章",)


def test_chinese_paragraph_without_breaks_split_at_sentences_then_characters() -> None:
    config = ChunkingConfig()
    markdown = CJK_SENTENCE * 1000
    chunks = chunk_markdown(markdown, config)
    _check_invariants(markdown, chunks, config)
    assert all(c.content.endswith("。") for c in chunks)
    markdown = "字" * 5000
    chunks = chunk_markdown(markdown, config)
    _check_invariants(markdown, chunks, config)
    assert len(chunks) == 3 and all(1600 <= c.word_count <= 1700 for c in chunks)


def test_count_words() -> None:
    assert count_words("Hello, world -- it's 2024 !") == 4
    assert count_words("") == 0
    assert count_words("| --- | --- |") == 0
    assert count_words("这是一个测试句子。Python 3") == 8 + 6 + 1


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ChunkingConfig(min_words=10, max_words=5)
    with pytest.raises(ValueError):
        ChunkingConfig(max_chars_no_spaces=0, min_chars_no_spaces=0)


def test_hundred_thousand_words_is_fast() -> None:
    chapters = [
        f"# Chapter {n}\n\n" + "\n\n".join(_words(120, seed=n * 50 + p) for p in range(40))
        for n in range(21)
    ]
    markdown = "\n\n".join(chapters)
    started = time.perf_counter()
    chunks = chunk_markdown(markdown)
    elapsed = time.perf_counter() - started
    assert sum(c.word_count for c in chunks) == count_words(markdown) > 100_000
    assert elapsed < 1.0


# --- properties -------------------------------------------------------------------------------

_word = st.sampled_from(WORDS + ["a.", "b!", "c?", "--", "*", "x,", "1999", "don't"])
_cjk = st.text(alphabet="这是一个测试句子我们中文。！？，「」", min_size=1, max_size=400)


@st.composite
def _block(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["heading", "para", "para", "long", "cjk", "list", "code"]))
    if kind == "heading":
        return "#" * draw(st.integers(1, 6)) + " " + " ".join(draw(st.lists(_word, max_size=4)))
    if kind == "para":
        return " ".join(draw(st.lists(_word, min_size=1, max_size=60)))
    if kind == "long":
        return " ".join(draw(st.lists(_word, min_size=50, max_size=250)))
    if kind == "cjk":
        return draw(_cjk)
    if kind == "list":
        items = draw(st.lists(st.lists(_word, min_size=1, max_size=8), min_size=1, max_size=6))
        return "\n".join("- " + " ".join(item) for item in items)
    body = "\n".join(" ".join(line) for line in draw(st.lists(st.lists(_word), max_size=6)))
    return f"```\n{body}\n\n# not a heading\n```"


@st.composite
def _markdown(draw: st.DrawFn, cjk: bool = True) -> str:
    blocks = draw(st.lists(_block(), max_size=20))
    if not cjk:
        blocks = [b for b in blocks if not re.search(r"[\u4e00-\u9fff]", b)]
    separators = draw(
        st.lists(
            st.sampled_from(["\n\n", "\n", "\n \n\n", "\n\t\n"]),
            min_size=len(blocks),
            max_size=len(blocks),
        )
    )
    lead = draw(st.sampled_from(["", "\n", "  "]))
    return lead + "".join(b + s for b, s in zip(blocks, separators, strict=True))


@st.composite
def _config(draw: st.DrawFn) -> ChunkingConfig:
    max_words = draw(st.integers(1, 150))
    max_chars = draw(st.integers(1, 300))
    return ChunkingConfig(
        min_words=draw(st.integers(0, max_words)),
        max_words=max_words,
        min_chars_no_spaces=draw(st.integers(0, max_chars)),
        max_chars_no_spaces=max_chars,
    )


@settings(max_examples=100, deadline=None)
@given(_markdown(), _config())
def test_property_coverage_and_limits(markdown: str, config: ChunkingConfig) -> None:
    _check_invariants(markdown, chunk_markdown(markdown, config), config)


@settings(max_examples=100, deadline=None)
@given(_markdown(cjk=False), _config())
def test_property_spaced_text(markdown: str, config: ChunkingConfig) -> None:
    chunks = chunk_markdown(markdown, config)
    _check_invariants(markdown, chunks, config)
    assert not is_no_space(markdown)
    assert sum(c.word_count for c in chunks) == count_words(markdown)
    # a chunk crosses a level <= 2 heading only when what comes before it is under the minimum
    majors = [b.start for b in scan_blocks(markdown) if 1 <= b.level <= 2]
    for chunk in chunks:
        for offset in majors:
            if chunk.start < offset < chunk.end:
                before = markdown[chunk.start : offset]
                assert count_words(before) < config.min_words


@settings(max_examples=100, deadline=None)
@given(st.lists(_cjk, min_size=1, max_size=10), _config())
def test_property_cjk_text(paragraphs: list[str], config: ChunkingConfig) -> None:
    markdown = "\n\n".join(paragraphs)
    chunks = chunk_markdown(markdown, config)
    _check_invariants(markdown, chunks, config)
    if is_no_space(markdown):
        assert sum(c.word_count for c in chunks) == count_words(markdown)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300), _config())
def test_property_arbitrary_text(markdown: str, config: ChunkingConfig) -> None:
    _check_invariants(markdown, chunk_markdown(markdown, config), config)
