"""Asset checks of the document assets, per document partition.

Thin Dagster wiring around `doc_pipeline.db.integrity`, which holds the queries. Blocking checks
(`chunks_cover_markdown`, `one_embedding_per_chunk`) fail the run's check step with ERROR
severity, so a downstream asset selected in the same run does not execute: bad chunks are
never embedded, bad vectors never connected.

Wire them into the Definitions with `asset_checks=asset_checks` and the `ai_budget` resource.
"""

import warnings
from collections.abc import Sequence
from decimal import Decimal

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetIn,
    AssetsDefinition,
    ConfigurableResource,
    MetadataValue,
    PreviewWarning,
    asset_check,
)
from sqlalchemy.engine import Engine

from doc_pipeline.assets.chunks import chunks
from doc_pipeline.assets.connections import connections
from doc_pipeline.assets.embeddings import embeddings
from doc_pipeline.core.failures import PERMANENT
from doc_pipeline.db import integrity, store
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.provider import Provider

SHOWN_PROBLEMS = 10  # problems listed in a result's metadata; the count says how many in all


class AIBudget(ConfigurableResource):
    """What one stage of one document may cost in paid AI requests, in USD, over all its runs
    (ledger hits are free, so a retry that re-pays shows as an overrun). Exceeding it is a WARN
    unless `over_budget_is_error`. Change it per run in the launchpad:
    `resources.ai_budget.config`."""

    max_usd_per_document_stage: float = 2.0
    # Per stage (asset name: chunks, embeddings, connections), instead of the default above.
    stage_max_usd: dict[str, float] = {}
    over_budget_is_error: bool = False

    def limit_for(self, stage: str) -> Decimal:
        return Decimal(str(self.stage_max_usd.get(stage, self.max_usd_per_document_stage)))


def _problems_result(
    problems: Sequence[str], what: str, metadata: dict[str, object]
) -> AssetCheckResult:
    """Passed when there is no problem; otherwise the first problem and how many there are."""
    shown = "\n".join(f"- {problem}" for problem in problems[:SHOWN_PROBLEMS])
    if len(problems) > SHOWN_PROBLEMS:
        shown += f"\n- … and {len(problems) - SHOWN_PROBLEMS} more"
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''} with {what}; first: "
            f"{problems[0]}"
            if problems
            else None
        ),
        metadata={
            "problems": MetadataValue.int(len(problems)),
            **metadata,
            **({"first_problems": MetadataValue.md(shown)} if problems else {}),
        },
    )


def _blocking(
    result: AssetCheckResult, engine: Engine, document_id: str, check: str
) -> AssetCheckResult:
    """A failed blocking check stops the document: marked failed (permanent: the same input
    gives the same output, so a retry would fail the same way) with the check's reason."""
    if not result.passed:
        reason = f"check {check} failed: {result.description}"
        store.mark_failed(engine, document_id, PERMANENT, reason)
    return result


