"""RL prompt rows {task, prompt, answer, …} → batches of chat-templated prompt ids + the raw rows.

TRL-format data sets load unchanged: `prompt` may be a conversation (a list of {role, content}
messages), `data.columns` maps our names to the data set's (`data.columns.answer=solution`), and
`data.task` is the task of rows without one (a data set of one task).

Rows are checked before training (`secreason.data.rows.check_rl_prompt`): a row whose `answer` no
reward can use, or whose `task` no reward of the run's reward set routes (`reward_tasks`, given by
`secreason.run` from `RewardSet.tasks`), follows `data.on_bad_row` like any other bad row: an
error naming file:line, or a skip that is counted (`stats`, logged as `data/rows_skipped`). Fewer
usable prompts than one batch is an error: with `drop_last` no training step would run at all.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Collection
from typing import Any, Mapping

from torch.utils.data import DataLoader

from secreason.data.chat import encode_prompt
from secreason.data.resumable import ResumableDataModule
from secreason.data.rows import DataError, check_rl_prompt, load_rows, log_counts, mapped_row
from secreason.errors import ConfigError
from secreason.rewards.extraction import DEFAULT_THINK_TAGS

log = logging.getLogger(__name__)

RL_COLUMNS = ("prompt", "answer", "task")  # what data.columns can map (other columns pass through unchanged)


def encode_prompts(tokenizer, rows: list[dict], system_prompt: str | None, max_prompt_length: int):
    """[(prompt ids, row)] for rows that fit, and how many were dropped as too long."""
    kept, dropped = [], 0
    for r in rows:
        ids = encode_prompt(tokenizer, r["prompt"], system_prompt)
        if len(ids) > max_prompt_length:
            dropped += 1
            continue
        kept.append({"prompt_ids": ids, "row": r})
    return kept, dropped


def check_column_map(columns: Mapping[str, str] | None) -> dict[str, str]:
    """`data.columns` as {our name: the data set's column} (a null entry: the column of our own name);
    anything else is a ConfigError naming the key."""
    out = {k: v for k, v in dict(columns or {}).items() if v is not None}
    for ours, theirs in out.items():
        if ours not in RL_COLUMNS:
            raise ConfigError(f"data.columns.{ours}: not a column the RL rows have; map one of {', '.join(RL_COLUMNS)}")
        if not isinstance(theirs, str) or not theirs:
            raise ConfigError(f"data.columns.{ours}={theirs!r}: must be the data set's column name")
    return out


def with_column_hint(problem: str | None, columns: Mapping[str, str], task: str | None) -> str | None:
    """A missing column's problem, saying which data set column the map read it from (or how to give it)."""
    if problem is None or not problem.startswith("missing '"):
        return problem
    key = problem.split("'")[1]
    if key in columns:
        return f"{problem} (data.columns.{key}={columns[key]}: the row has no column {columns[key]!r})"
    hint = "data.task=<name> for a data set of one task" if key == "task" else f"data.columns.{key}=<its column>"
    return f"{problem} (name the column that holds it: {hint})"


def collate_prompts(items: list[dict]) -> dict[str, Any]:
    return {"prompt_ids": [it["prompt_ids"] for it in items], "rows": [it["row"] for it in items]}


class PromptDataModule(ResumableDataModule):
    """Prompts per optimizer step = `batch_size`; each gets `algorithm.num_generations` completions."""

    def __init__(self, tokenizer, path: str | None = None, split: str = "rl_train", test_split: str = "rl_test",
                 batch_size: int = 8, max_prompt_length: int = 256, system_prompt: str | None = None,
                 on_bad_row: str = "error", seed: int = 0, tasks: list[str] | None = None,
                 synth: Mapping[str, Any] | None = None, think_tags=DEFAULT_THINK_TAGS,
                 reward_tasks: Collection[str] | None = None, columns: Mapping[str, str] | None = None,
                 task: str | None = None, val_batch_size: int | None = None) -> None:
        super().__init__()
        self.columns, self.task = check_column_map(columns), task
        if task is not None and not isinstance(task, str):
            raise DataError(f"data.task={task!r}: must be a task name (a string) or null")
        if batch_size < 1:
            raise DataError(f"data.batch_size={batch_size} must be ≥ 1")
        if val_batch_size is not None and val_batch_size < 1:
            raise DataError(f"data.val_batch_size={val_batch_size} must be ≥ 1 or null")
        # Validation only generates (no backward, no reference), so it can take far more prompts per call.
        self.val_batch_size = val_batch_size or batch_size
        self.tokenizer, self.path, self.split, self.test_split = tokenizer, path, split, test_split
        self.batch_size, self.max_prompt_length, self.system_prompt = batch_size, max_prompt_length, system_prompt
        self.on_bad_row, self.seed, self.tasks, self.synth = on_bad_row, seed, tasks, synth
        self.think_tags = tuple(think_tags)
        self.reward_tasks: frozenset[str] | None = None
        self.set_reward_tasks(reward_tasks)
        self.train_items: list[dict] = []
        self.stats: dict[str, int] = {}

    def set_reward_tasks(self, tasks: Collection[str] | None) -> None:
        """The tasks the run's reward set routes (`RewardSet.tasks`): rows of any other task are bad
        rows. None: tasks are not checked (a datamodule used without a reward set)."""
        self.reward_tasks = None if tasks is None else frozenset(str(t) for t in tasks)

    def load(self, split: str, stats: dict[str, int] | None = None) -> list[dict]:
        keep = set(self.tasks) if self.tasks else None
        checked = functools.partial(check_rl_prompt, reward_tasks=self.reward_tasks, only_tasks=keep)

        def check(row: dict) -> str | None:
            return with_column_hint(checked(row), self.columns, self.task)

        prepare = functools.partial(mapped_row, columns=self.columns, task=self.task)
        rows = load_rows(self.source_path(), check, split=split, on_bad_row=self.on_bad_row, stats=stats,
                         prepare=prepare if self.columns or self.task else None)
        if keep:
            rows = [r for r in rows if r["task"] in keep]
            if not rows:
                raise DataError(f"data.tasks={list(self.tasks)}: no {split} rows of those tasks")
        return rows

    def setup(self, stage: str | None = None) -> None:
        if self.train_items:
            return
        stats: dict[str, int] = {}
        rows = self.load(self.split, stats)
        self.train_items, dropped = encode_prompts(self.tokenizer, rows, self.system_prompt, self.max_prompt_length)
        if dropped:
            log.warning("dropped %d prompts longer than data.max_prompt_length=%d", dropped, self.max_prompt_length)
        if not self.train_items:
            raise DataError(f"data.path={self.source_path()}: no prompt fits data.max_prompt_length")
        self.stats = {**stats, "rows_other_tasks": stats["rows_read"] - stats["rows_skipped"] - len(rows),
                      "rows_too_long": dropped, "rows_used": len(self.train_items)}
        if len(self.train_items) < self.batch_size:
            s = self.stats
            raise DataError(f"data.path={self.source_path()}: {s['rows_used']} usable rows ({s['rows_read']} read: "
                            f"{s['rows_skipped']} bad, {s['rows_other_tasks']} outside data.tasks, "
                            f"{s['rows_too_long']} longer than data.max_prompt_length), fewer than one batch "
                            f"(data.batch_size={self.batch_size}): no training step would run")
        log.info("RL prompts: %s", self.stats)
        log_counts(self.trainer, self.stats)

    def test_rows(self) -> list[dict]:
        return self.load(self.test_split)

    def val_dataloader(self) -> DataLoader | list:
        """The held-out `test_split` prompts for Lightning's validation loop (GRPOModule.validation_step).
        Read here, not in `setup`: Lightning asks for it only when validation is on
        (`trainer.limit_val_batches` > 0), so a run without it never needs the split."""
        items, dropped = encode_prompts(self.tokenizer, self.test_rows(), self.system_prompt, self.max_prompt_length)
        if dropped:
            log.warning("dropped %d held-out prompts longer than data.max_prompt_length=%d", dropped,
                        self.max_prompt_length)
        return DataLoader(items, batch_size=self.val_batch_size, shuffle=False, collate_fn=collate_prompts) if items else []

    def train_dataloader(self) -> DataLoader:
        sampler = self.make_sampler(len(self.train_items), drop_last=True)
        return DataLoader(self.train_items, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=collate_prompts, drop_last=True)
