"""Property tests of the HTML -> markdown step and of the chunker.

The converter has no public entry point below the whole book, so each example is one generated
XHTML document packed into a minimal EPUB 2 (mimetype, container.xml, an OPF with one manifest
item and spine entry, no NCX) and run through `epub_to_markdown`. Without a table of contents
the converter adds no headings of its own, and without note references no footnote markers.

Every converter property also checks that nothing but InvalidBookError escapes, and that only
for a document without text (see `_convert`).
"""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doc_pipeline.core.books import InvalidBookError
from doc_pipeline.core.chunking import ChunkingConfig, chunk_markdown, count_tokens, scan_blocks
from doc_pipeline.core.epub import epub_to_markdown

# --- generated documents ----------------------------------------------------------------------

# Letters and digits, some of them non-ASCII (precomposed, so each is one alphanumeric code point).
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éüßøñçÅΩλжщ字한"
# Literal text that means something in markdown. None of it holds a letter, and only "1." and
# "[^1]" hold a digit (digits-only words are not compared: see `_word`).
_PUNCTUATION = ["*", "**", "_", "#", "##", "[", "]", "`", "```", "~~~", "<", ">", "&", "|", "-"]
_PUNCTUATION += ["+", "=", "!", "(", ")", ".", "1.", "\\", "[^1]"]

_BLOCKS = ["div", "section", "p", "blockquote"]
_INLINES = ["em", "strong", "a", "span"]  # op "a" is an external link, "a#" an internal one
_HEADINGS = [f"h{n}" for n in range(1, 7)]
_LINK = "https://example.com/p"

# A word holds a letter: digits-only tokens in the markdown are ordered-list numbers the
# converter adds, so they are left out of the comparison on both sides.
_word = st.text(alphabet=_ALPHABET, min_size=1, max_size=8).filter(lambda w: not w.isdigit())
_token = st.one_of(_word, _word, _word, st.sampled_from(_PUNCTUATION))


@dataclass(frozen=True)
class Node:
    tag: str  # "#text" for text, "br", or an element name
    children: tuple[Node, ...] = ()
    tokens: tuple[str, ...] = ()  # only for text
    href: str = ""  # only for <a>


# A document is drawn as a flat list of tokens and tags, then nested by `_build`: hypothesis
# draws and shrinks flat lists many times faster than recursive strategies.
_OPEN = _BLOCKS + _INLINES + ["a#", "ul", "ol", "li", "table", "tr", "td", "br"]
_CLOSE = "/"
_LOOSE = "!"  # the next text goes where it is, even straight into a <ul>, <table> or <tr>
_MAX_DEPTH = 8


def _ops(headings: bool) -> st.SearchStrategy[list[str]]:
    tags = _OPEN + (_HEADINGS if headings else [])
    op = st.one_of(_token.map(lambda t: "'" + t), st.sampled_from([*tags, _CLOSE, _CLOSE, _LOOSE]))
    # Mostly short documents, some long ones (hypothesis alone keeps lists short).
    return st.one_of(st.lists(op, min_size=1, max_size=30), st.lists(op, min_size=30, max_size=150))


def _build(ops: list[str]) -> tuple[Node, ...]:
    """Nest the ops: a tag opens an element inside the current one, "/" closes it. Lists and
    tables get their items, rows and cells where needed (text sits directly in a <ul> or <tr>
    only after a "!" op, as in sloppy books), and an "li"/"tr"/"td" op starts the next one in
    the nearest open list or table."""
    root: list = ["body", []]
    stack = [root]
    loose = False

    def open_(tag: str) -> None:
        element: list = [tag, []]
        stack[-1][1].append(element)
        stack.append(element)

    def close_to(tags: set[str]) -> bool:
        for depth in range(len(stack) - 1, 0, -1):
            if stack[depth][0] in tags:
                del stack[depth + 1 :]
                return True
        return False

    def make_room() -> None:  # what the current element needs before text or a child
        if stack[-1][0] in ("ul", "ol"):
            open_("li")
        if stack[-1][0] == "table":
            open_("tr")
        if stack[-1][0] == "tr":
            open_("td")

    for op in ops:
        if op == _CLOSE:
            if len(stack) > 1:
                stack.pop()
        elif op == _LOOSE:
            loose = True
        elif op.startswith("'"):
            if not loose:
                make_room()
            loose = False
            children = stack[-1][1]
            if children and isinstance(children[-1], tuple):
                children[-1] += (op[1:],)
            else:
                children.append((op[1:],))
        elif op == "br":
            make_room()
            stack[-1][1].append(["br", []])
        elif len(stack) > _MAX_DEPTH:
            continue
        elif op == "li":
            if close_to({"ul", "ol"}):
                open_("li")
            else:
                make_room()
                open_("ul")
                open_("li")
        elif op in ("tr", "td"):
            if op == "td" and close_to({"tr"}):
                open_("td")
            elif close_to({"table"}):
                open_("tr")
                open_("td")
            else:
                make_room()
                open_("table")
                open_("tr")
                open_("td")
        else:
            make_room()
            open_(op)
    return _freeze(root[1])


