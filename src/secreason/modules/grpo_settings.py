"""The one validator of GRPOModule's settings: types and ranges, each error naming its config key.

`check_settings(s)` takes the module's arguments (defaults filled in) and returns what the module
builds from them: the registry functions and the checked values. `secreason.run` calls it (through
`GRPOModule.check_settings`) before the model is loaded, so a bad value fails at once.
"""
from __future__ import annotations

import functools
import math
from typing import Any

from secreason.algos import ADVANTAGES, KL_ESTIMATORS, LOSS_AGG, OVERLONG_MODES, POLICY_LOSSES
from secreason.algos.policy_loss import check_clip_range
from secreason.errors import ConfigError
from secreason.modules.zero_std_filter import check_filter_signal
from secreason.optim import optimizer_factory, scheduler_factory

OLD_LOGPROBS = ("recompute", "sampler")
ASYNC_ROLLOUTS = (0, 1)  # rollouts generated this many optimizer steps ahead, overlapping training

# Arguments whose config key is not algorithm.<name>.
WHERE = {"max_completion_length": "sampler.max_tokens", "temperature": "sampler.temperature"}


def named(name: str) -> str:
    return WHERE.get(name, f"algorithm.{name}")


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def number(value: Any, key: str, integer: bool = False, nullable: bool = False) -> None:
    """ConfigError naming `key` unless `value` is an int (integer) or a finite real (bools are neither)."""
    if value is None and nullable:
        return
    ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{key}={value!r}: must be {kind}{' or null' if nullable else ''}")


def policy_loss_fn(cfg: dict | None, clip_eps_low: float, clip_eps_high: float):
    """The `policy_loss` group ({name, clip_eps_low?, clip_eps_high?}) as fn(logp, old_logp, A, mask,
    is_weights=...) with its clip range bound: the group's own, else algorithm.clip_eps_low/high."""
    cfg = dict(cfg or {"name": "clipped"})
    fn = POLICY_LOSSES.get(cfg.get("name", "clipped"))
    low = cfg.get("clip_eps_low", clip_eps_low)
    high = cfg.get("clip_eps_high", clip_eps_high)
    check_clip_range(cfg.get("name", "clipped"), low, high, "policy_loss")
    return functools.partial(fn, clip_eps_low=low, clip_eps_high=high)


def check_settings(s: dict[str, Any]) -> dict[str, Any]:
    # Types first, naming the key (`algorithm.num_generations='abc': must be an integer`), so no
    # comparison below fails on a string. Values are kept as given (`__init__` stores them), so
    # a count must already be an int; an eps or cap may be any real number.
    for name in ("num_generations", "updates_per_batch", "micro_batch_size", "max_completion_length",
                 "async_rollouts"):
        number(s[name], named(name), integer=True)
    for name in ("clip_eps_low", "clip_eps_high", "temperature"):
        number(s[name], named(name))
    for name in ("is_cap", "max_grad_norm"):
        number(s[name], named(name), nullable=True)
    for name in ("filter_zero_std_groups", "share_prompts", "padding_free", "selective_logprobs"):
        if not isinstance(s[name], bool):
            raise ConfigError(f"{named(name)}={s[name]!r}: must be true or false")
    kl = dict(s["kl"] or {})
    number(kl.get("beta", 0.02), "algorithm.kl.beta")
    overlong = dict(s["overlong"] or {"mode": "none"})
    number(overlong.get("buffer", 0), "algorithm.overlong.buffer", integer=True)
    number(overlong.get("penalty", 1.0), "algorithm.overlong.penalty")
    advantage = dict(s["advantage"] or {"name": "group_norm"})
    number(advantage.get("eps", 1e-6), "advantage.eps")
    dynamic = dict(s["dynamic_sampling"] or {})
    max_rounds = dynamic.get("max_rounds", 0)
    number(max_rounds, "algorithm.dynamic_sampling.max_rounds", integer=True)
    require(max_rounds >= 0, "algorithm.dynamic_sampling.max_rounds", max_rounds,
            "must be ≥ 0 (extra prompt batches drawn to refill zero-variance groups; 0 = off)")
    require(s["num_generations"] >= 2, "algorithm.num_generations", s["num_generations"],
            "must be ≥ 2 (advantages are relative to the group)")
    for key in ("updates_per_batch", "micro_batch_size"):
        require(s[key] >= 1, f"algorithm.{key}", s[key], "must be ≥ 1")
    require(0 <= s["clip_eps_low"] < 1, "algorithm.clip_eps_low", s["clip_eps_low"], "must be in [0, 1)")
    require(s["clip_eps_high"] >= 0, "algorithm.clip_eps_high", s["clip_eps_high"], "must be ≥ 0")
    require(s["is_cap"] is None or s["is_cap"] > 0, "algorithm.is_cap", s["is_cap"], "must be > 0 or null")
    require(s["old_logprobs"] in OLD_LOGPROBS, "algorithm.old_logprobs", s["old_logprobs"],
            f"choose one of: {', '.join(OLD_LOGPROBS)}")
    check_filter_signal(s["filter_zero_std_on"])
    require(s["async_rollouts"] in ASYNC_ROLLOUTS, "algorithm.async_rollouts", s["async_rollouts"],
            "must be 0 (on-policy) or 1 (one step off-policy)")
    require(not (s["async_rollouts"] and max_rounds), "algorithm.async_rollouts", s["async_rollouts"],
            "cannot be combined with algorithm.dynamic_sampling.max_rounds > 0 (refill judges rewards "
            "before the batch trains; the rollouts ahead are drawn before that)")
    val = {"temperature": 0.0, "samples": 1, "seed": 0, **dict(s["val"] or {})}
    number(val["temperature"], "algorithm.val.temperature")
    number(val["samples"], "algorithm.val.samples", integer=True)
    number(val["seed"], "algorithm.val.seed", integer=True)
    require(val["temperature"] >= 0, "algorithm.val.temperature", val["temperature"], "must be ≥ 0 (0 = greedy)")
    require(val["samples"] >= 1, "algorithm.val.samples", val["samples"], "must be ≥ 1")
    require(val["samples"] == 1 or val["temperature"] > 0, "algorithm.val.samples", val["samples"],
            "must be 1 when algorithm.val.temperature=0 (greedy completions of a prompt are all the same)")
    beta = float(kl.get("beta", 0.02))
    require(beta >= 0, "algorithm.kl.beta", beta, "must be ≥ 0")
    OVERLONG_MODES.get(overlong.get("mode", "none"))  # an unknown mode fails now, not at step 1
    return {"beta": beta, "kl_fn": KL_ESTIMATORS.get(kl.get("estimator", "k3")), "overlong": overlong,
            "loss_agg": LOSS_AGG.get(s["loss_agg"]), "advantage_fn": ADVANTAGES.get(advantage["name"]),
            "adv_eps": float(advantage.get("eps", 1e-6)), "max_rounds": int(max_rounds), "val": val,
            "policy_loss": policy_loss_fn(s["policy_loss"], s["clip_eps_low"], s["clip_eps_high"]),
            # checked now, built in configure_optimizers
            "make_optimizer": optimizer_factory(**(s["optim"] or {})),
            "make_scheduler": scheduler_factory(**(s["scheduler"] or {}))}
