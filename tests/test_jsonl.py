"""JSON Lines I/O: reading (plain and gzip), atomic writes, the resumable appender and torn-line recovery."""

import gzip
import json

import pytest

from codevalue.errors import DataError
from codevalue.jsonl import JsonlAppender, read_completed_lines, read_jsonl, write_jsonl

RECORDS = [{"rollout_id": "a", "n": 1}, {"rollout_id": "b", "text": "é ≤ 日本"},
           {"rollout_id": "c", "x": None}]


def encoded(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


# ---------------------------------------------------------------------------------------------------------
# read_jsonl


def test_read_plain_skips_blank_lines_but_counts_them(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2})]


def test_read_gzip(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"a": "é"}\n\n{"a": 2}\n')
    assert list(read_jsonl(path)) == [(1, {"a": "é"}), (3, {"a": 2})]


def test_read_errors_name_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": }\n')
    with pytest.raises(DataError) as e:
        list(read_jsonl(path))
    assert (e.value.path, e.value.line) == (str(path), 2)
    assert "invalid JSON" in str(e.value) and "column 7" in str(e.value)

    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="expected a JSON object, got list") as e:
        list(read_jsonl(path))
    assert e.value.line == 2

    with pytest.raises(DataError, match="file not found") as e:
        list(read_jsonl(tmp_path / "missing.jsonl"))
    assert e.value.path == str(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------------------
# write_jsonl


def test_write_round_trip_without_leftover_tmp(tmp_path):
    path = tmp_path / "sub" / "dir" / "w.jsonl"  # parents are created
    assert write_jsonl(path, iter(RECORDS)) == 3
    assert path.read_bytes() == encoded(RECORDS)  # UTF-8, not \u escapes
    assert [r for _, r in read_jsonl(path)] == RECORDS
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.jsonl"]
    assert write_jsonl(path, RECORDS[:1]) == 1  # replaces, not appends
    assert [r for _, r in read_jsonl(path)] == RECORDS[:1]


def test_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.jsonl"
    write_jsonl(path, RECORDS)

    def failing():
        yield {"new": 1}
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError):
        write_jsonl(path, failing())
    assert path.read_bytes() == encoded(RECORDS)


def test_write_gzip_round_trip(tmp_path):
    path = tmp_path / "w.jsonl.gz"
    write_jsonl(path, RECORDS)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert [r for _, r in read_jsonl(path)] == RECORDS


# ---------------------------------------------------------------------------------------------------------
# JsonlAppender and read_completed_lines


def test_appender_appends_and_rejects_gzip(tmp_path):
    path = tmp_path / "a.jsonl"
    with JsonlAppender(path, sync_every=2) as sink:
        for r in RECORDS[:2]:
            sink.write(r)
    with JsonlAppender(path) as sink:
        sink.write(RECORDS[2])
    assert path.read_bytes() == encoded(RECORDS)
    with pytest.raises(DataError, match="cannot be gzip-compressed"):
        JsonlAppender(tmp_path / "a.jsonl.gz")
    assert not (tmp_path / "a.jsonl.gz").exists()


def test_completed_lines_of_missing_and_intact_files(tmp_path):
    assert read_completed_lines(tmp_path / "none.jsonl") == []
    path = tmp_path / "c.jsonl"
    data = encoded(RECORDS[:1]) + b"\n" + encoded(RECORDS[1:])  # a blank line in between is fine
    path.write_bytes(data)
    assert read_completed_lines(path) == RECORDS
    assert path.read_bytes() == data  # untouched


# keep: bytes of the last line that reached the disk; -2: all but "}\n"
@pytest.mark.parametrize("keep", [1, 10, -2])
def test_torn_last_line_is_truncated_away(tmp_path, keep):
    path = tmp_path / "c.jsonl"
    good = encoded(RECORDS[:2])
    torn = encoded(RECORDS[2:])[:keep]
    path.write_bytes(good + torn)
    assert read_completed_lines(path) == RECORDS[:2]
    assert path.read_bytes() == good
    with JsonlAppender(path) as sink:  # the resumed job appends after the last good line
        sink.write(RECORDS[2])
    assert read_completed_lines(path) == RECORDS


def test_bad_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "c.jsonl"
    data = encoded(RECORDS[:1]) + b'{"rollout_id": \n' + encoded(RECORDS[1:])
    path.write_bytes(data)
    with pytest.raises(DataError, match="previous run's output") as e:
        read_completed_lines(path)
    assert (e.value.path, e.value.line) == (str(path), 2)
    assert path.read_bytes() == data  # nothing truncated


def test_torn_inside_a_multibyte_character(tmp_path):
    path = tmp_path / "c.jsonl"
    good = encoded(RECORDS[:1])
    torn = json.dumps({"rollout_id": "z", "text": "日本"}, ensure_ascii=False).encode()
    torn = torn[: torn.index("本".encode()) + 1]  # ends with the first byte of a 3-byte character
    path.write_bytes(good + torn)
    assert read_completed_lines(path) == RECORDS[:1]
    assert path.read_bytes() == good


def test_final_line_without_newline_then_append(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(encoded(RECORDS[:2])[:-1])  # the last record is complete, its "\n" is missing
    done = read_completed_lines(path)
    with JsonlAppender(path) as sink:
        sink.write(RECORDS[2])
    assert read_completed_lines(path) == done + [RECORDS[2]]
