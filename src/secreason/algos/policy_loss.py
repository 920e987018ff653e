"""Per-token policy losses, picked by name from POLICY_LOSSES, and truncated IS weights.

    POLICY_LOSSES  clipped | gspo | cispo
        fn(logp [N,T], old_logp [N,T], advantages [N], mask [N,T], clip_eps_low, clip_eps_high,
           is_weights [N,T] | None) -> (per_token [N,T], stats)

Nothing here reduces over the step: every function returns [N, T] tensors and the caller masks and
aggregates them with a `loss_agg` function, so the normaliser is chosen (and made step-global)
in one place (gspo's sequence mean over a row's own tokens is part of its ratio, not a normaliser).
All arithmetic is done in at least float32, whatever the dtype of the log-probs.

Clip ranges: `clipped` reads algorithm.clip_eps_low/high (a token ratio); `gspo` and `cispo` carry
their own in conf/policy_loss/<name>.yaml, because their ratios live on other scales (GSPO's
sequence ratio moves ~1e-3 a step; CISPO only caps its weight, far above 1).
"""
from __future__ import annotations

from typing import Callable

import torch

from .registry import Registry

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss", key="policy_loss")

# Log-ratios are clamped to ±20 before exp: exp(20) ≈ 4.9e8 already saturates every clip and cap,
# while an unclamped bf16/fp16 mismatch (or garbage on a padding position) can overflow to inf,
# and inf · 0 in the masked sum is NaN.
LOG_RATIO_CLAMP = 20.0


