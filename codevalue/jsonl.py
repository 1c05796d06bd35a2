"""JSON Lines files, plain or gzip-compressed: the format every stage reads and writes."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import DataError


def _open(path: Path, mode: str, gz: bool | None = None) -> IO[str]:
    if path.suffix == ".gz" if gz is None else gz:
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, record) for every non-blank line; bad JSON raises DataError naming the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    line_no = 0
    try:
        with _open(path, "r") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    yield line_no, _parse_line(path, line_no, line)
    except (OSError, EOFError, UnicodeDecodeError) as e:  # corrupt gzip, truncated file, bad UTF-8
        raise DataError(path, f"unreadable ({type(e).__name__}: {e})", line=line_no + 1) from None


def _parse_line(path: Path, line_no: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(path, f"invalid JSON ({e.msg} at column {e.colno})", line=line_no) from None
    if not isinstance(record, dict):
        raise DataError(path, f"expected a JSON object, got {type(record).__name__}", line=line_no)
    return record


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with _open(tmp, "w", gz=path.suffix == ".gz") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


class JsonlAppender:
    """Append records one line at a time, flushed and fsync'd in small groups, for resumable jobs.

    A killed process loses at most the records not yet flushed; a torn last line is dropped by
    `read_completed_lines` on the next run.
    """

    def __init__(self, path: str | os.PathLike, sync_every: int = 64):
        self.path = Path(path)
        if self.path.suffix == ".gz":
            raise DataError(self.path, "resumable output cannot be gzip-compressed; use a .jsonl path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self._sync_every, self._pending = sync_every, 0

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._pending += 1
        if self._pending >= self._sync_every:
            self.flush()

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._pending = 0

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_completed_lines(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a file written by JsonlAppender; a torn final line (crash mid-write) is cut off."""
    path = Path(path)
    if path.suffix == ".gz":
        raise DataError(path, "resumable output cannot be gzip-compressed; use a .jsonl path")
    if not path.exists():
        return []
    with open(path, "rb") as f:
        data = f.read()
    complete = data.rfind(b"\n") + 1  # a last line without its newline was torn mid-write
    if complete < len(data):
        with open(path, "r+b") as f:
            f.truncate(complete)
    records = []
    for line_no, raw in enumerate(data[:complete].split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:  # JSONDecodeError or UnicodeDecodeError
            raise DataError(path, "invalid JSON in a previous run's output", line=line_no) from None
        records.append(record)
    return records
