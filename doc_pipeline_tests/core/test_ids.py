from doc_pipeline.core.ids import chunk_ids, document_id_for, file_sha256


def test_document_id_is_the_content_hash_prefix(tmp_path):
    first, second = tmp_path / "a.epub", tmp_path / "renamed.epub"
    first.write_bytes(b"same bytes")
    second.write_bytes(b"same bytes")
    assert document_id_for(file_sha256(first)) == document_id_for(file_sha256(second))
    second.write_bytes(b"other bytes")
    assert document_id_for(file_sha256(first)) != document_id_for(file_sha256(second))


def test_chunk_ids_follow_content_not_position():
    ids = chunk_ids("doc", ["alpha", "beta", "gamma"])
    assert chunk_ids("doc", ["alpha", "beta", "gamma"]) == ids
    changed = chunk_ids("doc", ["alpha", "BETA", "gamma"])
    assert changed[0] == ids[0] and changed[2] == ids[2] and changed[1] != ids[1]
    # A chunk inserted before others does not change their ids.
    assert chunk_ids("doc", ["new", "alpha", "beta", "gamma"])[1:] == ids


def test_repeated_text_gets_distinct_ids_and_documents_differ():
    ids = chunk_ids("doc", ["same", "same"])
    assert len(set(ids)) == 2
    assert chunk_ids("other", ["same"])[0] != ids[0]
