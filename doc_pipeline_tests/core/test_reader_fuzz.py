"""A short, time-bounded fuzz run of the EPUB reader over mutated corpus books.

Each case is a corpus book with one deterministic mutation (from FUZZ_SEED and the case
index): raw bytes of the ZIP flipped, inserted, deleted or truncated, or one member (XHTML,
OPF, NCX/nav, container.xml) rewritten with broken contents in an otherwise valid ZIP. Every
case must either convert to non-empty markdown or raise InvalidBookError naming the file.

The books are built and run in child processes (one per batch, not per file: importing the
converter costs more than most conversions) with a 1 GiB address-space limit and a per-book
wall-clock limit, so a hang, a crash or a memory blow-up fails this test instead of hanging
CI. Failing books stay in tmp_path; the failure message says how to rebuild them.

Longer local runs: DOC_PIPELINE_FUZZ_CASES=3000 (and DOC_PIPELINE_FUZZ_SEED=anything).
"""

from __future__ import annotations

import io
import json
import os
import queue
import random
import re
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
CORPUS = PROJECT.parent / "shared" / "corpus"
# The real books, and the hostile ones as mutation sources too (their defences get fuzzed).
SOURCES = sorted((CORPUS / "epub").glob("*.epub")) + sorted((CORPUS / "hostile").glob("*.epub"))

FUZZ_CASES = int(os.environ.get("DOC_PIPELINE_FUZZ_CASES", "120"))
FUZZ_SEED = os.environ.get("DOC_PIPELINE_FUZZ_SEED", "doc-pipeline-fuzz-1")
WORKERS = 2  # child processes at a time (CI has 2 cores)
CASE_TIMEOUT = 30.0  # seconds for one book; a real book takes under a second
RUN_TIMEOUT = 600.0  # seconds for a whole batch, however slow the machine: CI never hangs
MEMORY_LIMIT = 1 << 30  # RLIMIT_AS of each child, bytes
# Structure-aware mutations rewrite the whole ZIP; sources that inflate past this (zip-bomb,
# huge-chapter) get byte-level mutations only, as rewriting them costs seconds.
REWRITE_MAX_BYTES = 16 << 20


# --- mutations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    index: int
    source: str  # corpus path, relative
    mutation: str  # what was done, for the failure message
    data: bytes


Mutator = Callable[[random.Random, bytes], tuple[bytes, str]]


def _offset(rng: random.Random, data: bytes) -> int:
    """Where to hit: anywhere, or near the start (local header, mimetype, container.xml) or
    the end (central directory), where a few bytes change how the whole archive reads."""
    region = rng.choice(["any", "any", "head", "tail"])
    if region == "head":
        return rng.randrange(min(len(data), 512))
    if region == "tail":
        return rng.randrange(max(0, len(data) - 4096), len(data))
    return rng.randrange(len(data))


