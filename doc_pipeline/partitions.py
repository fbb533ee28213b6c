from dagster import DynamicPartitionsDefinition

# One partition per document; the key is the document id, derived from the content hash.
documents_partitions = DynamicPartitionsDefinition(name="documents")
