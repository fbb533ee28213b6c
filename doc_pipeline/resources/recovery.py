"""How the reaper retries failed documents where Dagster's own run retries did not."""

from __future__ import annotations

import os
from datetime import timedelta

from dagster import ConfigurableResource

from doc_pipeline.core.resume import RecoveryPolicy

BACKOFF_ENV = "DOC_PIPELINE_RETRY_BACKOFF_SECONDS"


class Recovery(ConfigurableResource):
    """`max_attempts`: runs of a document in a row that may fail before it is given up
    (marked failed with the reason). `initial_backoff_seconds` (default from the
    DOC_PIPELINE_RETRY_BACKOFF_SECONDS environment variable, else 30) doubles after every
    failed attempt up to `max_backoff_seconds`. `dagster_retry_grace_seconds`: how long the
    reaper leaves a failed run to Dagster's own run retry before it resumes the run itself."""

    max_attempts: int = 3
    initial_backoff_seconds: float = float(os.environ.get(BACKOFF_ENV, "30"))
    max_backoff_seconds: float = 600.0
    dagster_retry_grace_seconds: float = 120.0

    def policy(self) -> RecoveryPolicy:
        return RecoveryPolicy(
            max_attempts=self.max_attempts,
            initial_backoff=timedelta(seconds=self.initial_backoff_seconds),
            max_backoff=timedelta(seconds=self.max_backoff_seconds),
            dagster_grace=timedelta(seconds=self.dagster_retry_grace_seconds),
        )
