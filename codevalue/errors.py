"""Errors that codevalue raises on purpose. Only the CLI turns them into exit codes."""

from __future__ import annotations


class CodevalueError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class DataError(CodevalueError):
    """Bad input data. The message names the file, the record (1-based line) and the field."""

    def __init__(self, path: object, message: str, *, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field = str(path), line, field
        where = self.path
        if line is not None:
            where += f", record {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class SandboxError(CodevalueError):
    """The sandbox itself could not run (not a verdict about a program)."""
