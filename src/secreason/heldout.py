"""Held-out correctness of a model on RL prompts it never trained on (the demos' before/after figure)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from secreason.data.chat import encode_prompt
from secreason.models import resolve_device
from secreason.modules.rollout_stats import rollout_metrics
from secreason.rewards.extraction import DEFAULT_THINK_TAGS
from secreason.sampling.hf import HFGenerator


def heldout_scores(model, tokenizer, rows: Sequence[dict], reward_set: Any, temperature: float = 0.0,
                   max_tokens: int = 48, batch_size: int = 64, seed: int = 0, samples: int = 1,
                   think_tags: tuple[str, str] = DEFAULT_THINK_TAGS, system_prompt: str | None = None,
                   device: str | None = "auto") -> dict[str, float]:
    """Mean correctness (before the format penalty), total reward and think statistics over `rows`.

    Greedy (temperature 0) by default; `samples` completions per prompt when sampling. `model` is
    moved to `device` (auto: the GPU when there is one, `secreason.models.resolve_device`).
    """
    model = model.to(resolve_device(device))
    sampler = HFGenerator(temperature=temperature, top_p=1.0, max_tokens=max_tokens, seed=seed).bind(model, tokenizer)
    correctness: list[float] = []
    total: list[float] = []
    stats: dict[str, float] = {}
    for start in range(0, len(rows), batch_size):
        chunk = list(rows[start:start + batch_size])
        prompts = [encode_prompt(tokenizer, r["prompt"], system_prompt) for r in chunk]
        with torch.no_grad():
            rollout = sampler.generate(prompts, samples)
        result = reward_set(rollout.texts, [row for row in chunk for _ in range(samples)])
        correctness += result.correctness
        total += result.total
        for k, v in rollout_metrics(rollout, tokenizer, think_tags).items():
            stats[k] = stats.get(k, 0.0) + v * len(chunk) * samples
    n = max(len(correctness), 1)
    out = {"correctness": sum(correctness) / n, "total": sum(total) / n, "n": float(len(correctness))}
    out.update({k.replace("rollout/", ""): v / n for k, v in stats.items()})
    return out
