"""The one JSONL reader: (line number, object) pairs, or what is wrong with a line.

Files are decoded one line at a time (`read_lines`), so a byte that is not UTF-8 is reported as
that line's problem (`file:line: not UTF-8 …`) and can be skipped like any other bad line,
instead of ending the whole read in a `UnicodeDecodeError` that names neither file nor line.
The CSV/TSV readers of evaluation use `read_lines` too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

BOM = b"\xef\xbb\xbf"


def not_utf8(raw: bytes, e: UnicodeDecodeError) -> str:
    """What is wrong with a line that is not UTF-8: the first bad byte and its column."""
    column = len(raw[:e.start].decode("utf-8", errors="replace")) + 1
    return f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {column}; re-save the file as UTF-8)"


def read_lines(path: str | Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, None) for each physical line, its line end kept; a line that is not
    UTF-8 comes as (line number, None, problem). A UTF-8 byte-order mark on line 1 is dropped."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                yield lineno, raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield lineno, None, not_utf8(raw, e)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict | str]]:
    """Each non-blank line as (line number, dict); a bad line as (line number, problem text)."""
    for lineno, line, problem in read_lines(path):
        if problem is not None:
            yield lineno, problem
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, f"invalid JSON ({e.msg}, column {e.colno})"
            continue
        yield lineno, row if isinstance(row, dict) else f"a row must be a JSON object, got {type(row).__name__}"
