"""What happens to completions cut at the sampler's max_tokens, chosen by name from OVERLONG_MODES.

Every mode is `fn(rewards [N], mask [N, T], truncated [N], max_len, buffer, penalty) -> (rewards, mask)`:

    none          unchanged
    mask          truncated completions leave the loss (their mask rows zeroed)
    soft_penalty  DAPO: reward −= penalty · (len − (max_len − buffer)) / buffer for len in the last
                  `buffer` tokens (≤ penalty at max_len)
"""
from __future__ import annotations

from typing import Callable

import torch

from .registry import Registry

OverlongFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int, float], tuple[torch.Tensor, torch.Tensor]]
OVERLONG_MODES: Registry[OverlongFn] = Registry("overlong mode", key="algorithm.overlong.mode")


@OVERLONG_MODES.register("none")
def keep(rewards: torch.Tensor, mask: torch.Tensor, truncated: torch.Tensor, max_len: int, buffer: int,
         penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    return rewards, mask


@OVERLONG_MODES.register("mask")
def mask_truncated(rewards: torch.Tensor, mask: torch.Tensor, truncated: torch.Tensor, max_len: int, buffer: int,
                   penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    return rewards, mask * (~truncated).unsqueeze(-1).to(mask.dtype)


@OVERLONG_MODES.register("soft_penalty")
def soft_penalty(rewards: torch.Tensor, mask: torch.Tensor, truncated: torch.Tensor, max_len: int, buffer: int,
                 penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = mask.sum(-1).to(rewards.dtype)
    over = (lengths - (max_len - buffer)).clamp(min=0) / max(buffer, 1)
    return rewards - penalty * over.clamp(max=1.0), mask


def overlong_adjust(rewards: torch.Tensor, mask: torch.Tensor, truncated: torch.Tensor, mode: str,
                    max_len: int, buffer: int = 0, penalty: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards [N], mask [N, T], truncated [N] → adjusted (rewards, mask) under the mode `mode`."""
    return OVERLONG_MODES.get(mode)(rewards, mask, truncated, max_len, buffer, penalty)
