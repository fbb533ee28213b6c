from datetime import UTC, datetime, timedelta

from doc_pipeline.core.uploads import ListedFile, is_temporary, look

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SETTLE = timedelta(seconds=10)


def _file(path: str, size: int = 100, seconds_ago: float = 60) -> ListedFile:
    return ListedFile(path, size, NOW - timedelta(seconds=seconds_ago))


def test_a_file_is_ready_on_the_second_look_when_unchanged_and_settled():
    first = look([_file("u/a.epub")], {}, now=NOW, settle=SETTLE)
    assert first.ready == [] and first.waiting == ["u/a.epub"]
    second = look([_file("u/a.epub")], first.state, now=NOW, settle=SETTLE)
    assert [f.path for f in second.ready] == ["u/a.epub"]
    third = look([_file("u/a.epub")], second.state, now=NOW, settle=SETTLE)
    assert third.ready == [] and third.waiting == []  # reported once


def test_a_file_still_being_written_waits():
    first = look([_file("u/a.epub", size=10)], {}, now=NOW, settle=SETTLE)
    growing = look([_file("u/a.epub", size=20)], first.state, now=NOW, settle=SETTLE)
    assert growing.ready == [] and growing.waiting == ["u/a.epub"]
    fresh = [_file("u/a.epub", size=20, seconds_ago=2)]  # unchanged, but written 2 s ago
    assert look(fresh, growing.state, now=NOW, settle=SETTLE).ready == []


def test_a_changed_file_is_ready_again_as_a_new_version():
    state = look([_file("u/a.epub")], {}, now=NOW, settle=SETTLE).state
    state = look([_file("u/a.epub")], state, now=NOW, settle=SETTLE).state
    changed = look([_file("u/a.epub", size=200)], state, now=NOW, settle=SETTLE)
    assert changed.ready == []
    again = look([_file("u/a.epub", size=200)], changed.state, now=NOW, settle=SETTLE)
    assert [f.size for f in again.ready] == [200]


def test_temporary_and_hidden_names_are_never_ready():
    names = ["u/a.epub.part", "u/.a.epub", "u/b.crdownload", "u/~lock.epub", "u/c.epub.tmp"]
    assert all(is_temporary(name) for name in names)
    state = look([_file(n) for n in names], {}, now=NOW, settle=SETTLE).state
    assert state == {}
    assert not is_temporary("u/book.epub")


def test_a_removed_file_is_forgotten():
    state = look([_file("u/a.epub")], {}, now=NOW, settle=SETTLE).state
    assert look([], state, now=NOW, settle=SETTLE).state == {}