def _float(*xs: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for x in xs:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy-gradient loss per token (PPO; GRPO; DAPO "clip-higher" when high > low).

    Shapes: logp [N, T] (current policy, carries the gradient), old_logp [N, T] (policy that the
    advantages were computed for, detached here), advantages [N] (one per completion, broadcast
    over its tokens, detached here), is_weights [N, T] or None (detached here).

        ratio = exp(clamp(logp - old_logp, -20, 20))
        loss  = -min(ratio · A, clip(ratio, 1 - clip_eps_low, 1 + clip_eps_high) · A) · w

    with w = is_weights (e.g. `truncated_is_weights`) or 1.

    Returns (per_token_loss [N, T], stats). The stats are per token so the caller reduces them
    with the same mask as the loss (e.g. `loss_agg.masked_mean(stats["clipped"], mask)` for
    clip_frac); padding positions hold meaningless values. All stats are detached:
        ratio        [N, T] float  the probability ratio
        clipped_low  [N, T] bool   ratio < 1 - low and A < 0: the clip bound is active, no gradient
        clipped_high [N, T] bool   ratio > 1 + high and A > 0: the clip bound is active, no gradient
        clipped      [N, T] bool   clipped_low | clipped_high
    """
    if logp.dim() != 2 or old_logp.shape != logp.shape:
        raise ValueError(f"logp and old_logp must both be [N, T]; got {tuple(logp.shape)} "
                         f"and {tuple(old_logp.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [N] = [{logp.shape[0]}]; got {tuple(advantages.shape)}")
    if is_weights is not None and is_weights.shape != logp.shape:
        raise ValueError(f"is_weights must be [N, T] = {tuple(logp.shape)}; got {tuple(is_weights.shape)}")
    if not (0.0 <= clip_eps_low < 1.0) or clip_eps_high < 0.0:
        raise ValueError(f"need 0 <= clip_eps_low < 1 and clip_eps_high >= 0; got "
                         f"{clip_eps_low}, {clip_eps_high}")

    dtype = _float(logp, old_logp, advantages)
    log_ratio = (logp.to(dtype) - old_logp.detach().to(dtype)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(dtype).unsqueeze(-1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    if is_weights is not None:
        loss = loss * is_weights.detach().to(dtype)

    return loss, _clip_stats(ratio, adv, 1.0 - clip_eps_low, 1.0 + clip_eps_high)


def _clip_stats(ratio: torch.Tensor, adv: torch.Tensor | None, low_bound: float | None,
                high_bound: float | None) -> dict[str, torch.Tensor]:
    """Which bound is active per position; with `adv` only where it removes the gradient (the
    surrogate's min picks the clipped branch), without it wherever the ratio is beyond a bound."""
    r = ratio.detach()
    none = torch.zeros_like(r, dtype=torch.bool)
    low = none if low_bound is None else (r < low_bound) & (adv < 0 if adv is not None else True)
    high = none if high_bound is None else (r > high_bound) & (adv > 0 if adv is not None else True)
    return {"ratio": r, "clipped_low": low, "clipped_high": high, "clipped": low | high}


def _check_shapes(logp, old_logp, advantages, mask, is_weights) -> None:
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(f"logp, old_logp and mask must all be [N, T]; got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)} and {tuple(mask.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [N] = [{logp.shape[0]}]; got {tuple(advantages.shape)}")
    if is_weights is not None and is_weights.shape != logp.shape:
        raise ValueError(f"is_weights must be [N, T] = {tuple(logp.shape)}; got {tuple(is_weights.shape)}")


@POLICY_LOSSES.register("clipped")
def clipped(logp, old_logp, advantages, mask, clip_eps_low=0.2, clip_eps_high=0.2, is_weights=None):
    """PPO/GRPO/DAPO token-level clipped surrogate (`clipped_surrogate`); `mask` [N, T] is unused
    (padding is selected out by loss_agg)."""
    _check_shapes(logp, old_logp, advantages, mask, is_weights)
    return clipped_surrogate(logp, old_logp, advantages, clip_eps_low, clip_eps_high, is_weights)


@POLICY_LOSSES.register("gspo")
def gspo(logp, old_logp, advantages, mask, clip_eps_low=3e-4, clip_eps_high=4e-4, is_weights=None):
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071, eq. 5-7):
    one importance ratio per sequence, length-normalised, clipped per sequence.

    Shapes: logp, old_logp, mask [N, T]; advantages [N]; is_weights [N, T] or None.

        s_i  = exp( Σ_t m_it (logp_it - old_it) / Σ_t m_it )        (the geometric mean token ratio)
        L_i  = -min(s_i · A_i, clip(s_i, 1 - clip_eps_low, 1 + clip_eps_high) · A_i)
        per_token[i, t] = L_i · w_it                                  (L_i on every token of row i)

    ∂L_i/∂logp_it = -s_i · A_i / |y_i| where unclipped, 0 where the sequence is clipped. The paper's
    objective is the mean of L_i over the group's sequences: loss_agg=sample_mean gives exactly
    that (the mean over a row's tokens of a constant L_i is L_i); token_mean weights each sequence
    by its length (a deviation the user picks). Defaults 3e-4 / 4e-4 are the paper's ranges (§5.1).
    Deviations: `is_weights` (TIS for sampler mismatch, not in the paper) scale L_i per token,
    i.e. a sequence is weighted by its mean token weight under sample_mean; the log-ratio is
    clamped to ±20 before exp, like the token losses. A row with no tokens gets s_i = 1.
    Stats as `clipped_surrogate`'s, per sequence broadcast to its tokens: ratio = s_i, clipped.
    """
    _check_shapes(logp, old_logp, advantages, mask, is_weights)
    dtype = _float(logp, old_logp, advantages)
    m = mask != 0
    log_ratio = torch.where(m, logp.to(dtype) - old_logp.detach().to(dtype), torch.zeros((), dtype=dtype))
    seq_log_ratio = log_ratio.sum(-1) / m.sum(-1).clamp(min=1).to(dtype)
    s = torch.exp(seq_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [N]
    adv = advantages.detach().to(dtype)
    seq_loss = -torch.minimum(s * adv, s.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high) * adv)
    loss = seq_loss.unsqueeze(-1).expand_as(log_ratio)
    if is_weights is not None:
        loss = loss * is_weights.detach().to(dtype)
    stats = _clip_stats(s.unsqueeze(-1).expand_as(log_ratio), adv.unsqueeze(-1), 1.0 - clip_eps_low,
                        1.0 + clip_eps_high)
    return loss, stats


@POLICY_LOSSES.register("cispo")
def cispo(logp, old_logp, advantages, mask, clip_eps_low=None, clip_eps_high=5.0, is_weights=None):
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4-5): REINFORCE with a clipped, stop-gradient
    importance weight, so no token ever loses its gradient (PPO's clip zeroes it).

    Shapes: logp, old_logp, mask [N, T]; advantages [N]; is_weights [N, T] or None.

        r_it = exp(clamp(logp_it - old_it, ±20));   r̂_it = clip(r_it, 1 - clip_eps_low, 1 + clip_eps_high)
        per_token[i, t] = -sg(r̂_it) · A_i · logp_it · w_it

    ∂/∂logp_it = -r̂_it · A_i · w_it, whatever the clip. The value is not the surrogate's (it is
    -r̂·A·logp, so `train/loss` under cispo reads differently from clipped's); only its gradient
    matters. The paper sets no lower bound (clip_eps_low "large"; null here) and tunes only the
    upper one without stating it; 5.0 follows SkyRL's CISPO example. The paper aggregates with
    the token mean (loss_agg=token_mean); the loss_agg group decides here. Deviation: TIS weights
    multiply the token terms, and `clipped` in the stats marks tokens whose weight was capped
    (they keep their gradient), for `train/clip_frac`.
    """
    _check_shapes(logp, old_logp, advantages, mask, is_weights)
    dtype = _float(logp, old_logp, advantages)
    lp = logp.to(dtype)
    ratio = torch.exp((lp.detach() - old_logp.detach().to(dtype)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    low_bound = None if clip_eps_low is None else 1.0 - clip_eps_low
    high_bound = None if clip_eps_high is None else 1.0 + clip_eps_high
    weight = ratio.clamp(min=low_bound, max=high_bound)
    adv = advantages.detach().to(dtype).unsqueeze(-1)
    loss = -weight * adv * lp
    if is_weights is not None:
        loss = loss * is_weights.detach().to(dtype)
    return loss, _clip_stats(ratio, None, low_bound, high_bound)


def check_clip_range(name: str, low: float | None, high: float | None, key: str) -> None:
    """ConfigError naming `key` (e.g. `policy_loss`) unless (low, high) suits policy loss `name`:
    0 <= low < 1 and high >= 0; cispo also takes null for either (no bound) and low = 1."""
    from secreason.errors import ConfigError

    nullable = name == "cispo"
    for side, value in (("clip_eps_low", low), ("clip_eps_high", high)):
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value:
            raise ConfigError(f"{key}.{side}={value!r}: must be a number{' or null' if nullable else ''}")
    if low is not None and not (0.0 <= low <= 1.0 if nullable else 0.0 <= low < 1.0):
        raise ConfigError(f"{key}.clip_eps_low={low!r}: must be in [0, 1{']' if nullable else ')'}")
    if high is not None and high < 0:
        raise ConfigError(f"{key}.clip_eps_high={high!r}: must be ≥ 0")


def truncated_is_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor,
                         cap: float | None) -> torch.Tensor:
    """Truncated importance sampling (TIS) weights for the sampler/trainer mismatch.

    old_logp [N, T] (trainer's log-probs of the sampled tokens under the sampling-time weights),
    sampler_logp [N, T] (what the sampler, e.g. vLLM, reported) -> weights [N, T], detached:

        w = min(exp(clamp(old_logp - sampler_logp, -20, 20)), cap)      (w = 1 when cap is None)

    The tokens were drawn from the sampler's distribution, not the trainer's, so each token's
    gradient is reweighted by π_old/π_sampler; the cap bounds the variance that weight adds.
    Padding positions (both log-probs 0) get weight 1.
    """
    if old_logp.shape != sampler_logp.shape:
        raise ValueError(f"old_logp {tuple(old_logp.shape)} and sampler_logp "
                         f"{tuple(sampler_logp.shape)} differ in shape")
    dtype = _float(old_logp, sampler_logp)
    if cap is None:
        return torch.ones(old_logp.shape, dtype=dtype, device=old_logp.device)
    if not cap > 0:
        raise ValueError(f"TIS cap must be > 0 (or None to disable); got {cap}")
    log_w = (old_logp.detach().to(dtype) - sampler_logp.detach().to(dtype))
    return torch.exp(log_w.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).clamp(max=float(cap))
