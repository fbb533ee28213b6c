"""Dropping books (EPUB or PDF) into `uploads/` with `doc-pipeline ui` running is all a user
does: each book ends connected (a PDF's chunks with their pages), a file still being copied is
left alone, and a file that is not a book fails once, as invalid input, with the reason. An
edited book saved over its file is a new version of its document, which supersedes it; a
renamed copy of it starts nothing.

Also the asynchronous connections: each book's upload run stops at embeddings and exactly one
run started by the `connections_automation` sensor connects it; the two books' connections show
from both sides, although neither book was processed again after the other arrived."""

from __future__ import annotations

import shutil
import time

from dagster import AssetKey

from doc_pipeline.db import store
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.instance import open_instance
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home
from doc_pipeline_tests.processes import free_port, start_ui, stop_process_group, wait_until
from doc_pipeline_tests.test_edited_copies import edited_copy

BOOKS = [
    CORPUS / "epub" / "se-abbott-flatland.epub3.epub",
    CORPUS / "pdf" / "pg11-alice-in-wonderland.pdf",  # a PDF is a book like any other
]


def test_books_dropped_into_uploads_end_connected(postgres_server, tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    monkeypatch.setenv("DOC_PIPELINE_PROVIDER", "local")
    monkeypatch.setenv("DOC_PIPELINE_UPLOADS_INTERVAL_SECONDS", "2")
    monkeypatch.setenv("DOC_PIPELINE_UPLOADS_SETTLE_SECONDS", "2")
    monkeypatch.setenv("DOC_PIPELINE_AUTOMATION_INTERVAL_SECONDS", "2")
    settings = Settings.from_env()
    engine = prepare_app_database(settings)
    uploads = settings.uploads_dir
    uploads.mkdir(parents=True, exist_ok=True)

    ui = start_ui(free_port(), tmp_path / "ui.log")
    try:
        for book in BOOKS:
            shutil.copy(book, uploads / book.name)
        (uploads / "holiday-photos.epub").write_bytes(b"\x89PNG not a book at all")
        (uploads / "alice.pdf.part").write_bytes(BOOKS[1].read_bytes()[:5000])  # still copying

        def settled():
            documents = store.document_summaries(engine)
            stages = sorted(d["stage"] for d in documents)
            if stages != ["connected", "connected", "failed"]:
                return None
            with open_instance(settings) as instance:
                if all(run.is_finished for run in instance.get_runs()):
                    return documents
            return None

        documents = wait_until(settled, 400, "the uploads to be processed", interval=2)
        with open_instance(settings) as instance:
            runs = instance.get_runs()

        # Versions: an edited copy written over Flatland (the same name, and the same EPUB
        # identifier), then a renamed copy of it.
        flatland = next(d for d in documents if d["source_file"] == BOOKS[0].name)
        before = {c["id"] for c in store.load_chunks(engine, flatland["id"])}
        edited = tmp_path / "edited.epub"
        edited_copy(BOOKS[0], edited, " the ", " the very ")
        shutil.copy(edited, uploads / BOOKS[0].name)  # saved over it, as an editor does

        def superseded():
            document = store.document_summaries(engine, [flatland["id"]])[0]
            if (document["current_version"], document["stage"]) != (2, "connected"):
                return None
            with open_instance(settings) as instance:
                return document if all(r.is_finished for r in instance.get_runs()) else None

        new_version = wait_until(superseded, 400, "version 2 to be connected", interval=2)
        shutil.copy(edited, uploads / "flatland-copy.epub")
        time.sleep(8)  # a few sensor ticks: the copy must start nothing
        with open_instance(settings) as instance:
            version_runs = [
                r for r in instance.get_runs() if r.run_id not in {x.run_id for x in runs}
            ]
    finally:
        stop_process_group(ui)

    # One document at version 2 of 2; the renamed copy is that version and started no run.
    assert new_version["versions"] == 2 and len(store.document_summaries(engine)) == 3
    after = {c["id"] for c in store.load_chunks(engine, flatland["id"])}
    # The local chunker's chunks (about a thousand words) run across chapter ends, so the edit
    # moves the boundaries of a few chunks after it (29 of 34 kept); the AI chunker's keep 90%
    # and more (test_edited_copies).
    assert after != before and len(before & after) >= 0.8 * len(after)
    # Version 2's upload run and its connections run, nothing for the copy.
    assert len(version_runs) == 2 and all(r.status.value == "SUCCESS" for r in version_runs)
    assert {r.tags["dagster/partition"] for r in version_runs} == {flatland["id"]}

    by_file = {d["source_file"]: d for d in documents}
    junk = by_file["holiday-photos.epub"]
    assert junk["error_class"] == "invalid_input" and "holiday-photos.epub" in junk["error_message"]
    assert all(by_file[book.name]["connections"] > 0 for book in BOOKS)
    assert "alice.pdf.part" not in by_file
    pdf_chunks = store.load_chunks(engine, by_file[BOOKS[1].name]["id"])
    assert all(c["metadata"]["page_start"] <= c["metadata"]["page_end"] for c in pdf_chunks)
    per_document = {}
    for run in runs:
        per_document.setdefault(run.tags["dagster/partition"], []).append(run)
    # The junk file was tried once and not retried; each book had its upload run (up to
    # embeddings) and one connections run, started by the automation.
    assert len(per_document[junk["id"]]) == 1
    for book in BOOKS:
        document = by_file[book.name]["id"]
        upload, connecting = sorted(
            per_document[document], key=lambda r: "connections" in str(r.asset_selection)
        )
        assert upload.status.value == connecting.status.value == "SUCCESS"
        assert AssetKey("connections") not in upload.asset_selection
        assert connecting.asset_selection == {AssetKey("connections")}
        assert connecting.tags.get("dagster/sensor_name") == "connections_automation"
        completed = store.document_details(engine, document)["completed_stages"]
        assert completed["embedded"] <= completed["connected"]

    # Each connection joins the two books and shows from both: found from one chunk, and from
    # the other book's side as found from the other chunk.
    first, second = (by_file[book.name]["id"] for book in BOOKS)
    found = {
        document: [
            c for chunk in store.connections_of_document(engine, document).values() for c in chunk
        ]
        for document in (first, second)
    }
    assert found[first] and found[second]
    assert all(c["other_document_id"] == second for c in found[first])
    assert all(c["other_document_id"] == first for c in found[second])
    from_first = sum(c["found"] == "found from this chunk" for c in found[first])
    assert from_first == sum(c["found"] == "found from the other chunk" for c in found[second])
    assert len(found[first]) == len(found[second])
    engine.dispose()
