"""The uploads sensor on a temporary uploads folder, a real Dagster instance and app database:
new files, duplicates, files still being written, and files that are not books."""

from __future__ import annotations

import shutil

import pytest
from dagster import AssetKey, build_sensor_context

from doc_pipeline.db import store
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.instance import open_instance
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.source_store import SourceStore
from doc_pipeline.resources.uploads import Uploads
from doc_pipeline.sensors import uploads_sensor
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home

FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
RABBIT = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"


@pytest.fixture
def uploads_home(postgres_server, tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    settings = Settings.from_env()
    engine = prepare_app_database(settings)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    with open_instance(settings) as instance:
        yield instance, engine, settings.uploads_dir
    engine.dispose()


def _tick(instance, cursor):
    resources = {
        "app_database": AppDatabase(),
        "source_store": SourceStore(),
        "uploads": Uploads(settle_seconds=0),
    }
    context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = uploads_sensor(context)
    cursor = getattr(result, "cursor", None) or context.cursor
    return result, cursor


def _requests(result) -> list:
    return list(getattr(result, "run_requests", None) or [])


def test_new_duplicate_partial_and_junk_files(uploads_home):
    instance, engine, uploads = uploads_home
    shutil.copy(FLATLAND, uploads / "flatland.epub")
    (uploads / "notes.epub").write_bytes(b"these are my notes, not a book")
    (uploads / "rabbit.epub.part").write_bytes(RABBIT.read_bytes()[:1000])  # being downloaded

    first, cursor = _tick(instance, None)
    assert _requests(first) == []  # seen once: not yet known to be complete
    assert "2 still being written" in first.skip_message

    second, cursor = _tick(instance, cursor)
    requests = {r.tags["doc_pipeline/upload"]: r for r in _requests(second)}
    assert set(requests) == {"flatland.epub", "notes.epub"}
    flatland = requests["flatland.epub"]
    assert flatland.asset_selection == [
        AssetKey(n) for n in ("source_document", "extracted_markdown", "chunks", "embeddings")
    ]
    document = store.get_document(engine, flatland.partition_key)
    assert document["source_file"] == "flatland.epub" and document["stage"] == "pending"
    assert flatland.run_key == f"upload-{document['content_sha256']}"
    (added,) = second.dynamic_partitions_requests
    assert set(added.partition_keys) == {r.partition_key for r in requests.values()}
    for request in (flatland, requests["notes.epub"]):
        instance.add_dynamic_partitions(documents_partitions.name, [request.partition_key])
        store.set_stage(engine, request.partition_key, "embedded")  # as if the runs happened

    # Nothing new: nothing requested again, the junk file included.
    third, cursor = _tick(instance, cursor)
    assert _requests(third) == []

    # The download finishes; the same book arrives under another name; Flatland is replaced.
    (uploads / "rabbit.epub.part").rename(uploads / "rabbit.epub")
    shutil.copy(FLATLAND, uploads / "flatland copy.epub")
    changed = FLATLAND.read_bytes() + b"\0"
    (uploads / "flatland.epub").write_bytes(changed)  # one byte longer
    _, cursor = _tick(instance, cursor)
    fourth, cursor = _tick(instance, cursor)
    names = sorted(r.tags["doc_pipeline/upload"] for r in _requests(fourth))
    # The copy is the same version as before: no run. The changed file, saved under the same
    # name, is version 2 of the same document: the same partition, a run of its own.
    assert names == ["flatland.epub", "rabbit.epub"]
    new_flatland = next(
        r for r in _requests(fourth) if r.tags["doc_pipeline/upload"] == "flatland.epub"
    )
    assert new_flatland.partition_key == flatland.partition_key
    assert new_flatland.run_key != flatland.run_key
    document = store.get_document(engine, flatland.partition_key)
    assert document["version"] == 2 and document["byte_size"] == len(changed)
    assert len(store.document_summaries(engine)) == 3  # flatland (2 versions), notes, rabbit


def test_any_fsspec_location_works(uploads_home):
    """The uploads location as a URL (here fsspec's in-memory file system, in this process):
    files are listed, copied to a local temporary file, registered and requested."""
    import fsspec

    instance, engine, _ = uploads_home
    memory = fsspec.filesystem("memory")
    memory.pipe("/incoming/rabbit.epub", RABBIT.read_bytes())
    memory.pipe("/incoming/half.epub.part", b"PK")
    resources = {
        "app_database": AppDatabase(),
        "source_store": SourceStore(),
        "uploads": Uploads(url="memory://incoming", settle_seconds=0),
    }
    cursor = None
    for _ in range(2):
        context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        result = uploads_sensor(context)
        cursor = getattr(result, "cursor", None) or context.cursor
    (request,) = _requests(result)
    assert request.tags["doc_pipeline/upload"] == "rabbit.epub"
    document = store.get_document(engine, request.partition_key)
    assert (
        document["source_file"] == "rabbit.epub" and document["byte_size"] == RABBIT.stat().st_size
    )
    memory.rm("/incoming", recursive=True)