def flip_bits(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    spots = sorted(_offset(rng, data) for _ in range(rng.randint(1, 8)))
    for spot in spots:
        out[spot] ^= 1 << rng.randrange(8)
    return bytes(out), f"bits flipped at {spots}"


def overwrite_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at, junk = _offset(rng, data), rng.randbytes(rng.randint(1, 64))
    return data[:at] + junk + data[at + len(junk) :], f"{len(junk)} random bytes written at {at}"


def insert_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at, junk = _offset(rng, data), rng.randbytes(rng.randint(1, 64))
    return data[:at] + junk + data[at:], f"{len(junk)} random bytes inserted at {at}"


def delete_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at, size = _offset(rng, data), rng.randint(1, 256)
    return data[:at] + data[at + size :], f"bytes {at}..{at + size} deleted"


def truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    return data[:at], f"truncated to {at} bytes"


# ZIP header fields worth lying in: (signature, offset, size in bytes, name).
_ZIP_FIELDS = [
    (b"PK\x01\x02", 6, 2, "central: version needed"),
    (b"PK\x01\x02", 8, 2, "central: flags"),
    (b"PK\x01\x02", 10, 2, "central: compression method"),
    (b"PK\x01\x02", 16, 4, "central: CRC"),
    (b"PK\x01\x02", 20, 4, "central: compressed size"),
    (b"PK\x01\x02", 24, 4, "central: uncompressed size"),
    (b"PK\x01\x02", 28, 2, "central: name length"),
    (b"PK\x01\x02", 30, 2, "central: extra length"),
    (b"PK\x01\x02", 38, 4, "central: external attributes"),
    (b"PK\x01\x02", 42, 4, "central: local header offset"),
    (b"PK\x03\x04", 6, 2, "local: flags"),
    (b"PK\x03\x04", 8, 2, "local: compression method"),
    (b"PK\x03\x04", 18, 4, "local: compressed size"),
    (b"PK\x03\x04", 26, 2, "local: name length"),
    (b"PK\x03\x04", 28, 2, "local: extra length"),
    (b"PK\x05\x06", 8, 2, "end: entries on this disk"),
    (b"PK\x05\x06", 10, 2, "end: entries"),
    (b"PK\x05\x06", 12, 4, "end: directory size"),
    (b"PK\x05\x06", 16, 4, "end: directory offset"),
]


def zip_field(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One header field of one entry set to a boundary or random value: headers can lie."""
    signature, offset, size, name = rng.choice(_ZIP_FIELDS)
    spots = [m.start() for m in re.finditer(re.escape(signature), data)]
    if not spots:
        return flip_bits(rng, data)
    at = rng.choice(spots) + offset
    old = int.from_bytes(data[at : at + size], "little")
    top = (1 << (8 * size)) - 1
    values = [0, 1, top, old + 1, max(0, old - 1), old | 1 << rng.randrange(8 * size)]
    values += [rng.randrange(top + 1), 0o120777 << 16]  # the last: a symlink, in attributes
    value = rng.choice(values) & top
    out = data[:at] + value.to_bytes(size, "little") + data[at + size :]
    return out, f"{name} at {at}: {old} -> {value}"


BYTE_MUTATORS: list[Mutator] = [
    flip_bits,
    overwrite_bytes,
    insert_bytes,
    delete_bytes,
    truncate,
    zip_field,
    zip_field,
]


# Member mutations: (rng, member bytes) -> (new bytes, description).

_TAG = re.compile(rb"<[^<>]{0,200}>")
_START_TAG = re.compile(rb"<[A-Za-z][^<>/]{0,200}>")
_ATTR_VALUE = re.compile(rb'\b(href|src|idref|id|full-path|media-type)="([^"]*)"')


def _body_spot(rng: random.Random, text: bytes) -> int:
    body = text.find(b"<body")
    start = text.find(b">", body) + 1 if body != -1 else 0
    return rng.randrange(start, len(text) + 1) if start < len(text) else len(text)


def cut_member(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(text) + 1)
    return text[:at], f"truncated to {at} bytes"


def splice_random(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    at, junk = rng.randrange(len(text) + 1), rng.randbytes(rng.randint(1, 200))
    return text[:at] + junk + text[at:], f"{len(junk)} random bytes spliced at {at}"


def remove_tags(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    tags = list(_TAG.finditer(text))
    if not tags:
        return text + b"</p></div>", "stray end tags appended"
    if rng.random() < 0.3:
        return re.sub(rb"</[^<>]*>", b"", text), "every end tag removed"
    doomed = sorted(rng.sample(range(len(tags)), min(len(tags), rng.randint(1, 20))))
    out, last = [], 0
    for i in doomed:
        out += [text[last : tags[i].start()]]
        last = tags[i].end()
    return b"".join(out) + text[last:], f"tags number {doomed} removed"


def deep_nesting(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    depth = rng.choice([300, 5_000, 100_000])
    tag = rng.choice([b"div", b"span", b"blockquote", b"ul"])
    closed = rng.random() < 0.5
    nest = b"<%s>" % tag * depth + b"deep" + (b"</%s>" % tag * depth if closed else b"")
    at = _body_spot(rng, text)
    shape = "closed" if closed else "never closed"
    return text[:at] + nest + text[at:], f"<{tag.decode()}> x {depth} ({shape}) at {at}"


_LETTERS = bytes(range(97, 123)) * 9 + b"      "  # 240 bytes: a byte -> a letter or space
_TO_LETTERS = bytes.maketrans(bytes(range(240)), _LETTERS)


def huge_attribute(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    size = rng.choice([100_000, 2_000_000, 11_000_000])  # lxml's own text limit is 10 MB
    tags = list(_START_TAG.finditer(text))
    at = tags[rng.randrange(len(tags))].end() - 1 if tags else 0
    # Random letters do not compress, so the value reaches the parser; "x" * size is caught
    # earlier by the compression-ratio limit.
    kind = rng.choice(["letters", "letters", "same", "entities"])
    if kind == "letters":
        value = rng.randbytes(size).translate(_TO_LETTERS, bytes(range(240, 256)))
    else:
        value = b"x" * size if kind == "same" else b"&amp;" * (size // 5)
    what = f"{len(value):,}-byte attribute ({kind}) at {at}"
    return text[:at] + b' title="' + value + b'"' + text[at:], what


def nul_bytes(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    spots = sorted(rng.randrange(len(text) + 1) for _ in range(rng.randint(1, 10)))
    out = bytearray(text)
    for spot in reversed(spots):
        out[spot:spot] = b"\x00"
    return bytes(out), f"NUL bytes inserted at {spots}"


def wrong_encoding(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    how = rng.choice(["declare", "declare", "utf16-as-utf8", "bom", "latin1"])
    body = re.sub(rb"^\s*<\?xml[^>]*\?>", b"", text)
    if how == "declare":
        enc = rng.choice([b"utf-16", b"shift_jis", b"ebcdic-cp-us", b"no-such-encoding", b"utf-32"])
        return b'<?xml version="1.0" encoding="%s"?>' % enc + body, f"declares {enc.decode()}"
    if how == "utf16-as-utf8":
        data = b'<?xml version="1.0" encoding="utf-8"?>' + body
        return data.decode("utf-8", "replace").encode("utf-16-le"), "UTF-16LE bytes declaring utf-8"
    if how == "bom":
        return b"\xff\xfe" + text, "UTF-16 byte-order mark on UTF-8 bytes"
    latin = text.decode("utf-8", "replace").encode("latin-1", "replace")
    return latin, "re-encoded as latin-1, declaration unchanged"


_ENTITY_SUBSETS = [
    (
        "billion laughs",
        b'<!ENTITY a "lollollollollollollollollollol">'
        + b"".join(b'<!ENTITY %c "%s">' % (98 + i, b"&%c;" % (97 + i) * 10) for i in range(9)),
        b"&j;",
    ),
    ("external file entity", b'<!ENTITY x SYSTEM "file:///etc/passwd">', b"&x;"),
    ("external http entity", b'<!ENTITY x SYSTEM "http://127.0.0.1:9/x">', b"&x;"),
    ("parameter entity", b'<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;', b"&p;"),
    ("quadratic blowup", b'<!ENTITY q "' + b"q" * 50_000 + b'">', b"&q;" * 2_000),
    ("unclosed subset", b'<!ENTITY x "y"', b"&x;"),
]


def entity_declarations(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    name, subset, refs = rng.choice(_ENTITY_SUBSETS)
    root = re.search(rb"<(?:html|package|ncx|container)\b", text)
    decl = b"<!DOCTYPE html [" + subset + b"]>"
    at = root.start() if root else 0
    text = re.sub(rb"<!DOCTYPE[^>]*>", b"", text[:at]) + decl + text[at:]
    spot = _body_spot(rng, text)
    return text[:spot] + b"<p>" + refs + b"</p>" + text[spot:], f"DOCTYPE with {name}"


def bad_attribute(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    attrs = list(_ATTR_VALUE.finditer(text))
    if not attrs:
        return splice_random(rng, text)
    hit = attrs[rng.randrange(len(attrs))]
    value = rng.choice(
        [b"", b"../../../../etc/passwd", b"/etc/passwd", b"..%2F..%2Fetc%2Fpasswd", b"a" * 5000,
         b"#", b"?x", b"no-such-file.xhtml", b"nav.xhtml#", b"\xff\xfe", b"file:///etc/passwd"]
    )  # fmt: skip
    out = text[: hit.start(2)] + value + text[hit.end(2) :]
    return out, f"{hit.group(1).decode()} {hit.group(2)[:60]!r} -> {value[:60]!r}"


MEMBER_MUTATORS: list[Mutator] = [
    cut_member,
    splice_random,
    remove_tags,
    deep_nesting,
    huge_attribute,
    nul_bytes,
    wrong_encoding,
    entity_declarations,
    bad_attribute,
]


@cache
def _source_bytes(path: Path) -> bytes:
    return path.read_bytes()


@cache
def _members(path: Path) -> tuple[tuple[zipfile.ZipInfo, bytes], ...] | None:
    """The source's members, inflated (read once per run), or None if it is not a ZIP small
    enough to rewrite."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if sum(i.file_size for i in infos) > REWRITE_MAX_BYTES:
                return None
            return tuple((i, zf.read(i)) for i in infos)
    except (zipfile.BadZipFile, OSError):
        return None


_TEXTUAL = re.compile(r"\.(x?html?|opf|ncx|xml)$", re.I)


def _rewrite_member(rng: random.Random, path: Path) -> tuple[bytes, str] | None:
    """The source ZIP with one member rewritten, removed or duplicated; None if the source
    is not rewritable. Only text members are deflated (cheap); the rest are stored."""
    members = _members(path)
    if not members:
        return None
    entries = [(info, data) for info, data in members]
    names = [info.filename for info, _ in entries]
    textual = [n for n in names if _TEXTUAL.search(n)]
    weights = [4 if n.endswith(("opf", "ncx", "container.xml")) else 1 for n in textual]
    target = rng.choices(textual, weights)[0] if textual else rng.choice(names)
    at = names.index(target)
    kind = rng.random()
    if kind < 0.08:
        del entries[at]
        what = "removed from the ZIP"
    elif kind < 0.14:
        entries.insert(at + 1, (entries[at][0], rng.randbytes(rng.randint(0, 300))))
        what = "duplicated (second copy random bytes)"
    else:
        mutator = rng.choice(MEMBER_MUTATORS)
        data, what = mutator(rng, entries[at][1])
        entries[at] = (entries[at][0], data)
        what = f"{mutator.__name__}: {what}"
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is the point of one mutation
        with zipfile.ZipFile(out, "w", compresslevel=1) as zw:
            for info, data in entries:
                copy = zipfile.ZipInfo(info.filename, info.date_time)
                copy.external_attr = info.external_attr  # a symlink member stays one
                deflate = _TEXTUAL.search(info.filename) and info.filename != "mimetype"
                copy.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
                zw.writestr(copy, data)
    return out.getvalue(), f"member {target!r} {what}"


def make_case(seed: str, index: int) -> Case:
    """The index-th mutated book for a seed; the same inputs always give the same bytes."""
    rng = random.Random(f"{seed}:{index}")
    path = SOURCES[rng.randrange(len(SOURCES))]
    rewritten = _rewrite_member(rng, path) if rng.random() < 0.6 else None
    if rewritten:
        data, what = rewritten
    else:
        mutator = rng.choice(BYTE_MUTATORS)
        data, what = mutator(rng, _source_bytes(path))
        what = f"{mutator.__name__}: {what}"
    return Case(index, str(path.relative_to(CORPUS)), what, data)


# --- the child process ----------------------------------------------------------------------

# Reads {"seed", "cases": [[index, path], ...]} as JSON from stdin; for each case builds the
# mutated book (so batches build in parallel and only the books in flight are on disk),
# writes it to `path`, converts it and writes one JSON result line. The protocol goes to a
# private copy of stdout so that library prints cannot corrupt it.
_CHILD = r"""
import faulthandler, json, os, resource, sys
faulthandler.enable()  # a segfault leaves a Python traceback in the log
resource.setrlimit(resource.RLIMIT_AS, (__LIMIT__, __LIMIT__))
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
from pathlib import Path
from doc_pipeline_tests.bounded_reader import read_one
from doc_pipeline_tests.core.test_reader_fuzz import make_case
job = json.load(sys.stdin)
for index, path in job["cases"]:
    Path(path).write_bytes(make_case(job["seed"], index).data)
    out.write(json.dumps({"index": index, **read_one(Path(path))}) + "\n")
    out.flush()
""".replace("__LIMIT__", str(MEMORY_LIMIT))


def _verdict(path: Path, result: dict) -> str | None:
    """None if the result (of bounded_reader.read_one) is acceptable, else what is wrong."""
    outcome = result["outcome"]
    if outcome == "book":
        if result["leaked_passwd"]:
            return "markdown or warnings contain /etc/passwd lines"
        return None if result["words"] else "returned a book with empty markdown"
    if outcome == "invalid":
        if result["error"].startswith(f"{path.name}: "):
            return None
        return f"InvalidBookError not naming the file: {result['error']!r}"
    trace = f"\n{result['traceback']}" if "traceback" in result else ""
    return f"{outcome}: {result['error']}{trace}"


def _run_batch(seed: str, cases: list[tuple[int, Path]], log: Path) -> dict[int, str | None]:
    """Run cases in child processes and return each one's verdict; a child that hangs or dies
    is replaced, and the case it was on gets a timeout/crash verdict. Files of acceptable
    cases are deleted as they come, the others kept for reproduction."""
    verdicts: dict[int, str | None] = {}
    paths = dict(cases)
    pending = list(cases)
    barren = 0  # children in a row that died before any result
    deadline = time.monotonic() + RUN_TIMEOUT
    while pending:
        if barren == 3:  # the child itself is broken: do not start one per case
            verdicts.update({i: f"not run: children keep dying, see {log}" for i, _ in pending})
            break
        with log.open("ab") as err:
            log_start = err.tell()
            child = subprocess.Popen(
                [sys.executable, "-c", _CHILD],
                cwd=PROJECT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        lines: queue.Queue[bytes | None] = queue.Queue()

        def read(stream=child.stdout, lines=lines) -> None:
            for line in stream:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        job = {"seed": seed, "cases": [[i, str(p)] for i, p in pending]}
        try:
            child.stdin.write(json.dumps(job).encode())
            child.stdin.close()
        except BrokenPipeError:
            pass  # it died already: reported below as a crash of the first pending case
        fresh = True  # no result from this child yet
        while pending:
            index = pending.pop(0)[0]
            try:
                line = lines.get(timeout=CASE_TIMEOUT)
            except queue.Empty:
                child.kill()  # our own child, by its pid
                verdicts[index] = f"timeout: over {CASE_TIMEOUT:.0f} s"
                barren = 0
                break
            if line is None:
                code = child.wait()
                tail = log.read_bytes()[log_start:][-2000:].decode("utf-8", "replace")
                verdicts[index] = f"crash: exit code {code}\n{tail}"
                barren = barren + 1 if fresh else 0
                break
            fresh = False
            result = json.loads(line)
            verdicts[index] = _verdict(paths[index], result)
            if verdicts[index] is None:
                paths[index].unlink()
            if pending and time.monotonic() > deadline:
                child.kill()
                message = f"not run: the batch took over {RUN_TIMEOUT:.0f} s"
                verdicts.update({i: message for i, _ in pending})
                pending.clear()
        child.wait()
    return verdicts


def test_mutated_books_convert_or_fail_cleanly(tmp_path: Path) -> None:
    assert SOURCES, f"the corpus is missing: {CORPUS}"
    # Interleaved batches, one per worker, so slow sources spread over both.
    batches = [
        [(i, tmp_path / f"case-{i:05d}.epub") for i in range(w, FUZZ_CASES, WORKERS)]
        for w in range(WORKERS)
    ]
    logs = [tmp_path / f"child-{w}.log" for w in range(WORKERS)]
    with ThreadPoolExecutor(WORKERS) as pool:
        done = pool.map(_run_batch, [FUZZ_SEED] * WORKERS, batches, logs)
        verdicts = {index: verdict for part in done for index, verdict in part.items()}

    failures = []
    for index, problem in sorted(verdicts.items()):
        if problem is None:
            continue
        case = make_case(FUZZ_SEED, index)
        path = tmp_path / f"case-{index:05d}.epub"
        failures.append(
            f"case {index} (seed {FUZZ_SEED!r}) from {case.source}, {case.mutation}\n"
            f"  -> {problem}\n"
            f'  file kept at {path}; rebuild it with: python -c "from doc_pipeline_tests.core.'
            f"test_reader_fuzz import make_case; import sys; sys.stdout.buffer.write("
            f'make_case({FUZZ_SEED!r}, {index}).data)" > case.epub'
        )
    assert len(verdicts) == FUZZ_CASES
    if failures:
        pytest.fail(f"{len(failures)} of {FUZZ_CASES} cases failed:\n\n" + "\n\n".join(failures))
