"""Held-out correctness of a model on RL prompts it never trained on: the demos' before/after figure
(`heldout_scores`) and GRPO's validation loop (`log_validation`, logged as `val/*`)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from secreason.data.chat import encode_prompt
from secreason.models import resolve_device
from secreason.modules.rollout_stats import rollout_metrics
from secreason.rewards.extraction import DEFAULT_THINK_TAGS
from secreason.sampling.hf import HFGenerator, fsdp_root


def score_prompts(sampler: HFGenerator, tokenizer, prompt_ids: list[list[int]], rows: Sequence[dict],
                  reward_set: Any, samples: int, think_tags: tuple[str, str]) -> tuple[dict[str, float], int]:
    """Means over `samples` completions of each prompt, and how many completions they are over:
    `correctness` (before the format penalty), `total` (the reward) and the rollout's think statistics."""
    with torch.no_grad():
        rollout = sampler.generate(prompt_ids, samples)
    result = reward_set(rollout.texts, [row for row in rows for _ in range(samples)])
    n = len(result.correctness)
    means = {"correctness": sum(result.correctness) / max(n, 1), "total": sum(result.total) / max(n, 1)}
    means.update({k.replace("rollout/", ""): v for k, v in rollout_metrics(rollout, tokenizer, think_tags).items()})
    return means, n


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
    sums: dict[str, float] = {}
    total_n = 0
    for start in range(0, len(rows), batch_size):
        chunk = list(rows[start:start + batch_size])
        prompts = [encode_prompt(tokenizer, r["prompt"], system_prompt) for r in chunk]
        means, n = score_prompts(sampler, tokenizer, prompts, chunk, reward_set, samples, think_tags)
        for k, v in means.items():
            sums[k] = sums.get(k, 0.0) + v * n
        total_n += n
    out = {k: v / max(total_n, 1) for k, v in sums.items()}
    out.update({"correctness": out.get("correctness", 0.0), "total": out.get("total", 0.0), "n": float(total_n)})
    return out


def log_validation(module, batch: Mapping[str, Any], batch_idx: int, temperature: float, samples: int,
                   seed: int) -> dict[str, float]:
    """GRPOModule.validation_step: one batch of held-out prompts (`data.test_split`) answered by the live
    policy with HF generate and scored by the run's reward set. Logged as `val/reward/correctness`,
    `val/reward/total` and `val/<think statistic>`, each weighted by its completions; Lightning
    averages them over the validation epoch (and over ranks). Every validation restarts the seed
    (per batch and rank), so sampled validations at different steps share their random draws and
    differ by the policy only."""
    sampler = HFGenerator(temperature=temperature, top_p=1.0, max_tokens=module.max_len, seed=seed + batch_idx)
    sampler.bind(module.model, module.tokenizer)
    sampler.rank = module.global_rank
    strategy = module.trainer.strategy if module._trainer is not None else None
    sampler.gather_from(fsdp_root(module.model, getattr(strategy, "model", None)))  # FSDP: generate in step
    means, n = score_prompts(sampler, module.tokenizer, batch["prompt_ids"], batch["rows"], module.reward_set,
                             samples, module.think_tags)
    logged = {(f"val/reward/{k}" if k in ("correctness", "total") else f"val/{k}"): v for k, v in means.items()}
    module.log_dict(logged, batch_size=n, sync_dist=True)
    return logged
