"""The AI ledger as the assets use it, and what its tally shows in the UI."""

from __future__ import annotations

from dagster import AssetExecutionContext, MetadataValue

from doc_pipeline.db.ledger_store import Ledger, LedgerScope
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.provider import Provider


def ledger_scope(
    context: AssetExecutionContext, app_database: AppDatabase, provider: Provider, stage: str
) -> LedgerScope:
    ledger = Ledger(app_database.engine)
    return LedgerScope(ledger, context.partition_key, stage, run_id=context.run_id)


def ai_usage_metadata(scope: LedgerScope) -> dict[str, MetadataValue]:
    """Requests made, ledger hits, tokens, cost and cost saved by this materialization."""
    values = scope.tally.as_dict()
    return {
        key: MetadataValue.float(value) if isinstance(value, float) else MetadataValue.int(value)
        for key, value in values.items()
    }
