"""Read data rows from JSONL / Parquet / a hub id, validating each with a file:line error.

`datasets` is the loader for Parquet and the hub; JSONL is parsed here line by line so a bad row
is reported as `file:line: what is wrong` instead of a crash deep in collation.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Callable, Iterable

from secreason.data.jsonl import iter_jsonl
from secreason.errors import DataError  # noqa: F401 (imported from here too: `secreason.data.rows.DataError`)

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant"}
# Tasks whose gold may be a list of ids (the ATT&CK reward takes ["T1059", "T1566"] as well as
# "T1059, T1566"); every other task's gold is one string or number.
LIST_ANSWER_TASKS = frozenset({"attack"})
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
            yield from _parquet_rows(f)
            continue
        for lineno, row in iter_jsonl(f):
            yield f"{f}:{lineno}", DataError(f"{f}:{lineno}: {row}") if isinstance(row, str) else row


def _parquet_rows(f: Path) -> Iterable[tuple[str, dict]]:
    """A Parquet file's rows, read with pyarrow (what `datasets` reads Parquet with)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(f)
    except (pa.ArrowException, OSError) as e:  # a text file named .parquet, a truncated file
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{f}: not a readable Parquet file ({reason})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{f}:{i + 1}", row


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


def answer_problem(answer: Any, task: str) -> str | None:
    """What makes a gold `answer` unusable by the rewards, or None. Usable: a non-blank string, a
    finite number, or (for LIST_ANSWER_TASKS) a non-empty list of non-blank strings."""
    if answer is None:
        return "'answer' is null"
    if isinstance(answer, bool):
        return f"'answer' is a boolean ({answer}); give the gold as a string"
    if isinstance(answer, (int, float)):
        return None if math.isfinite(answer) else f"'answer' is {answer}, not a finite number"
    if isinstance(answer, str):
        return None if answer.strip() else "'answer' is empty"
    if isinstance(answer, (list, tuple)) and task in LIST_ANSWER_TASKS:
        if answer and all(isinstance(a, str) and a.strip() for a in answer):
            return None
        return f"'answer' of task {task!r} must be a string or a non-empty list of id strings"
    lists = f" (a list only for task {', '.join(sorted(LIST_ANSWER_TASKS))})"
    return f"'answer' is a {type(answer).__name__}; give the gold as a string or a number{lists}"


def prompt_problem(prompt: Any) -> str | None:
    """What is wrong with an RL `prompt`, or None. Usable: a non-empty string, or a conversation
    (TRL's conversational form) of {role, content} messages with a user turn and no final assistant turn."""
    if isinstance(prompt, str):
        return None if prompt.strip() else "'prompt' is empty"
    if not isinstance(prompt, list):
        return f"'prompt' is a {type(prompt).__name__}; give a string or a list of {{role, content}} messages"
    if not prompt:
        return "'prompt' is an empty list of messages"
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"prompt[{i}] must be {{role: one of {sorted(ROLES)}, content: a string}}, got {m!r:.80}"
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        return "'prompt' has no non-empty user message"
    if prompt[-1]["role"] == "assistant":
        return "'prompt' ends with an assistant message; the model answers after the last user turn"
    return None


def mapped_row(row: dict, columns: Mapping[str, str] | None = None, task: str | None = None) -> dict:
    """`row` with our column names: `columns` maps ours to the data set's (`{"answer": "solution"}`:
    row["answer"] = row["solution"]); `task` is the task of a row without one (a constant for a data
    set of one task). A column the map names but the row lacks is left out (the check names it)."""
    out = dict(row)
    for ours, theirs in (columns or {}).items():
        if theirs in row:
            out[ours] = row[theirs]
    if task is not None and out.get("task") is None:
        out["task"] = task
    return out


def check_rl_prompt(row: dict, reward_tasks: Collection[str] | None = None,
                    only_tasks: Collection[str] | None = None) -> str | None:
    """What is wrong with a GRPO prompt row {task, prompt, answer, …}, or None.

    `reward_tasks`: the tasks the reward set routes (`RewardSet.tasks`); a row whose task none of
    them handles would score 0 on every completion, so it is a bad row. Rows outside `only_tasks`
    (`data.tasks`, dropped afterwards) are not held to it. None: not checked."""
    for key in ("prompt", "answer", "task"):
        if key not in row:
            return f"missing {key!r}"
    problem = prompt_problem(row["prompt"])
    if problem:
        return problem
    if not isinstance(row["task"], str):
        return "'task' must be a string"
    problem = answer_problem(row["answer"], row["task"])
    if problem:
        return problem
    kept = not only_tasks or row["task"] in only_tasks
    if reward_tasks is not None and kept and row["task"] not in reward_tasks:
        return (f"task {row['task']!r} has no reward in the reward set, which routes "
                f"{', '.join(sorted(reward_tasks))} (fix the row's task, or add a reward for it: conf/rewards)")
    return None


def load_rows(path: str, check: Callable[[dict], str | None], split: str = "train",
              on_bad_row: str = "error", stats: MutableMapping[str, int] | None = None,
              prepare: Callable[[dict], dict] | None = None) -> list[dict]:
    """All valid rows. A bad row (undecodable, invalid JSON, or one `check` objects to) raises
    DataError naming file:line, or is skipped and counted. `stats`, if given, gets `rows_read` and
    `rows_skipped` added (the datamodules log them). `prepare` (e.g. `mapped_row`) turns each decoded
    row into the row that is checked and kept."""
    if on_bad_row not in ("error", "skip"):
        raise DataError(f"data.on_bad_row={on_bad_row!r}; choose error or skip")
    rows, bad = [], 0
    for where, row in iter_raw_rows(path, split):
        if prepare is not None and isinstance(row, dict):
            row = prepare(row)
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
        log.warning("skipped %d bad rows of %d in %s (data.on_bad_row=skip)", bad, bad + len(rows), path)
    if stats is not None:
        stats["rows_read"] = stats.get("rows_read", 0) + bad + len(rows)
        stats["rows_skipped"] = stats.get("rows_skipped", 0) + bad
    if not rows:
        skipped = f" ({bad} bad rows skipped)" if bad else ""
        raise DataError(f"data.path={path}: no valid rows in split {split!r}{skipped}")
    return rows


def log_counts(trainer: Any, counts: Mapping[str, int | float], prefix: str = "data/") -> None:
    """Row counts as metrics (`data/rows_skipped`, …) to the trainer's loggers at step 0, so a
    skip shows in metrics.csv and wandb, not only in the log. No trainer (a test): nothing."""
    for logger in getattr(trainer, "loggers", None) or ():
        logger.log_metrics({prefix + k: float(v) for k, v in counts.items()}, step=0)
