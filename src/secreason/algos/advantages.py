"""Group-relative advantage estimators (one scalar per completion), chosen by name from ADVANTAGES.

Every estimator is `fn(rewards [N] float, group_index [N] long, eps=1e-6) -> advantages [N]`, where
rows sharing a `group_index` value are the completions of one prompt. Groups may have different
sizes and their rows may appear in any order.

Rules shared by all estimators (tested in tests/test_algos.py):

* NaN reward = missing. The row is left out of its group's statistics (count, mean, std) and
  gets advantage exactly 0, so one failed reward function does not poison the whole group.
* Std floor. Let std_g be the *unbiased* standard deviation (torch.std's default, as in the GRPO
  paper and TRL) of the valid rewards of group g; a group with fewer than 2 valid rewards has
  std_g = 0. If std_g < eps the group carries no learning signal and every row of it gets
  advantage exactly 0, for every estimator. This replaces the usual `/(std + eps)`: with rewards
  equal up to float rounding, `(r - mean)/(std + eps)` divides rounding noise by a tiny number
  (NeMo-RL shipped advantages of ~7,400 that way). `eps` is absolute, on the reward scale.
  `zero_std_groups` returns exactly these rows, for dynamic sampling and `rollout/zero_std_frac`.
* Statistics are computed in float64 and the result is cast back to `rewards.dtype`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .registry import Registry

AdvantageFn = Callable[..., torch.Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator", key="advantage")


@dataclass(frozen=True)
class _GroupStats:
    """Per-row views of the statistics of each row's group (all [N], float64 / bool)."""

    r: torch.Tensor  # rewards, NaN replaced by 0
    valid: torch.Tensor  # reward is not NaN
    count: torch.Tensor  # number of valid rewards in the row's group
    total: torch.Tensor  # sum of valid rewards in the row's group
    mean: torch.Tensor  # total / count (0 for an all-NaN group)
    std: torch.Tensor  # unbiased std of the valid rewards (0 when count < 2)


def _group_stats(rewards: torch.Tensor, group_index: torch.Tensor) -> _GroupStats:
    if rewards.dim() != 1 or group_index.shape != rewards.shape:
        raise ValueError(
            f"rewards must be [N] and group_index [N]; got {tuple(rewards.shape)} and "
            f"{tuple(group_index.shape)}"
        )
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a float tensor, got {rewards.dtype}")
    r = rewards.detach().to(torch.float64)
    valid = ~torch.isnan(r)
    r = torch.where(valid, r, torch.zeros_like(r))
    # Arbitrary (sparse, unordered) group ids → 0…G-1, so per-group sums are one index_add.
    _, inv = torch.unique(group_index, return_inverse=True)
    num_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    w = valid.to(torch.float64)

    def per_group_sum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(0, inv, x)

    count_g = per_group_sum(w)
    total_g = per_group_sum(r)
    mean_g = total_g / count_g.clamp(min=1.0)
    # Two-pass variance (squares of deviations), not E[r²]−E[r]², which cancels catastrophically.
    dev = (r - mean_g[inv]) * w
    var_g = per_group_sum(dev * dev) / (count_g - 1.0).clamp(min=1.0)
    std_g = torch.where(count_g >= 2, var_g.sqrt(), torch.zeros_like(var_g))
    return _GroupStats(r=r, valid=valid, count=count_g[inv], total=total_g[inv],
                       mean=mean_g[inv], std=std_g[inv])


def _finish(adv: torch.Tensor, st: _GroupStats, eps: float, like: torch.Tensor) -> torch.Tensor:
    """Zero the rows with a NaN reward or in a group under the std floor; cast to `like.dtype`."""
    keep = st.valid & (st.std >= eps)
    return torch.where(keep, adv, torch.zeros_like(adv)).to(like.dtype)


def zero_std_groups(rewards: torch.Tensor, group_index: torch.Tensor,
                    eps: float = 1e-6) -> torch.Tensor:
    """Rows whose group has std_g < eps (all valid rewards equal, or < 2 valid rewards).

    rewards [N] float, group_index [N] long -> BoolTensor [N]. The flag is per group: a NaN-reward
    row in a group with spread is False (its own advantage is 0 by the NaN rule, not this one).
    These are exactly the groups every estimator gives advantage 0 (see the module docstring).
    """
    return _group_stats(rewards, group_index).std < eps


@ADVANTAGES.register("group_norm")
def group_norm(rewards: torch.Tensor, group_index: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: A_i = (r_i - mean_g) / std_g, std_g unbiased; 0 if std_g < eps or r_i is NaN.

    rewards [N], group_index [N] -> advantages [N].
    """
    st = _group_stats(rewards, group_index)
    adv = (st.r - st.mean) / st.std.clamp(min=eps)  # clamp only guards the rows _finish zeroes
    return _finish(adv, st, eps, rewards)


@ADVANTAGES.register("group_mean")
def group_mean(rewards: torch.Tensor, group_index: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO: A_i = r_i - mean_g (no std division); 0 if std_g < eps or r_i is NaN.

    rewards [N], group_index [N] -> advantages [N].
    """
    st = _group_stats(rewards, group_index)
    return _finish(st.r - st.mean, st, eps, rewards)


@ADVANTAGES.register("rloo")
def rloo(rewards: torch.Tensor, group_index: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RLOO: A_i = r_i - (Σ_{j≠i} r_j) / (n_g - 1) = n_g/(n_g-1) · (r_i - mean_g).

    n_g counts the valid rewards of the group; 0 if n_g < 2, std_g < eps or r_i is NaN.
    rewards [N], group_index [N] -> advantages [N].
    """
    st = _group_stats(rewards, group_index)
    others_mean = (st.total - st.r) / (st.count - 1.0).clamp(min=1.0)
    return _finish(st.r - others_mean, st, eps, rewards)
