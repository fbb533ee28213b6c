"""Turning a stage's error into the Dagster failure a user should see."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Failure, MetadataValue

from doc_pipeline.core.stages import INVALID_INPUT, classify, describe


@contextmanager
def user_facing_failures() -> Iterator[None]:
    """Invalid input fails the step with its reason and no retry; other errors pass unchanged."""
    try:
        yield
    except Exception as error:
        if classify(error) != INVALID_INPUT:
            raise
        raise Failure(
            description=describe(error),
            metadata={"error_class": MetadataValue.text(INVALID_INPUT)},
            allow_retries=False,
        ) from error
