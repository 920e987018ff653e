"""Which groups `filter_zero_std_groups` drops: those whose *correctness* has zero variance, by default.

With a format penalty in the total, a group whose answers are all wrong but whose penalties differ
has a total with spread, so judging on the total would keep it and train on the penalty gaps alone
("phantom" gradients, verl-recipe #125). Peers (DAPO, verl) filter on the binary verifier score;
`algorithm.filter_zero_std_on=total` keeps the old behaviour. Both fractions are logged:

    rollout/zero_std_frac              rows in groups whose total has zero variance
    rollout/zero_std_correctness_frac  rows in groups whose correctness has zero variance
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from secreason.algos import zero_std_groups

FILTER_SIGNALS = ("correctness", "total")  # algorithm.filter_zero_std_on


def zero_std_rows(total: torch.Tensor, correctness: Sequence[float], group_index: torch.Tensor, on: str,
                  eps: float) -> tuple[torch.Tensor, dict[str, float]]:
    """bool [N]: rows in a zero-variance group of the `on` signal, and both fractions as metrics.

    `total` [N] is the training reward (after overlong shaping), `correctness` [N] the verifier's score."""
    by_total = zero_std_groups(total, group_index, eps=eps)
    by_correctness = zero_std_groups(torch.tensor(list(correctness), dtype=torch.float32), group_index, eps=eps)
    metrics = {"rollout/zero_std_frac": by_total.float().mean().item(),
               "rollout/zero_std_correctness_frac": by_correctness.float().mean().item()}
    return (by_correctness if on == "correctness" else by_total), metrics


def check_filter_signal(value: Any) -> None:
    from secreason.errors import ConfigError

    if value not in FILTER_SIGNALS:
        raise ConfigError(f"algorithm.filter_zero_std_on={value!r}: choose one of: {', '.join(FILTER_SIGNALS)}")
