from dagster import AssetKey, Definitions

from doc_pipeline.definitions import defs
from doc_pipeline.jobs import DOCUMENT_JOB
from doc_pipeline.partitions import documents_partitions

STAGES = ["source_document", "extracted_markdown", "chunks", "embeddings", "connections"]


def test_definitions_load_with_the_document_job():
    Definitions.validate_loadable(defs)
    job = defs.resolve_job_def(DOCUMENT_JOB)
    assert job.executor_def.name == "in_process"
    assert int(job.tags["dagster/max_runtime"]) >= 3600
    reaper = defs.resolve_sensor_def("stale_run_reaper")
    assert reaper.default_status.value == "RUNNING"
    alerts = defs.resolve_sensor_def("final_failure_alerts")
    assert alerts.default_status.value == "RUNNING" and "alerts" in alerts.required_resource_keys
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == set(STAGES)
    for upstream, downstream in zip(STAGES, STAGES[1:], strict=False):
        assert AssetKey(upstream) in graph.get(AssetKey(downstream)).parent_keys
    for stage in STAGES:
        assert graph.get(AssetKey(stage)).partitions_def == documents_partitions


def test_every_asset_has_a_code_version_that_follows_its_prompts(tmp_path):
    import shutil

    from doc_pipeline.assets import versions

    graph = defs.resolve_asset_graph()
    assert all(graph.get(AssetKey(stage)).code_version for stage in STAGES)
    prompts = tmp_path / "chunking"
    shutil.copytree(versions.PROMPTS / "chunking", prompts)
    before = versions._folder_digest(prompts)
    fiction = prompts / "v1" / "fiction.md"
    fiction.write_text(fiction.read_text() + "\nKeep dialogue with its speaker.\n")
    assert versions._folder_digest(prompts) != before  # a changed prompt: chunks unsynced


def test_the_catalog_shows_kinds_owners_tables_and_source_of_every_asset():
    graph = defs.resolve_asset_graph()
    tables = {"chunks": "chunks", "embeddings": "embeddings", "connections": "connections"}
    for stage in STAGES:
        node = graph.get(AssetKey(stage))
        assert {"python", "postgres"} <= node.kinds and node.owners == ["team:doc_pipeline"]
        metadata = node.metadata
        assert metadata["dagster/table_name"] == tables.get(stage, "documents")
        columns = {c.name: c for c in metadata["dagster/column_schema"].columns}
        assert "id" in columns or "chunk_id" in columns
        (reference,) = metadata["dagster/code_references"].code_references
        assert reference.file_path.endswith(f"doc_pipeline/assets/{stage}.py")
    chunks = graph.get(AssetKey("chunks"))
    assert len(chunks.kinds) == 3  # and the AI provider, for the stages that call it
    columns = {c.name: c for c in chunks.metadata["dagster/column_schema"].columns}
    assert columns["document_id"].description == "references documents.id"
    assert columns["id"].constraints.unique and not columns["id"].constraints.nullable
