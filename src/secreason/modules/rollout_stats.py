"""What a batch of completions looks like: the `rollout/*` metrics that make reward hacking visible.

`think_near_empty_frac` and `think_len_mean` move long before accuracy does when reasoning
collapses (shared/notes/hacking-demo-feasibility.md), so they are logged on every step.
"""
from __future__ import annotations

from typing import Any

from secreason.rewards.extraction import split_think
from secreason.rollout import Rollout

NEAR_EMPTY_TOKENS = 2


def think_token_lengths(texts: list[str], tokenizer: Any, think_tags: tuple[str, str]) -> list[int | None]:
    """Tokens inside each completion's closed think block; None when the block is not closed."""
    out: list[int | None] = []
    for text in texts:
        split = split_think(text, think_tags)
        if not split.closed or split.think is None:
            out.append(None)
            continue
        out.append(len(tokenizer(split.think.strip(), add_special_tokens=False)["input_ids"]))
    return out


def rollout_metrics(rollout: Rollout, tokenizer: Any, think_tags: tuple[str, str]) -> dict[str, float]:
    lengths = rollout.completion_lengths.float()
    think = think_token_lengths(rollout.texts, tokenizer, think_tags)
    closed = [t for t in think if t is not None]
    n = len(think)
    return {
        "rollout/completion_len_mean": lengths.mean().item(),
        "rollout/completion_len_max": lengths.max().item(),
        "rollout/truncated_frac": rollout.truncated.float().mean().item(),
        "rollout/think_len_mean": sum(closed) / len(closed) if closed else 0.0,
        "rollout/think_closed_frac": len(closed) / n,
        "rollout/think_near_empty_frac": sum(t is None or t <= NEAR_EMPTY_TOKENS for t in think) / n,
    }
