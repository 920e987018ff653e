"""Per-token estimators of KL(π ‖ π_ref) from tokens sampled by π, chosen by name from KL_ESTIMATORS.

Every estimator is `fn(logp [N, T], ref_logp [N, T]) -> kl [N, T]` (no reduction: the caller
masks and aggregates with loss_agg like any other per-token loss). With x ~ π and
d = ref_logp - logp = log(π_ref(x)/π(x)) (Schulman, "Approximating KL Divergence", 2020):

    k1 = -d            = logp - ref_logp            unbiased, high variance, can be negative
    k2 = d² / 2                                      biased, low variance, ≥ 0
    k3 = exp(d) - d - 1                              unbiased, low variance, ≥ 0 (GRPO paper)

Gradients flow through `logp` (and `ref_logp` if the caller did not detach it).
"""
from __future__ import annotations

from typing import Callable

import torch

from .registry import Registry

KLFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator", key="algorithm.kl.estimator")

# exp(20) ≈ 4.9e8 is still a loud signal, while an unclamped exp of a fp16/bf16 log-ratio
# (or of a padding position holding garbage) overflows to inf and turns the loss into NaN.
K3_LOG_RATIO_CLAMP = 20.0


def _check(logp: torch.Tensor, ref_logp: torch.Tensor) -> None:
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} differ in shape")


@KL_ESTIMATORS.register("k1")
def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = logp - ref_logp. logp, ref_logp [N, T] -> kl [N, T]."""
    _check(logp, ref_logp)
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 · (logp - ref_logp)². logp, ref_logp [N, T] -> kl [N, T]."""
    _check(logp, ref_logp)
    return 0.5 * (logp - ref_logp).square()


@KL_ESTIMATORS.register("k3")
def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(d) - d - 1 with d = clamp(ref_logp - logp, -20, 20). [N, T] -> kl [N, T] (≥ fp32).

    The clamp (K3_LOG_RATIO_CLAMP) keeps exp finite; beyond it the value is that of d = ±20 and
    the gradient is 0, which only happens on tokens whose probability ratio is > 4.8e8.
    """
    _check(logp, ref_logp)
    # At least float32: exp(20) overflows fp16 and bf16 loses the small k3 values near d = 0.
    dtype = torch.promote_types(torch.promote_types(logp.dtype, ref_logp.dtype), torch.float32)
    d = (ref_logp.to(dtype) - logp.to(dtype)).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1.0
