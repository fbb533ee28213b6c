"""An edited copy of a book, through the `gemini` provider against the fake server: every
chunk text that has a vector already is reused, so only the changed texts are embedded; the
chunking ledger pays only for the changed chapter."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from doc_pipeline_tests.conftest import CORPUS
from doc_pipeline_tests.ledger_counts import ai_call_counts

BOOK = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"


def edited_copy(book: Path, target: Path, old: str, new: str) -> str:
    """The book with `old` replaced by `new` once, in its middle chapter; that chapter's name."""
    with zipfile.ZipFile(book) as source:
        chapters = sorted(
            (n for n in source.namelist() if re.search(r"chapter-\d+\.xhtml$", n)),
            key=lambda n: int(re.search(r"(\d+)\.xhtml$", n).group(1)),
        )
        middle = chapters[len(chapters) // 2]
        with zipfile.ZipFile(target, "w") as copy:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == middle:
                    text = data.decode("utf-8")
                    # In the chapter's first body paragraph (past the title's heading group).
                    body = text.index("<p", text.find("</hgroup>") if "</hgroup>" in text else 0)
                    at = text.index(old, body)
                    data = (text[:at] + new + text[at + len(old) :]).encode("utf-8")
                copy.writestr(info, data)
    return middle


def _int(entry: dict) -> int:
    return entry["entry_data"]["value"]


def test_a_one_word_edit_embeds_only_the_changed_texts(pipeline, tmp_path):
    (original,) = pipeline.ingest(BOOK).values()
    copy = tmp_path / "flatland-edited.epub"
    edited_copy(BOOK, copy, " the ", " the very ")
    (edited,) = pipeline.ingest(copy).values()
    assert edited["stage"] == "connected" and edited["document_id"] != original["document_id"]
    paid = ai_call_counts(
        pipeline.engine, "stage", outcome="paid", document_id=edited["document_id"]
    )
    # The changed chapter's chunking request, and one embedding batch.
    assert paid.get("chunks") == 1 and paid.get("embeddings") == 1
    counts = [
        {key: _int(m[key]) for key in ("embedded_now", "reused_vectors")}
        for m in pipeline.materialization_metadata("embeddings")
    ]
    # The original embedded every text; the copy reused all but the changed ones.
    assert counts[0] == {"embedded_now": original["chunks"], "reused_vectors": 0}
    embedded, reused = counts[1]["embedded_now"], counts[1]["reused_vectors"]
    assert 1 <= embedded <= 2
    assert reused >= 0.9 * edited["chunks"]
    assert embedded + reused == edited["chunks"]
