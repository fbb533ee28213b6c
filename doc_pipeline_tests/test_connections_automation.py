"""Connections are asynchronous (on a real instance with its daemon): a document run that stops
at embeddings leaves the document usable, and the `connections_automation` sensor connects it in
a run of its own; when book B arrives after book A, A's chunks show their connections to B
without A being processed again."""

from __future__ import annotations

from dagster import AssetKey

from doc_pipeline.core.registration import register_file
from doc_pipeline.db import store
from doc_pipeline.ingest import prepare_app_database
from doc_pipeline.instance import open_instance
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home
from doc_pipeline_tests.dagster_ui import document_settled, launch_document_run
from doc_pipeline_tests.processes import free_port, start_ui, stop_process_group, wait_until

BOOK_A = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
BOOK_B = CORPUS / "epub" / "pg1661-sherlock-holmes.epub2.epub"
UP_TO_EMBEDDINGS = ["source_document", "extracted_markdown", "chunks", "embeddings"]


def test_connections_follow_embeddings_in_their_own_run_in_both_directions(
    postgres_server, tmp_path, monkeypatch
):
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    monkeypatch.setenv("DOC_PIPELINE_PROVIDER", "local")
    monkeypatch.setenv("DOC_PIPELINE_AUTOMATION_INTERVAL_SECONDS", "2")
    settings = Settings.from_env()
    engine = prepare_app_database(settings)
    book_a, book_b = (
        register_file(engine, settings.blob_dir, b).document_id for b in (BOOK_A, BOOK_B)
    )
    with open_instance(settings) as instance:
        instance.add_dynamic_partitions(documents_partitions.name, [book_a, book_b])

    port = free_port()
    ui = start_ui(port, tmp_path / "ui.log")
    try:
        first = launch_document_run(port, ui, book_a, assets=UP_TO_EMBEDDINGS)
        wait_until(document_settled(engine, book_a, "connected"), 300, "A to be connected", 1)
        second = launch_document_run(port, ui, book_b, assets=UP_TO_EMBEDDINGS)
        wait_until(document_settled(engine, book_b, "connected"), 300, "B to be connected", 1)
    finally:
        stop_process_group(ui)

    with open_instance(settings) as instance:
        runs = {document: [] for document in (book_a, book_b)}
        for run in instance.get_runs():
            runs[run.tags["dagster/partition"]].append(run)
    for document, launched in ((book_a, first), (book_b, second)):
        # One document run, then exactly one connections run started by the automation.
        document_run, connections_run = sorted(runs[document], key=lambda r: r.run_id != launched)
        assert document_run.run_id == launched and document_run.status.value == "SUCCESS"
        assert connections_run.status.value == "SUCCESS"
        assert connections_run.asset_selection == {AssetKey("connections")}
        assert connections_run.tags.get("dagster/sensor_name") == "connections_automation"
        completed = store.document_details(engine, document)["completed_stages"]
        assert completed["embedded"] <= completed["connected"]

    # B's run found its connections to A; A was not processed again, yet its chunks show them.
    of_b = store.connections_of_document(engine, book_b)
    assert of_b and all(
        c["other_document_id"] == book_a and c["found"] == "found from this chunk"
        for found in of_b.values()
        for c in found
    )
    of_a = store.connections_of_document(engine, book_a)
    incoming = [c for found in of_a.values() for c in found if c["other_document_id"] == book_b]
    assert len(incoming) == sum(len(found) for found in of_b.values())
    assert all(c["found"] == "found from the other chunk" for c in incoming)
    engine.dispose()
