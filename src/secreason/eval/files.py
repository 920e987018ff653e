"""Reading benchmark files and response files exactly, quirks included; writing outputs whole.

The csv module is used instead of pandas on purpose: pandas' defaults turn empty MCQ options into
NaN and strip the quotes that open RCM-2021 row 921's Description (ctibench/SCORING.md). Every cell
comes back as a `str`, an empty cell as "". Files are decoded line by line
(`secreason.data.jsonl.read_lines`), so a byte that is not UTF-8 is an error naming file:line.

Outputs (`atomic_open`, `write_text_atomic`) are written to a temp file in the same directory and
renamed into place on success: a failed or killed run leaves the previous file, or none, never a
half-written or empty one.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Iterator, TextIO

from secreason.data.jsonl import iter_jsonl, read_lines
from secreason.eval import EvalError

# Some CTIBench cells (ATE prompts embed the whole technique list) exceed csv's 128 KiB default.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def read_upstream_tsv(path: Path) -> list[dict[str, str]]:
    """A CTIBench TSV: tab-separated, never quoted, CRLF line ends."""
    return _read_delimited(path, "\t", quoting=csv.QUOTE_NONE)


def read_csv(path: Path, header: list[str] | None = None) -> list[dict[str, str]]:
    """Standard CSV with quoted multi-line fields; `header` names the columns of headerless files."""
    return _read_delimited(path, ",", quoting=csv.QUOTE_MINIMAL, header=header)


def read_json_array(path: Path, start_marker: str = "[") -> list[dict]:
    """A JSON array, possibly behind a JavaScript prefix such as `problem_data = [` (SecEval)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        text = "".join(_decoded_lines(path))  # raises, naming the line
    try:
        return json.loads(text[text.index(start_marker):])
    except (ValueError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: not a JSON array ({e})") from None


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, obj in iter_jsonl(path):
        if isinstance(obj, str):
            raise EvalError(f"{path}:{lineno}: {obj}")
        rows.append(obj)
    return rows


def read_response_file(path: str | Path) -> list[dict]:
    """A response file by extension: .tsv, .csv or .jsonl (.json with one object per line).

    TSVs are first read unquoted, like the upstream data files; a TSV written by pandas (quoted
    multi-line cells) gives ragged rows that way and is then re-read with standard quoting.
    """
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"responses={path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = read_jsonl(path)
        return [{k: "" if v is None else v for k, v in row.items()} for row in rows]
    if suffix == ".tsv":
        try:
            return _read_delimited(path, "\t", quoting=csv.QUOTE_NONE)
        except _RaggedRows:
            return _read_delimited(path, "\t", quoting=csv.QUOTE_MINIMAL)
    if suffix == ".csv":
        return _read_delimited(path, ",", quoting=csv.QUOTE_MINIMAL)
    raise EvalError(f"responses={path}: unknown file type {suffix!r}; use .tsv, .csv or .jsonl")


class _RaggedRows(EvalError):
    pass


def _decoded_lines(path: Path) -> Iterator[str]:
    """The file's lines, line ends kept (what csv.reader wants); a line that is not UTF-8 is an
    EvalError naming file:line."""
    for lineno, text, problem in read_lines(path):
        if problem is not None:
            raise EvalError(f"{path}:{lineno}: {problem}")
        yield text


def _read_delimited(path: Path, delimiter: str, quoting: int,
                    header: list[str] | None = None) -> list[dict[str, str]]:
    try:
        lines = list(csv.reader(_decoded_lines(path), delimiter=delimiter, quoting=quoting))
    except csv.Error as e:
        raise EvalError(f"{path}: not readable as {'TSV' if delimiter == chr(9) else 'CSV'} ({e})") from None
    if header is None:
        if not lines:
            raise EvalError(f"{path}: empty file")
        header, lines = lines[0], lines[1:]
    rows = []
    for i, cells in enumerate(lines):
        if not cells:  # a trailing blank line
            continue
        if len(cells) != len(header):
            raise _RaggedRows(f"{path}: row {i + 1} has {len(cells)} fields, the header has {len(header)}")
        rows.append(dict(zip(header, cells)))
    return rows


@contextlib.contextmanager
def atomic_open(path: str | Path, encoding: str = "utf-8") -> Iterator[TextIO]:
    """A text file opened for writing that appears at `path` whole or not at all: it is written to
    a temp file beside `path` (same directory, so the rename is atomic), flushed to disk and
    renamed over `path` when the block ends without an error; on an error the temp file is removed
    and whatever was at `path` before is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding=encoding) as fh:  # "x": a fresh file, permissions from the umask
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, encoding=encoding) as fh:
        fh.write(text)
