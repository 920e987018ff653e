"""Optimizers and learning-rate schedules by name, shared by the SFT and GRPO modules.

    OPTIMIZERS   adamw | adamw8bit | sgd     fn(params, lr, weight_decay, betas, eps) -> Optimizer
    SCHEDULES    cosine | constant           fn(total_steps, warmup_steps, min_lr_ratio) -> (step -> lr factor)

A module checks its settings when it is built (`optimizer_factory`, `scheduler_factory`: an
unknown name or a bad lr fails at start, naming the key) and builds the objects in
`configure_optimizers`, once the parameters and the step count are known.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import torch

from secreason.algos.registry import Registry
from secreason.errors import ConfigError

OptimizerFn = Callable[..., torch.optim.Optimizer]
ScheduleFn = Callable[[int, int, float], Callable[[int], float]]
OPTIMIZERS: Registry[OptimizerFn] = Registry("optimizer", key="algorithm.optim.name")
SCHEDULES: Registry[ScheduleFn] = Registry("lr schedule", key="algorithm.scheduler.name")


@OPTIMIZERS.register("adamw")
def adamw(params, lr: float, weight_decay: float, betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


@OPTIMIZERS.register("adamw8bit")
def adamw8bit(params, lr: float, weight_decay: float, betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    import bitsandbytes as bnb  # optional: only QLoRA-style runs need it

    return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


@OPTIMIZERS.register("sgd")
def sgd(params, lr: float, weight_decay: float, betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def optimizer_factory(name: str = "adamw", lr: float = 2e-5, weight_decay: float = 0.0,
                      betas: Iterable[float] = (0.9, 0.999),
                      eps: float = 1e-8) -> Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]:
    """Check the `algorithm.optim` settings now; returns params → optimizer over the trainable ones."""
    make = OPTIMIZERS.get(name)
    if not lr > 0:
        raise ConfigError(f"algorithm.optim.lr={lr!r}: must be > 0")
    betas = tuple(betas)

    def build(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        trainable = [p for p in params if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters")
        return make(trainable, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)

    return build


def build_optimizer(params: Iterable[torch.nn.Parameter], **settings: Any) -> torch.optim.Optimizer:
    """`optimizer_factory(**settings)(params)`: settings are `algorithm.optim` (name, lr, …)."""
    return optimizer_factory(**settings)(params)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_lr_ratio` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@SCHEDULES.register("cosine")
def cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    return lambda step: warmup_cosine(step, total_steps, warmup_steps, min_lr_ratio)


@SCHEDULES.register("constant")
def constant(total_steps: int, warmup_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def scheduler_factory(name: str = "cosine", warmup_steps: int | None = None, warmup_ratio: float | None = None,
                      min_lr_ratio: float = 0.0) -> Callable[[torch.optim.Optimizer, int], Any]:
    """Check the `algorithm.scheduler` settings now; returns (optimizer, total_steps) → LambdaLR.

    Warmup is `warmup_steps`, else `warmup_ratio` of the total steps (0 when neither is set).
    """
    schedule = SCHEDULES.get(name)

    def build(optimizer: torch.optim.Optimizer, total_steps: int):
        warmup = int(warmup_steps or round(float(warmup_ratio or 0) * total_steps))
        factor = schedule(total_steps, warmup, float(min_lr_ratio))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    return build


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, schedule: Mapping[str, Any]):
    """`scheduler_factory(**schedule)(optimizer, total_steps)`: `schedule` is `algorithm.scheduler`."""
    return scheduler_factory(**schedule)(optimizer, total_steps)