def _freeze(children: list) -> tuple[Node, ...]:
    nodes = []
    for child in children:
        if isinstance(child, tuple):
            nodes.append(Node("#text", tokens=child))
        elif child[0] in ("a", "a#"):  # the converter renders only external links as links
            href = _LINK if child[0] == "a" else "#here"
            nodes.append(Node("a", _freeze(child[1]), href=href))
        else:
            nodes.append(Node(child[0], _freeze(child[1])))
    return tuple(nodes)


def _documents(headings: bool = True) -> st.SearchStrategy[tuple[Node, ...]]:
    return _ops(headings).map(_build)


def _xhtml(nodes: tuple[Node, ...]) -> str:
    # Siblings are separated by spaces: "<em>a</em>b" is one word in HTML but two in any
    # markdown ("*a*b"), so a generated word never touches markup.
    return " ".join(_serialize(node) for node in nodes)


def _serialize(node: Node) -> str:
    if node.tag == "#text":
        return escape(" ".join(node.tokens))
    if node.tag == "br":
        return "<br/>"
    attrs = f' href="{node.href}"' if node.href else ""
    return f"<{node.tag}{attrs}> {_xhtml(node.children)} </{node.tag}>"


def _tokens(nodes: tuple[Node, ...], in_heading: bool = False) -> list[tuple[str, bool]]:
    """Every generated token, with whether it sits inside a heading element."""
    out: list[tuple[str, bool]] = []
    for node in nodes:
        if node.tag == "#text":
            out.extend((token, in_heading) for token in node.tokens)
        else:
            out.extend(_tokens(node.children, in_heading or node.tag in _HEADINGS))
    return out


_WORD_RE = re.compile(r"[^\W_]+")


def _words(text: str) -> Counter[str]:
    return Counter(w for w in _WORD_RE.findall(text) if not w.isdigit())


def _markup_count(nodes: tuple[Node, ...]) -> int:
    return sum(1 + _markup_count(node.children) for node in nodes)


# --- the minimal EPUB -------------------------------------------------------------------------

_CONTAINER = (
    '<?xml version="1.0"?>'
    '<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
    '<rootfiles><rootfile full-path="OEBPS/content.opf" '
    'media-type="application/oebps-package+xml"/></rootfiles></container>'
)
_OPF = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<package xmlns="http://www.idpf.org/2007/opf" version="2.0" unique-identifier="id">'
    '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Generated</dc:title>'
    '<dc:identifier id="id">urn:test:generated</dc:identifier><dc:language>en</dc:language>'
    "</metadata>"
    '<manifest><item id="c1" href="c1.xhtml" media-type="application/xhtml+xml"/></manifest>'
    '<spine><itemref idref="c1"/></spine></package>'
)


def _write_book(path: Path, body: str) -> None:
    xhtml = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Generated</title></head>'
        f"<body>{body}</body></html>"
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        zf.writestr("META-INF/container.xml", _CONTAINER)
        zf.writestr("OEBPS/content.opf", _OPF)
        zf.writestr("OEBPS/c1.xhtml", xhtml)


@pytest.fixture(scope="module")
def book_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One file rewritten per example: function-scoped tmp_path does not mix with @given.
    return tmp_path_factory.mktemp("generated") / "generated.epub"


def _convert(path: Path, nodes: tuple[Node, ...]) -> str | None:
    """The markdown, or None when the converter rejects the book."""
    _write_book(path, _xhtml(nodes))
    try:
        return epub_to_markdown(path).markdown
    except InvalidBookError as exc:
        # The one legitimate rejection: no text outside headings ("no extractable text" ignores
        # heading lines because in a real book they may be table-of-contents titles).
        assert str(exc).startswith(f"{path.name}: no extractable text"), exc
        tokens = _tokens(nodes)
        assert not any(_words(token) for token, in_heading in tokens if not in_heading)
        return None


# --- properties of the converter --------------------------------------------------------------

_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(_documents())
def test_every_word_survives_exactly_once(book_path: Path, nodes: tuple[Node, ...]) -> None:
    markdown = _convert(book_path, nodes)
    if markdown is None:
        return
    # Link targets are the one place the converter writes words of its own (besides list
    # numbers): "[text](https://example.com/p)" -> "[text]".
    expected: Counter[str] = Counter()
    for token, _in_heading in _tokens(nodes):
        expected.update(_words(token))
    assert _words(markdown.replace(f"]({_LINK})", "]")) == expected