# A partitions_def on a check is a preview feature in Dagster 1.13 (it warns), but without it a
# check of a partitioned asset records one result for the whole asset, whichever document ran
# last, and loads *every* partition of an additional input.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PreviewWarning)

    @asset_check(
        asset=chunks,
        blocking=True,
        partitions_def=documents_partitions,
        additional_ins={"extracted_markdown": AssetIn("extracted_markdown")},
    )
    def chunks_cover_markdown(
        context: AssetCheckExecutionContext,
        chunks: dict,
        extracted_markdown: dict,
        app_database: AppDatabase,
    ) -> AssetCheckResult:
        """Blocking. The document's chunks, in chunk_index order (0..n-1), partition the
        extracted markdown (the `extracted_markdown` output, loaded through the IO manager):
        each chunk's content is markdown[start_offset:end_offset], spans do not overlap and
        follow each other, and every non-whitespace character is in exactly one chunk. A
        failure stops the run before `embeddings`. For a new version of a document, its chunks
        (in the `chunks` output, not written until it supersedes) are checked."""
        document_id = context.partition_key
        markdown = extracted_markdown["markdown"]
        problems = integrity.chunk_coverage_problems(
            app_database.engine, document_id, markdown, chunks.get("pending_rows")
        )
        result = _problems_result(
            problems,
            "the chunks' coverage of the markdown",
            {"markdown_characters": MetadataValue.int(len(markdown))},
        )
        return _blocking(result, app_database.engine, document_id, "chunks_cover_markdown")

    @asset_check(asset=embeddings, blocking=True, partitions_def=documents_partitions)
    def one_embedding_per_chunk(
        context: AssetCheckExecutionContext, app_database: AppDatabase, provider: Provider
    ) -> AssetCheckResult:
        """Blocking. Exactly one vector per chunk of the document for the provider's embedding
        model, each labelled with its chunk's document (embeddings.document_id), as wide as the
        provider's `embedding_dimensions` and L2-normalized (a zero or unnormalized vector
        breaks cosine search). The schema already keeps the dimensions column equal to the
        vector's length, and pgvector refuses NaN components. A failure stops the run before
        `connections`."""
        model, dimensions = provider.embedding_model, provider.embedding_dimensions
        problems = integrity.embedding_problems(
            app_database.engine, context.partition_key, model, dimensions
        )
        result = _problems_result(
            problems,
            f"the {model} embeddings",
            {"model": model, "dimensions": MetadataValue.int(dimensions)},
        )
        return _blocking(
            result, app_database.engine, context.partition_key, "one_embedding_per_chunk"
        )

    @asset_check(asset=connections, partitions_def=documents_partitions)
    def connections_are_sound(
        context: AssetCheckExecutionContext, app_database: AppDatabase
    ) -> AssetCheckResult:
        """The connections that start at the document's chunks (those its run wrote) join
        chunks of two different documents, have a type one of the engines writes (semantic,
        contradiction, thematic_bridge), and none is an orphan: a semantic connection whose
        source or target chunk no longer has a vector for the model it was found with. Missing
        chunks, strength outside [0, 1] and self links are not checked: foreign keys and CHECK
        constraints already make them impossible."""
        engine = app_database.engine
        problems = integrity.connection_problems(engine, context.partition_key)
        return _problems_result(
            problems,
            "the document's connections",
            {
                "orphan_connections": MetadataValue.int(
                    integrity.orphan_connections(engine, context.partition_key)
                )
            },
        )

    def _cost_check(asset: AssetsDefinition) -> AssetChecksDefinition:
        stage = asset.key.to_user_string()  # the ledger's stage names are the asset names

        @asset_check(
            asset=asset,
            name="ai_cost_within_budget",
            partitions_def=documents_partitions,
            description=(
                f"Not blocking. What the document's `{stage}` stage has paid for AI requests, "
                "over all its runs (ledger `ai_calls` with outcome 'paid'), is within the "
                "`ai_budget` resource's limit; an overrun is a WARN unless "
                "`over_budget_is_error`."
            ),
        )
        def ai_cost_within_budget(
            context: AssetCheckExecutionContext, app_database: AppDatabase, ai_budget: AIBudget
        ) -> AssetCheckResult:
            engine, document_id = app_database.engine, context.partition_key
            total = integrity.stage_cost(engine, document_id, stage)
            this_run = integrity.stage_cost(engine, document_id, stage, run_id=context.run.run_id)
            limit = ai_budget.limit_for(stage)
            passed = total <= limit
            return AssetCheckResult(
                passed=passed,
                severity=AssetCheckSeverity.ERROR
                if ai_budget.over_budget_is_error
                else AssetCheckSeverity.WARN,
                description=None
                if passed
                else f"{stage} of document {document_id} cost ${total:.6f} in paid AI "
                f"requests, over its budget of ${limit:.6f}",
                metadata={
                    "cost_usd": MetadataValue.float(float(total)),
                    "cost_usd_this_run": MetadataValue.float(float(this_run)),
                    "budget_usd": MetadataValue.float(float(limit)),
                },
            )

        return ai_cost_within_budget

    cost_checks = [_cost_check(asset) for asset in (chunks, embeddings, connections)]

asset_checks: list[AssetChecksDefinition] = [
    chunks_cover_markdown,
    one_embedding_per_chunk,
    connections_are_sound,
    *cost_checks,
]
