"""Read data rows from JSONL / Parquet / a hub id, validating each with a file:line error.

`datasets` is the loader for Parquet and the hub; JSONL is parsed here line by line so a bad row
is reported as `file:line: what is wrong` instead of a crash deep in collation.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from secreason.data.jsonl import iter_jsonl
from secreason.errors import DataError  # noqa: F401 (imported from here too: `secreason.data.rows.DataError`)

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_files(path: str, split: str) -> list[Path] | None:
    """Local files for `path` (a file, or a dir holding `<split>.jsonl|.parquet`); None for a hub id."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for ext in ("jsonl", "json", "parquet") for f in p.glob(f"{split}*.{ext}"))
        if not files:
            raise DataError(f"data.path={path}: no {split}*.jsonl or {split}*.parquet in that directory")
        return files
    if HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        return None
    raise DataError(f"data.path={path}: no such file or directory")


def iter_raw_rows(path: str, split: str = "train") -> Iterable[tuple[str, dict]]:
    """(`where`, row) pairs; `where` is `file:line` (JSONL), `file:row` (Parquet) or `hub:split:i`."""
    files = resolve_files(path, split)
    if files is None:
        import datasets

        try:
            ds = datasets.load_dataset(path, split=split)
        except Exception as e:  # offline or unknown id: one line, not the hub client's traceback
            raise DataError(f"data.path={path}: cannot load hub dataset ({type(e).__name__}: {e})") from None
        for i, row in enumerate(ds):
            yield f"{path}:{split}:{i}", row
        return
    for f in files:
        if f.suffix == ".parquet":
            import datasets

            for i, row in enumerate(datasets.Dataset.from_parquet(str(f))):
                yield f"{f}:{i + 1}", row
            continue
        for lineno, row in iter_jsonl(f):
            yield f"{f}:{lineno}", DataError(f"{f}:{lineno}: {row}") if isinstance(row, str) else row


def check_messages(row: dict) -> str | None:
    """What is wrong with a chat row, or None. The last turn must be a non-empty assistant turn."""
    msgs = row.get("messages")
    if msgs is None:
        return "missing 'messages'"
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        if m.get("role") not in ROLES:
            return f"messages[{i}].role={m.get('role')!r}, expected one of {sorted(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content is not a string"
    if msgs[-1]["role"] != "assistant":
        return "the last message must be the assistant turn"
    if not any(m["role"] == "user" for m in msgs):
        return "no user message"
    if any(m["role"] == "assistant" and not m["content"].strip() for m in msgs):
        return "empty assistant turn"
    return None


def check_rl_prompt(row: dict) -> str | None:
    for key in ("prompt", "answer", "task"):
        if key not in row:
            return f"missing {key!r}"
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        return "'prompt' must be a non-empty string"
    if not isinstance(row["task"], str):
        return "'task' must be a string"
    return None


def load_rows(path: str, check: Callable[[dict], str | None], split: str = "train",
              on_bad_row: str = "error") -> list[dict]:
    """All valid rows. A bad row raises DataError naming file:line, or is skipped and counted."""
    if on_bad_row not in ("error", "skip"):
        raise DataError(f"data.on_bad_row={on_bad_row!r}; choose error or skip")
    rows, bad = [], 0
    for where, row in iter_raw_rows(path, split):
        problem = str(row).split(": ", 1)[-1] if isinstance(row, DataError) else check(row)
        if problem is None:
            rows.append(row)
            continue
        if on_bad_row == "error":
            raise DataError(f"{where}: {problem}")
        bad += 1
        if bad <= 5:
            log.warning("skipping bad row %s: %s", where, problem)
    if bad:
        log.warning("skipped %d bad rows in %s (data.on_bad_row=skip)", bad, path)
    if not rows:
        raise DataError(f"data.path={path}: no valid rows")
    return rows
