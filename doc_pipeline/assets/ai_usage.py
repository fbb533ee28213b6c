"""The AI ledger as the assets use it, and what its tally shows in the UI."""

from __future__ import annotations

import os

from dagster import AssetExecutionContext, MetadataValue

from doc_pipeline.core.ledger import LEASE_SECONDS
from doc_pipeline.db.ledger_store import Ledger, LedgerScope
from doc_pipeline.resources.app_database import AppDatabase

# How long an AI request's lease lasts unless its holder renews it: how soon a request whose
# worker's host died is paid by another worker.
LEASE_SECONDS_ENV = "DOC_PIPELINE_AI_LEASE_SECONDS"


def ledger_scope(
    context: AssetExecutionContext, app_database: AppDatabase, stage: str
) -> LedgerScope:
    lease_seconds = float(os.environ.get(LEASE_SECONDS_ENV, LEASE_SECONDS))
    ledger = Ledger(app_database.engine, lease_seconds=lease_seconds)
    return LedgerScope(ledger, context.partition_key, stage, run_id=context.run_id)


def ai_usage_metadata(scope: LedgerScope) -> dict[str, MetadataValue]:
    """Requests made, ledger hits, tokens, cost and cost saved by this materialization."""
    values = scope.tally.as_dict()
    return {
        key: MetadataValue.float(value) if isinstance(value, float) else MetadataValue.int(value)
        for key, value in values.items()
    }
