"""Scanned PDF pages through the `gemini` provider against the fake server (which reads the
page-range PDFs it is sent, and answers each page from its own bytes): only the pages without
a text layer are sent, in ranges cut locally, through the ledger; the texts come back in page
order; a kill mid-transcription is resumed paying only the ranges never answered."""

from __future__ import annotations

import os
import signal

import pypdf
import pytest
import yaml

from doc_pipeline.core.pdf.transcription import PageCutter
from doc_pipeline.db import store
from doc_pipeline_tests.conftest import CORPUS
from doc_pipeline_tests.fakes.gemini_content import transcribe_pdf
from doc_pipeline_tests.ledger_counts import ai_call_counts, keys_paid_twice
from doc_pipeline_tests.pdf_files import scanned
from doc_pipeline_tests.processes import run_cli, stop_process_group, wait_until

ALICE = CORPUS / "pdf" / "pg11-alice-in-wonderland.pdf"
IMAGE_ONLY = CORPUS / "pdf-hostile" / "image-only.pdf"


def transcriptions(fake) -> list[dict]:
    return [r for r in fake.requests if r.get("pdf_pages") and r.get("status") == 200]


def page_text(path, page: int) -> str:
    """What the fake model reads on one page, however the page was cut into ranges."""
    (text,) = transcribe_pdf(PageCutter(path).cut(page, page))
    return text


def test_scanned_pages_are_transcribed_in_page_order_through_the_ledger(pipeline, fake):
    (outcome,) = pipeline.ingest(IMAGE_ONLY).values()
    assert outcome["stage"] == "connected", outcome
    # Pages 1-4 and 5-6 (four a request), counted locally, each sent once.
    assert sorted(r["pdf_pages"] for r in transcriptions(fake)) == [2, 4]
    markdown = pipeline.markdown(outcome["document_id"])
    assert markdown == "\n\n".join(page_text(IMAGE_ONLY, page) for page in range(1, 7))
    chunks = store.load_chunks(pipeline.engine, outcome["document_id"])
    spans = [(c["metadata"]["page_start"], c["metadata"]["page_end"]) for c in chunks]
    assert spans[0][0] == 1 and spans[-1][1] == 6 and spans == sorted(spans)
    document = store.get_document(pipeline.engine, outcome["document_id"])
    assert any("transcribed by gemini-3.5-flash-lite" in w for w in document["extraction_warnings"])

    # Extracting again pays nothing: the ledger holds both ranges' answers.
    fake.clear_requests()
    result = run_cli(
        pipeline.env, "backfill", "extracted_markdown", outcome["document_id"], timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert transcriptions(fake) == []
    assert pipeline.markdown(outcome["document_id"]) == markdown
    calls = ai_call_counts(pipeline.engine, "outcome", stage="transcription")
    assert calls == {"paid": 2, "hit": 2}


def test_only_the_pages_without_a_text_layer_are_sent(pipeline, fake, tmp_path):
    writer = pypdf.PdfWriter(clone_from=ALICE)
    writer.append(IMAGE_ONLY, pages=(0, 2))
    book = tmp_path / "alice-with-two-scans.pdf"
    writer.write(book)
    (outcome,) = pipeline.ingest(book).values()
    assert outcome["stage"] == "connected", outcome
    (sent,) = transcriptions(fake)
    assert sent["pdf_pages"] == 2
    markdown = pipeline.markdown(outcome["document_id"])
    assert markdown.endswith(page_text(book, 52) + "\n\n" + page_text(book, 53))
    assert "Alice was beginning to get very tired" in markdown


def test_a_kill_mid_transcription_is_resumed_paying_only_unanswered_ranges(
    pipeline, fake, tmp_path
):
    book = tmp_path / "scanned-book.pdf"
    scanned(book, 24)  # six ranges of four pages
    config = tmp_path / "two-at-a-time.yaml"
    config.write_text(
        yaml.safe_dump({"resources": {"provider": {"config": {"max_concurrent_requests": 2}}}})
    )
    fake.add_fault("generateContent", delay_seconds=0.6)
    process = pipeline.start_ingest(book, "--config", config)
    try:

        def paid_so_far():
            paid = ai_call_counts(
                pipeline.engine, "stage", stage="transcription", outcome="paid"
            ).get("transcription", 0)
            return paid if paid >= 2 else None

        wait_until(paid_so_far, 120, "two ranges to be answered", interval=0.05)
        answered = len(transcriptions(fake))
        in_flight = fake.in_flight("generateContent") + answered - paid_so_far()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        stop_process_group(process)
    fake.clear_faults()
    assert 0 <= in_flight <= 2 and answered < 6

    (outcome,) = pipeline.ingest(book, "--config", config).values()
    assert outcome["stage"] == "connected", outcome
    sent = transcriptions(fake)
    bodies = [r["body_sha256"] for r in sent]
    # Every range was answered; those answered twice were in flight at the kill, no more.
    assert len(set(bodies)) == 6
    assert len(bodies) - len(set(bodies)) <= in_flight
    assert keys_paid_twice(pipeline.engine) == []
    expected = "\n\n".join(page_text(book, page) for page in range(1, 25))
    assert pipeline.markdown(outcome["document_id"]) == expected


@pytest.fixture(autouse=True)
def _no_faults_left(fake):
    yield
    fake.clear_faults()


def test_a_range_too_large_to_send_inline_goes_through_the_files_api(pipeline, fake, tmp_path):
    config = tmp_path / "upload-everything.yaml"
    config.write_text(
        yaml.safe_dump(
            {"resources": {"provider": {"config": {"transcription_inline_bytes": 1_000}}}}
        )
    )
    (outcome,) = pipeline.ingest(IMAGE_ONLY, "--config", config).values()
    assert outcome["stage"] == "connected", outcome
    methods = [r.get("api_method") for r in fake.requests if r.get("status") == 200]
    assert methods.count("upload") == 2 and methods.count("files.delete") == 2
    assert sorted(r["pdf_pages"] for r in transcriptions(fake)) == [2, 4]
    assert fake.files.files == {}  # each upload deleted once it was answered
    markdown = pipeline.markdown(outcome["document_id"])
    assert markdown == "\n\n".join(page_text(IMAGE_ONLY, page) for page in range(1, 7))
