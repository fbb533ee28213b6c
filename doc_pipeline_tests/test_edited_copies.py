"""Document versions, through the CLI and the `gemini` provider against the fake server: an
edited copy of a book (the same EPUB identifier) is a new version of its document, which
supersedes the current one paying only for what changed; a renamed copy is the same version; a
different book that shares the identifier is a new document; a crash before the supersede
leaves the previous version current and whole."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from doc_pipeline.db import store
from doc_pipeline_tests.conftest import CORPUS
from doc_pipeline_tests.document_data import document_data
from doc_pipeline_tests.ledger_counts import ai_call_counts
from doc_pipeline_tests.processes import run_cli, stop_process_group, wait_until

BOOK = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"


def edited_copy(
    book: Path, target: Path, old: str, new: str, *, chapter_text: str | None = None
) -> str:
    """The book with `old` replaced by `new` once, in its middle chapter (or that chapter's
    body paragraphs replaced by `chapter_text`); that chapter's name."""
    with zipfile.ZipFile(book) as source:
        chapters = sorted(
            (n for n in source.namelist() if re.search(r"chapter-\d+\.xhtml$", n)),
            key=lambda n: int(re.search(r"(\d+)\.xhtml$", n).group(1)),
        )
        middle = chapters[len(chapters) // 2]
        with zipfile.ZipFile(target, "w") as copy:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == middle and chapter_text is not None:
                    text = data.decode("utf-8")
                    title_end = text.find("</hgroup>")
                    body = title_end + len("</hgroup>") if title_end >= 0 else text.find("<p")
                    rest = re.sub(r"<p\b[^>]*>.*?</p>", "", text[body:], flags=re.S)
                    at = rest.index("</section>")
                    data = (text[:body] + rest[:at] + chapter_text + rest[at:]).encode("utf-8")
                elif info.filename == middle:
                    text = data.decode("utf-8")
                    # In the chapter's first body paragraph (past the title's heading group).
                    body = text.index("<p", text.find("</hgroup>") if "</hgroup>" in text else 0)
                    at = text.index(old, body)
                    data = (text[:at] + new + text[at + len(old) :]).encode("utf-8")
                copy.writestr(info, data)
    return middle


def _int(entry: dict) -> int:
    return entry["entry_data"]["value"]


def _paid(pipeline, **where) -> dict:
    return ai_call_counts(pipeline.engine, "stage", outcome="paid", **where)


def _current_documents(pipeline) -> list[dict]:
    return store.document_summaries(pipeline.engine)


def test_a_one_word_edit_is_a_new_version_that_pays_for_the_changed_text_only(pipeline, tmp_path):
    (original,) = pipeline.ingest(BOOK).values()
    before = document_data(pipeline.engine, original["document_id"])
    paid_before = _paid(pipeline)
    copy = tmp_path / "flatland-edited.epub"
    edited_copy(BOOK, copy, " the ", " the very ")
    (edited,) = pipeline.ingest(copy).values()
    assert edited["stage"] == "connected" and edited["version"] == 2
    assert edited["document_id"] == original["document_id"]  # the same document, superseded
    # One current document, at version 2 of 2.
    (summary,) = _current_documents(pipeline)
    assert (summary["current_version"], summary["versions"]) == (2, 2)
    # The changed chapter's chunking request and one embedding batch: nothing else.
    paid = _paid(pipeline)
    assert sum(paid.values()) - sum(paid_before.values()) <= 2
    assert paid["chunks"] - paid_before["chunks"] == 1
    counts = [
        {key: _int(m[key]) for key in ("embedded_now", "reused_vectors")}
        for m in pipeline.materialization_metadata("embeddings")
    ]
    assert counts[0] == {"embedded_now": original["chunks"], "reused_vectors": 0}
    assert 1 <= counts[1]["embedded_now"] <= 2
    after = document_data(pipeline.engine, edited["document_id"])
    kept = set(before.chunks) & set(after.chunks)
    assert len(kept) >= 0.9 * len(after.chunks)
    # Unchanged chunks keep their rows' vectors; the changed ones have new ids and vectors.
    assert all(after.vectors[c] == before.vectors[c] for c in kept)
    assert set(after.vectors) == set(after.chunks)
    # The UI's materialization says what changed.
    (superseding,) = [
        m for m in pipeline.materialization_metadata("embeddings") if "chunks_kept" in m
    ]
    assert _int(superseding["chunks_kept"]) == len(kept)
    assert _int(superseding["chunks_added"]) == len(set(after.chunks) - kept)
    assert _int(superseding["chunks_removed"]) == len(set(before.chunks) - kept)
    # The superseded version's file stays, and can be exported byte for byte.
    command = [sys.executable, "-m", "doc_pipeline", "export", edited["document_id"]]
    exported = subprocess.run(
        [*command, "--version", "1"], env=pipeline.env, capture_output=True, timeout=120
    )
    assert exported.returncode == 0 and exported.stdout == BOOK.read_bytes()
    listed = run_cli(pipeline.env, "status", edited["document_id"], timeout=120)
    assert "version 1" in listed.stdout and "superseded" in listed.stdout
    assert "version 2" in listed.stdout and "current since" in listed.stdout
    # The edited file under another name is the same version: nothing is paid, no version.
    renamed = tmp_path / "my-flatland.epub"
    shutil.copyfile(copy, renamed)
    paid_now = _paid(pipeline)
    (again,) = pipeline.ingest(renamed).values()
    assert again["document_id"] == edited["document_id"] and again["version"] == 2
    assert _paid(pipeline) == paid_now
    assert _current_documents(pipeline)[0]["versions"] == 2


def test_a_different_book_that_shares_the_identifier_is_a_new_document(pipeline, tmp_path):
    """... unless the user says it is a version (`--version-of`), which makes any file one."""
    (original,) = pipeline.ingest(BOOK).values()
    other = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"
    rabbit = re.sub(r"\s+", " ", store_free_text(other))[:3000]
    impostor = _with_flatlands_package(tmp_path / "not-flatland.epub", rabbit)
    (outcome,) = pipeline.ingest(impostor).values()
    assert outcome["document_id"] != original["document_id"] and outcome["version"] == 1
    (warning,) = [w for w in outcome["warnings"] if "shares its identifier" in w]
    assert original["document_id"] in warning and "new document" in warning
    assert len(_current_documents(pipeline)) == 2
    forced = _with_flatlands_package(tmp_path / "rewritten.epub", rabbit.replace("Peter", "Pi"))
    short_id = original["document_id"][:6]
    (made,) = pipeline.ingest(forced, extra_args=["--version-of", short_id]).values()
    assert made["document_id"] == original["document_id"] and made["version"] == 2
    assert made["stage"] == "connected"


def _with_flatlands_package(target: Path, text: str) -> Path:
    """Flatland's package (so its identifier), every section's paragraphs replaced by `text`."""
    with zipfile.ZipFile(BOOK) as source, zipfile.ZipFile(target, "w") as copy:
        for info in source.infolist():
            data = source.read(info)
            page = data.decode("utf-8", "replace")
            if info.filename.endswith(".xhtml") and "</section>" in page:
                page = re.sub(r"<p\b[^>]*>.*?</p>", "", page, flags=re.S)
                at = page.index("</section>")
                data = (page[:at] + f"<p>{text}</p>" + page[at:]).encode("utf-8")
            copy.writestr(info, data)
    return target


def store_free_text(book: Path) -> str:
    """The text of a book's XHTML files, tags stripped (to make another book's chapters)."""
    with zipfile.ZipFile(book) as archive:
        pages = [
            archive.read(n).decode("utf-8", "replace")
            for n in archive.namelist()
            if n.endswith((".xhtml", ".html"))
        ]
    return re.sub(r"<[^>]+>", " ", " ".join(pages))


def test_a_crash_before_the_supersede_leaves_the_previous_version_current_and_whole(
    pipeline, tmp_path
):
    """The new version's ingest is SIGKILLed while its embedding request is in flight (its
    chunks made, not written): the document still serves version 1 with every chunk, vector and
    connection; the next ingest completes version 2."""
    (original,) = pipeline.ingest(BOOK).values()
    before = document_data(pipeline.engine, original["document_id"])
    copy = tmp_path / "flatland-edited.epub"
    edited_copy(BOOK, copy, " the ", " the very ")
    pipeline.fake.add_fault("batchEmbedContents", delay_seconds=60)
    process = pipeline.start_ingest(copy)
    try:
        wait_until(lambda: pipeline.fake.in_flight("batchEmbedContents"), 120, "an embedding")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        stop_process_group(process)
    pipeline.fake.clear_faults()
    (summary,) = _current_documents(pipeline)
    assert (summary["current_version"], summary["versions"]) == (1, 2)
    assert document_data(pipeline.engine, original["document_id"]) == before

    (edited,) = pipeline.ingest(copy).values()
    assert edited["stage"] == "connected" and edited["version"] == 2
    (summary,) = _current_documents(pipeline)
    assert summary["current_version"] == 2
    after = document_data(pipeline.engine, original["document_id"])
    assert len(set(before.chunks) & set(after.chunks)) >= 0.9 * len(after.chunks)
    assert set(after.vectors) == set(after.chunks) and after != before


REPLACEMENT = "".join(
    f"<p>A new paragraph {i} of the rewritten chapter, about the Sphere's lesson on Spaceland,"
    " written again from the start by the editor of this edition.</p>"
    for i in range(40)
)


@pytest.mark.parametrize("change", ["replaced", "removed"])
def test_a_chapter_replaced_or_removed_changes_only_that_chapters_chunks(
    pipeline, tmp_path, change
):
    (original,) = pipeline.ingest(BOOK).values()
    before = {c["id"]: c for c in store.load_chunks(pipeline.engine, original["document_id"])}
    paid_before = _paid(pipeline)
    copy = tmp_path / f"flatland-chapter-{change}.epub"
    edited_copy(BOOK, copy, "", "", chapter_text=REPLACEMENT if change == "replaced" else "")
    (edited,) = pipeline.ingest(copy).values()
    assert edited["document_id"] == original["document_id"] and edited["version"] == 2
    after = {c["id"]: c for c in store.load_chunks(pipeline.engine, edited["document_id"])}
    removed = [before[i] for i in before.keys() - after.keys()]
    added = [after[i] for i in after.keys() - before.keys()]
    # What changed is in that chapter, and at most the chunk before it (the chunking window
    # holding the chapter's start also holds the end of the chapter before); the rest kept
    # its ids.
    chapters = sorted({tuple(c["heading_path"]) for c in removed + added})
    assert removed and len(chapters) <= 2
    assert len(removed) <= 0.2 * len(before)
    if change == "replaced":
        assert added and all("rewritten chapter" in c["content"] for c in added)
    else:
        assert all("rewritten chapter" not in c["content"] for c in after.values())
    paid = _paid(pipeline)
    # That chapter's chunking request(s) only, and its new texts' vectors.
    assert 1 <= paid["chunks"] - paid_before["chunks"] <= 2
    assert paid.get("embeddings", 0) - paid_before.get("embeddings", 0) == (1 if added else 0)
    (superseding,) = [
        m for m in pipeline.materialization_metadata("embeddings") if "chunks_kept" in m
    ]
    assert _int(superseding["chunks_removed"]) == len(removed)
    assert _int(superseding["chunks_added"]) == len(added)
    assert len(_current_documents(pipeline)) == 1


def test_two_versions_racing_end_with_the_newest_current(pipeline, tmp_path):
    """Two edited copies ingested at once, by two `ingest` processes: whichever run finishes
    first, the newer version (the later registered) ends current, whole, and the older one is
    never made current over it."""
    (original,) = pipeline.ingest(BOOK).values()
    older, newer = tmp_path / "flatland-a.epub", tmp_path / "flatland-b.epub"
    edited_copy(BOOK, older, " the ", " the very ")
    edited_copy(BOOK, newer, " the ", " the most ")
    pipeline.fake.add_fault("batchEmbedContents", delay_seconds=1.5)  # both runs overlap
    first = pipeline.start_ingest(older)
    try:
        wait_until(
            lambda: len(store.versions_of(pipeline.engine, original["document_id"])) == 2,
            120,
            "the first copy to be registered",
            interval=0.05,
        )
        (second,) = pipeline.ingest(newer).values()
        first.communicate(timeout=300)
    finally:
        stop_process_group(first)
    pipeline.fake.clear_faults()
    assert first.returncode == 0 and second["version"] == 3
    (summary,) = _current_documents(pipeline)
    assert summary["current_version"] == 3 and summary["stage"] != "failed"
    chunks = store.load_chunks(pipeline.engine, original["document_id"])
    text = " ".join(c["content"] for c in chunks)
    assert "the most doctrine" in text and "the very doctrine" not in text
    data = document_data(pipeline.engine, original["document_id"])
    assert set(data.vectors) == set(data.chunks)
