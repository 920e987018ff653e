"""One training batch's completions as table rows: what `rollout/samples` (a wandb.Table) shows.

The GRPO module leaves `batch["scored"] = ScoredBatch(result, advantages)` after scoring, and the
rollout-table callback (callbacks/rollout_table.py) turns it into rows with `rollout_table`, so
a reader sees each prompt, its completion, every reward function's score, why it was penalised,
and the advantage it trained with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from secreason.rollout import Rollout


@dataclass
class ScoredBatch:
    result: Any                 # the reward set's RewardResult for the batch's completions
    advantages: torch.Tensor    # [N], as trained (before zero-variance filtering)


def prompt_text(prompt: Any) -> str:
    """A string prompt as is; a conversational one (TRL's message list) as `role: content` lines."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                         for m in prompt)
    return str(prompt)


def rollout_table(rollout: Rollout, rows: Sequence[dict], scored: ScoredBatch, num_generations: int,
                  step: int, max_rows: int | None = None) -> tuple[list[str], list[list[Any]]]:
    """(columns, data): one row per completion (the first `max_rows`), rows[i] being prompt i of n completions."""
    result = scored.result
    names = list(getattr(result, "per_reward", {}))
    columns = ["step", "task", "prompt", "completion", *(f"reward/{n}" for n in names),
               "correctness", "format_penalty", "total", "penalty_reasons", "advantage"]
    reasons = getattr(result, "penalty_reasons", None) or [[] for _ in result.total]
    advantages = scored.advantages.tolist()
    data = []
    count = len(result.total) if max_rows is None else min(max_rows, len(result.total))
    for i in range(count):
        row = rows[i // num_generations]
        data.append([step, str(row.get("task")), prompt_text(row.get("prompt")), rollout.texts[i],
                     *(result.per_reward[n][i] for n in names), result.correctness[i], result.format_penalty[i],
                     result.total[i], ", ".join(reasons[i]), advantages[i]])
    return columns, data