@_SETTINGS
@given(_documents())
def test_output_size_is_linear(book_path: Path, nodes: tuple[Node, ...]) -> None:
    markdown = _convert(book_path, nodes)
    if markdown is None:
        return
    text = sum(len(token) + 1 for token, _ in _tokens(nodes))
    # Escaping at most doubles the text ("```" -> "\\`\\`\\`"). Each element adds a bounded
    # amount: "- ", "1. ", "> ", "| --- |", a link target, and on every line inside nested
    # lists and quotes a prefix of at most ~4 characters per level. (Seen: under 5 per element
    # beyond 2x the text.) Anything superlinear, like a subtree rendered twice, breaks this.
    assert len(markdown) <= 2 * text + 4 * _MAX_DEPTH * _markup_count(nodes)


@_SETTINGS
@given(_documents(headings=False))
def test_text_never_becomes_chunk_structure(book_path: Path, nodes: tuple[Node, ...]) -> None:
    """Without heading or <pre> elements in the source, the chunker sees no heading and no
    code fence in the markdown: literal '#' or '```' text must come out escaped."""
    markdown = _convert(book_path, nodes)
    if markdown is None:
        return
    assert [b for b in scan_blocks(markdown) if b.level] == []
    fences = re.findall(r"^ {0,3}(?:`{3,}|~{3,}).*$", markdown, re.M)
    assert fences == []


# --- properties of the chunker ----------------------------------------------------------------
# test_chunking.py already checks, for arbitrary markdown and configs: contiguous coverage of
# every non-space character, the same multiset of words, and word_count <= max. Missing there:
# the documented rules that bound chunks from below.

_plain_word = st.sampled_from(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"])


@st.composite
def _paragraph(draw: st.DrawFn, max_words: int) -> str:
    words = draw(st.lists(_plain_word, min_size=1, max_size=max_words))
    return " ".join(w + ("." if i % 7 == 6 else "") for i, w in enumerate(words))


@st.composite
def _section(draw: st.DrawFn, limit: int, first: bool) -> str:
    """A level 1-2 heading (except maybe for the first) and paragraphs, at most `limit` words;
    minor headings (level 3+) may sit between paragraphs."""
    blocks = []
    if not first or draw(st.booleans()):
        blocks.append("#" * draw(st.integers(1, 2)) + " " + draw(_plain_word))
    size = len(blocks)  # a heading counts one word ("#" is not a word)
    while size < limit:
        if limit - size >= 2 and draw(st.integers(0, 4)) == 0:
            blocks.append("### " + draw(_plain_word))
            size += 1
        paragraph = draw(_paragraph(min(limit - size, 40)))
        blocks.append(paragraph)
        size += count_tokens(paragraph)
        if draw(st.booleans()):
            break
    return "\n\n".join(blocks)


@st.composite
def _sectioned(draw: st.DrawFn) -> tuple[list[str], ChunkingConfig]:
    limit = draw(st.integers(2, 60))
    config = ChunkingConfig(min_words=draw(st.integers(0, limit)), max_words=limit)
    count = draw(st.integers(1, 8))
    return [draw(_section(limit, first=i == 0)) for i in range(count)], config


@settings(max_examples=100, deadline=None)
@given(_sectioned())
def test_small_sections_merge_forward_exactly_when_documented(
    case: tuple[list[str], ChunkingConfig],
) -> None:
    """Module docs, rule 1: a section under the minimum is merged with the next one when the
    result fits the maximum; otherwise it stays a chunk of its own (so does a short last
    section). Every section here has body text and fits the maximum, so no chunk is split."""
    sections, config = case
    markdown = "\n\n".join(sections)
    expected: list[list[str]] = []
    size = 0
    for section in sections:
        words = count_tokens(section)
        if expected and size < config.min_words and size + words <= config.max_words:
            expected[-1].append(section)
            size += words
        else:
            expected.append([section])
            size = words
    chunks = chunk_markdown(markdown, config)
    assert [c.content for c in chunks] == ["\n\n".join(group) for group in expected]


@st.composite
def _flat_text(draw: st.DrawFn) -> tuple[str, int, ChunkingConfig]:
    limit = draw(st.integers(20, 300))
    unit = draw(st.integers(1, max(1, limit // 8)))
    paragraphs = draw(st.lists(_paragraph(unit), min_size=1, max_size=60))
    config = ChunkingConfig(min_words=draw(st.integers(0, limit)), max_words=limit)
    return "\n\n".join(paragraphs), unit, config


@settings(max_examples=100, deadline=None)
@given(_flat_text())
def test_split_text_is_balanced(case: tuple[str, int, ChunkingConfig]) -> None:
    """Module docs, rule 2: a group larger than the maximum is cut into chunks of balanced
    size. With paragraphs of at most `unit` words and no headings, every chunk therefore holds
    at least half the maximum less one paragraph (no runt chunk at the end), and a text that
    fits the maximum is one chunk."""
    markdown, unit, config = case
    chunks = chunk_markdown(markdown, config)
    total = count_tokens(markdown)
    assert sum(c.word_count for c in chunks) == total
    assert all(c.word_count <= config.max_words for c in chunks)
    if total <= config.max_words:
        assert len(chunks) == 1
    else:
        assert min(c.word_count for c in chunks) >= config.max_words / 2 - unit
