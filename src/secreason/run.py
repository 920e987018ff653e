"""Compose the pieces a config names and fit: the body of `python train.py`."""
from __future__ import annotations

import functools
import logging
import os
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from secreason.errors import ConfigError
from secreason.checkpoints import resume_path
from secreason.models import check_compile_flag, load_causal_lm, load_tokenizer, resolve_model_path

log = logging.getLogger(__name__)


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Callbacks / loggers given as a name → config mapping (a null entry switches one off)."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def build_model(cfg: DictConfig):
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    tokenizer = load_tokenizer(path, cfg.model.get("chat_template"))
    lora = OmegaConf.to_container(cfg.model.lora, resolve=True) if cfg.model.get("lora") else None
    model = load_causal_lm(path, dtype=cfg.model.dtype, attn_implementation=cfg.model.get("attn_implementation"),
                           gradient_checkpointing=cfg.model.gradient_checkpointing,
                           quantization=cfg.model.get("quantization"), lora=lora,
                           trust_remote_code=cfg.model.get("trust_remote_code", False),
                           compile=check_compile(cfg))
    return path, model, tokenizer


def check_compile(cfg: DictConfig) -> bool:
    """model.compile, refused under FSDP: the strategy wraps the policy's layers after it was compiled."""
    enabled = check_compile_flag(cfg.model.get("compile", False))
    strategy = cfg.get("trainer", {}).get("strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy or "")
    if enabled and "fsdp" in name.lower():
        raise ConfigError(f"model.compile=true is not supported with trainer.strategy={name}; "
                          "set model.compile=false (or use DDP)")
    return enabled


def module_factory(cfg: DictConfig) -> functools.partial:
    """`algorithm.module` (a partial `_target_`: conf/algorithm/*.yaml), to be called with the model
    and tokenizer. A module class with `check_settings` has its settings checked now, before any
    weights are loaded, so a bad value fails in a second rather than after loading an 8B model."""
    make = instantiate(cfg.algorithm.module)
    check = getattr(make.func, "check_settings", None)
    if check is not None:
        check(**make.keywords)
    return make


def build_module(cfg: DictConfig, model, tokenizer) -> L.LightningModule:
    return module_factory(cfg)(model=model, tokenizer=tokenizer)


# Trainer settings Lightning rejects for a module that steps its optimizer by hand, with what to use instead.
MANUAL_OPTIMIZATION_CONFLICTS = (
    ("gradient_clip_val", None, "set algorithm.max_grad_norm instead (and this to null)"),
    ("accumulate_grad_batches", 1, "it accumulates over algorithm.micro_batch_size instead; keep 1"),
)


def check_trainer_for(module_cls: type, trainer_cfg: DictConfig) -> None:
    """Before anything loads: Lightning's own check comes inside `Trainer.fit`, as a traceback
    without the key. `STEPS_OPTIMIZER_BY_HAND` marks a module class with manual optimization."""
    if not getattr(module_cls, "STEPS_OPTIMIZER_BY_HAND", False):
        return
    for key, allowed, advice in MANUAL_OPTIMIZATION_CONFLICTS:
        value = trainer_cfg.get(key, allowed)
        if value != allowed:
            raise ConfigError(f"trainer.{key}={value!r}: {module_cls.__name__} steps its optimizer by hand; "
                              f"{advice}")


def set_threads(n: int | None) -> None:
    n = n or int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count() or 1
    torch.set_num_threads(n)


def check_optimized_metric(cfg: DictConfig) -> str | None:
    """`optimized_metric` (None: the run returns nothing), checked before any work: a val/* metric with
    the validation loop off would otherwise fail only after the whole run."""
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    if not isinstance(key, str) or not key:
        raise ConfigError(f"optimized_metric={key!r}: must be a logged metric's name, e.g. val/reward/correctness")
    limit = cfg.trainer.get("limit_val_batches")
    if key.startswith("val/") and limit is not None and float(limit) == 0:
        raise ConfigError(f"optimized_metric={key}: logged by the validation loop, which trainer.limit_val_batches="
                          f"{limit} switches off")
    return key


def optimized_value(key: str | None, metrics: dict[str, float]) -> float | None:
    """The value of metric `key` the run ended with: what a Hydra sweeper optimises."""
    if key is None:
        return None
    if key not in metrics:
        raise ConfigError(f"optimized_metric={key}: this run never logged it (it logged: "
                          f"{', '.join(sorted(metrics)) or 'nothing'})")
    log.info("optimized_metric %s = %s", key, metrics[key])
    return metrics[key]


def train_for_sweep(cfg: DictConfig) -> float | None:
    """`train`, returning `optimized_metric`'s last value (`python train.py`'s return, what sweepers read)."""
    key = check_optimized_metric(cfg)  # before any work
    return optimized_value(key, train(cfg))


def train(cfg: DictConfig) -> dict[str, float]:
    ckpt_path = resume_path(cfg.get("ckpt_path"))  # a local, weights-only checkpoint, checked before any work
    make_module = module_factory(cfg)  # settings checked before any weights load
    check_trainer_for(make_module.func, cfg.trainer)
    L.seed_everything(cfg.seed, workers=True)
    set_threads(cfg.get("num_threads"))
    _, model, tokenizer = build_model(cfg)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, _convert_="partial")
    # GRPO: rows whose task no reward of the set routes are bad rows (data.on_bad_row), checked in setup
    reward_tasks = getattr(make_module.keywords.get("reward_set"), "tasks", None)
    if reward_tasks is not None and hasattr(datamodule, "set_reward_tasks"):
        datamodule.set_reward_tasks(reward_tasks)
    module = make_module(model=model, tokenizer=tokenizer)
    # The run's callbacks, then the algorithm's own (GRPO: its rollout sampler).
    callbacks = instantiate_dict(cfg.get("callbacks")) + instantiate_dict(cfg.algorithm.get("callbacks"))
    loggers = instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    log.info("final metrics: %s", metrics)
    return metrics
