"""Names the instance's concurrency limits in `dagster.yaml` refer to."""

# Runs carry their document in this tag; dagster.yaml allows one active run per value.
PARTITION_TAG = "dagster/partition"
# Steps that call the AI provider claim a slot of this pool (`concurrency.pools` in dagster.yaml).
AI_POOL = "ai"
