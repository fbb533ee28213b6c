import time

from dagster import AssetExecutionContext, AutomationCondition, Config, MetadataValue, asset

from doc_pipeline.assets import catalog, versions
from doc_pipeline.assets.ai_usage import ai_usage_metadata, ledger_scope
from doc_pipeline.concurrency import AI_POOL
from doc_pipeline.core.bridges import BridgeConfig
from doc_pipeline.core.contradiction import ContradictionConfig
from doc_pipeline.db.connecting import Engines, connect_document
from doc_pipeline.db.stage_tracking import tracked_stage
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.resources.provider import Provider
from doc_pipeline.step_failures import expected_failures


class ConnectionsConfig(Config):
    """Which engines run and their thresholds and weights. The semantic engine's similarity
    threshold depends on the embedder, so it is the provider's (`connection_min_similarity`)."""

    semantic: bool = True
    contradiction: bool = True
    thematic_bridges: bool = True
    contradiction_min_polarity: float = 0.3
    contradiction_min_strength: float = 0.3
    contradiction_top_k: int = 5
    contradiction_concept_weight: float = 0.5
    contradiction_polarity_weight: float = 0.3
    contradiction_importance_weight: float = 0.2
    bridge_min_importance: float = 0.6
    bridge_min_strength: float = 0.5
    bridge_pairs_per_request: int = 8
    bridge_max_requests: int = 5  # hard cap on AI requests per document and run
    bridge_similarity_weight: float = 0.6
    bridge_shared_terms_weight: float = 0.25
    bridge_importance_weight: float = 0.15
    bridge_thinking: str = "low"  # of the judging model: minimal, low, medium, high, model_default

    def engines(self, provider: Provider) -> Engines:
        return Engines(
            semantic=provider.semantic_config if self.semantic else None,
            contradiction=ContradictionConfig(
                min_polarity=self.contradiction_min_polarity,
                min_strength=self.contradiction_min_strength,
                top_k=self.contradiction_top_k,
                concept_weight=self.contradiction_concept_weight,
                polarity_weight=self.contradiction_polarity_weight,
                importance_weight=self.contradiction_importance_weight,
            )
            if self.contradiction
            else None,
            bridges=BridgeConfig(
                min_importance=self.bridge_min_importance,
                min_strength=self.bridge_min_strength,
                pairs_per_request=self.bridge_pairs_per_request,
                max_requests_per_document=self.bridge_max_requests,
                similarity_weight=self.bridge_similarity_weight,
                shared_terms_weight=self.bridge_shared_terms_weight,
                importance_weight=self.bridge_importance_weight,
                thinking=self.bridge_thinking,
            )
            if self.thematic_bridges
            else None,
        )


# Materialized by the `connections_automation` sensor once the document's embeddings are new, in
# a run of its own: the document is usable (`embedded`) before its connections exist, and a
# failure here never fails the document run. Eager never starts one while another is in flight.
@asset(
    partitions_def=documents_partitions,
    group_name="documents",
    kinds=catalog.kinds(ai=True),
    owners=catalog.OWNERS,
    metadata=catalog.table_metadata("connections"),
    # Not after embeddings whose blocking check failed.
    automation_condition=AutomationCondition.eager()
    & AutomationCondition.all_deps_blocking_checks_passed(),
    pool=AI_POOL,
    code_version=versions.CONNECTIONS,
)
def connections(
    context: AssetExecutionContext,
    config: ConnectionsConfig,
    embeddings: dict,
    app_database: AppDatabase,
    liveness: Liveness,
    provider: Provider,
) -> dict:
    """Connections from this document's chunks to chunks of other documents: semantic
    (nearest vectors), contradiction (shared concepts, opposite polarity) and thematic bridges
    (judged by the AI, through the ledger). Each type is replaced by difference in one
    transaction, so connections only point at chunks that exist."""
    document_id = context.partition_key
    engine = app_database.engine
    scope = ledger_scope(context, app_database, "connections")
    engines = config.engines(provider)
    started = time.perf_counter()
    with (
        liveness.heartbeat(context, app_database),
        expected_failures(),
        tracked_stage(engine, document_id, "connecting", "connected"),
    ):
        connected = connect_document(
            engine,
            document_id,
            embeddings["model"],
            engines,
            judge=lambda requests: provider.judge_bridges(requests, scope, engines.bridges),
            judge_model=provider.bridge_judge,
        )
    metadata: dict = {}
    for kind, outcome in connected.outcomes.items():
        metadata[f"{kind}_connections"] = MetadataValue.int(len(outcome.edges))
        if outcome.counts is not None:
            for name, value in outcome.counts.as_dict().items():
                metadata[f"{kind}_rows_{name}"] = MetadataValue.int(value)
            # Edges to chunks another document's re-processing removed while this step ran.
            metadata[f"{kind}_rows_skipped"] = MetadataValue.int(outcome.counts.skipped)
        if outcome.skipped:
            metadata[f"{kind}_skipped"] = outcome.skipped
            context.log.info(f"{kind} connections skipped: {outcome.skipped}")
        for problem in outcome.problems:
            context.log.warning(f"{kind}: unusable AI answer, its pairs are left out: {problem}")
        if outcome.problems:
            metadata[f"{kind}_unusable_answers"] = MetadataValue.int(len(outcome.problems))
    typed = [(kind, edge) for kind, o in connected.outcomes.items() for edge in o.edges]
    strongest = sorted(typed, key=lambda pair: pair[1].strength, reverse=True)[:10]
    table = "\n".join(
        ["| type | source chunk | target chunk | strength |", "|---|---|---|---|"]
        + [
            f"| {kind} | {e.source_chunk_id} | {e.target_chunk_id} | {e.strength:.3f} |"
            for kind, e in strongest
        ]
    )
    context.add_output_metadata(
        {
            "connections": MetadataValue.int(len(connected.edges)),
            "dagster/row_count": MetadataValue.int(len(connected.edges)),
            **metadata,
            **ai_usage_metadata(scope),
            "strongest": MetadataValue.md(table),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
        }
    )
    return {
        "document_id": document_id,
        "connections": {kind: len(o.edges) for kind, o in connected.outcomes.items()},
    }
