"""Check a GRPO config and assemble the module: bad values fail at start with one line naming the key."""
from __future__ import annotations

import copy
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from secreason.algos import ADVANTAGES, KL_ESTIMATORS, LOSS_AGG
from secreason.models import lora_enabled

OVERLONG_MODES = ("none", "mask", "soft_penalty")
OLD_LOGPROBS = ("recompute", "sampler")


class GRPOConfigError(ValueError):
    pass


def _need(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise GRPOConfigError(f"{key}={value!r}: {rule}")


def validate(cfg: DictConfig) -> None:
    a = cfg.algorithm
    _need(int(a.num_generations) >= 2, "algorithm.num_generations", a.num_generations,
          "must be ≥ 2 (advantages are relative to the group)")
    _need(int(a.updates_per_batch) >= 1, "algorithm.updates_per_batch", a.updates_per_batch, "must be ≥ 1")
    _need(int(a.micro_batch_size) >= 1, "algorithm.micro_batch_size", a.micro_batch_size, "must be ≥ 1")
    _need(float(a.kl.beta) >= 0, "algorithm.kl.beta", a.kl.beta, "must be ≥ 0")
    _need(a.kl.estimator in KL_ESTIMATORS.names(), "algorithm.kl.estimator", a.kl.estimator,
          f"choose one of {KL_ESTIMATORS.names()}")
    _need(0 <= float(a.clip_eps_low) < 1, "algorithm.clip_eps_low", a.clip_eps_low, "must be in [0, 1)")
    _need(float(a.clip_eps_high) >= 0, "algorithm.clip_eps_high", a.clip_eps_high, "must be ≥ 0")
    _need(a.is_cap is None or float(a.is_cap) > 0, "algorithm.is_cap", a.is_cap, "must be > 0 or null")
    _need(a.old_logprobs in OLD_LOGPROBS, "algorithm.old_logprobs", a.old_logprobs, f"choose one of {OLD_LOGPROBS}")
    _need(a.overlong.mode in OVERLONG_MODES, "algorithm.overlong.mode", a.overlong.mode,
          f"choose one of {OVERLONG_MODES}")
    _need(cfg.loss_agg.name in LOSS_AGG.names(), "loss_agg", cfg.loss_agg.name, f"choose one of {LOSS_AGG.names()}")
    _need(cfg.advantage.name in ADVANTAGES.names(), "advantage", cfg.advantage.name,
          f"choose one of {ADVANTAGES.names()}")
    _need(cfg.get("sampler") is not None, "sampler", None, "GRPO needs a sampler (sampler=hf or sampler=vllm)")
    _need(int(cfg.sampler.max_tokens) >= 1, "sampler.max_tokens", cfg.sampler.max_tokens, "must be ≥ 1")
    _need(cfg.trainer.get("gradient_clip_val") is None, "trainer.gradient_clip_val", cfg.trainer.gradient_clip_val,
          "GRPO steps its optimizer by hand: set algorithm.max_grad_norm instead (and this to null)")
    _need(int(cfg.trainer.get("accumulate_grad_batches", 1)) == 1, "trainer.accumulate_grad_batches",
          cfg.trainer.accumulate_grad_batches, "GRPO accumulates over algorithm.micro_batch_size instead; keep 1")


def build_reward_set(cfg: DictConfig):
    penalty = instantiate(cfg.format_penalty) if cfg.get("format_penalty") else None
    return instantiate(cfg.rewards, format_penalty=penalty)


def build_grpo_module(cfg: DictConfig, model, tokenizer):
    from secreason.modules.grpo import GRPOModule

    a = cfg.algorithm
    ref = None
    if float(a.kl.beta) > 0 and not lora_enabled(cfg.model.get("lora")):
        ref = copy.deepcopy(model).eval().requires_grad_(False)  # the starting (SFT) policy
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    return GRPOModule(
        model=model, tokenizer=tokenizer, reward_set=build_reward_set(cfg), ref_model=ref,
        num_generations=int(a.num_generations), updates_per_batch=int(a.updates_per_batch),
        micro_batch_size=int(a.micro_batch_size), loss_agg=cfg.loss_agg.name, advantage=plain(cfg.advantage),
        kl=plain(a.kl), clip_eps_low=float(a.clip_eps_low), clip_eps_high=float(a.clip_eps_high),
        is_cap=a.is_cap, old_logprobs=a.old_logprobs, overlong=plain(a.overlong),
        filter_zero_std_groups=bool(a.filter_zero_std_groups), max_completion_length=int(cfg.sampler.max_tokens),
        temperature=float(cfg.sampler.temperature), max_grad_norm=a.max_grad_norm, optim=plain(a.optim),
        scheduler=plain(a.scheduler), think_tags=tuple(cfg.data.get("think_tags", ("<think>", "</think>"))),
        share_prompts=bool(a.share_prompts))
