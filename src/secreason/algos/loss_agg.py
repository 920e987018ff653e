"""Per-token loss [n, T] → scalar, chosen by name from LOSS_AGG, with step-global normalisers.

An optimizer step usually sums the gradients of several micro-batches (gradient accumulation)
and, under data parallelism, of several ranks. If each micro-batch divides by its *own* token
or sample count, the step's loss is a mean of means that weights tokens differently depending on
how the batch happened to be split (the bug TRL #5619 and verl #5625 shipped). Here every
normaliser comes from a `StepNorm` built over the whole step, and each aggregation returns this
micro-batch's *share*:

    Σ over the step's micro-batches of fn(per_token_b, mask_b, norm) == fn(per_token, mask, norm)

so calling `loss.backward()` on each share accumulates exactly the gradient of the full-step loss.

Data parallelism: `StepNorm.all_reduce` sums the counts over ranks. DDP (and Lightning's DDP
strategy) *averages* gradients over ranks, so to get the gradient of the global-step loss the
caller multiplies each rank's share by world_size before backward. Likewise Lightning's
automatic optimization divides the returned loss by `accumulate_grad_batches`; either multiply
the share back by it or accumulate in manual optimization.

Every fn is `fn(per_token [n, T], mask [n, T], norm: StepNorm) -> scalar`; `mask` is bool or
0/1 (nonzero = real completion token). Padding positions are selected out with torch.where, not
multiplied by 0, so a NaN/inf on padding cannot leak into the sum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .registry import Registry

LossAggFn = Callable[[torch.Tensor, torch.Tensor, "StepNorm"], torch.Tensor]
LOSS_AGG: Registry[LossAggFn] = Registry("loss aggregation", key="loss_agg")


@dataclass(frozen=True)
class StepNorm:
    """Normalisers of one optimizer step (all micro-batches; all ranks after `all_reduce`).

    num_samples  completions in the step (zero-token ones included: they count, contributing 0)
    num_tokens   real completion tokens in the step (Σ of the masks)
    max_len      the max-completion-length setting (Dr. GRPO's constant normaliser)
    """

    num_samples: int
    num_tokens: int
    max_len: int

    def __post_init__(self) -> None:
        if self.num_samples < 0 or self.num_tokens < 0 or self.max_len < 1:
            raise ValueError(f"bad StepNorm {self}: counts must be >= 0 and max_len >= 1")

    @classmethod
    def from_masks(cls, masks: Sequence[torch.Tensor], max_len: int) -> "StepNorm":
        """Counts over all micro-batch masks of the step, each [n_i, T_i] (T_i may differ).

        Raises ValueError if a row has more than max_len tokens: the Dr. GRPO normaliser
        would then be wrong, and it means max_len does not match the sampler's setting.
        """
        num_samples = num_tokens = 0
        for i, m in enumerate(masks):
            if m.dim() != 2:
                raise ValueError(f"mask {i} must be [n, T]; got {tuple(m.shape)}")
            lengths = (m != 0).sum(-1)
            if lengths.numel() and int(lengths.max()) > max_len:
                raise ValueError(f"mask {i} has a row of {int(lengths.max())} tokens > max_len={max_len}")
            num_samples += m.shape[0]
            num_tokens += int(lengths.sum())
        return cls(num_samples=num_samples, num_tokens=num_tokens, max_len=int(max_len))

    @classmethod
    def combine(cls, norms: Sequence["StepNorm"]) -> "StepNorm":
        """The StepNorm of the union of several parts (e.g. ranks): counts add, max_len must agree."""
        if not norms:
            raise ValueError("StepNorm.combine needs at least one StepNorm")
        if len({n.max_len for n in norms}) != 1:
            raise ValueError(f"StepNorm.combine: max_len differs: {[n.max_len for n in norms]}")
        return cls(num_samples=sum(n.num_samples for n in norms),
                   num_tokens=sum(n.num_tokens for n in norms), max_len=norms[0].max_len)

    def all_reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor],
                   device: torch.device | str | None = None) -> "StepNorm":
        """The step-global StepNorm across ranks.

        `reduce_sum` sums a tensor over ranks, e.g.
        `lambda t: trainer.strategy.reduce(t, reduce_op="sum")` in Lightning; `device` is where
        the count tensor is made (the backend's device: cuda for NCCL).
        """
        counts = torch.tensor([self.num_samples, self.num_tokens], dtype=torch.long, device=device)
        total = reduce_sum(counts)
        return StepNorm(num_samples=int(total[0]), num_tokens=int(total[1]), max_len=self.max_len)


def _masked(per_token: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if per_token.shape != mask.shape or per_token.dim() != 2:
        raise ValueError(f"per_token and mask must both be [n, T]; got {tuple(per_token.shape)} "
                         f"and {tuple(mask.shape)}")
    m = mask != 0
    return torch.where(m, per_token, torch.zeros_like(per_token)), m


@LOSS_AGG.register("sample_mean")
def sample_mean(per_token: torch.Tensor, mask: torch.Tensor, norm: StepNorm) -> torch.Tensor:
    """GRPO (original, default): mean over tokens within each sample, then mean over samples.

    share = Σ_i (Σ_t l_it·m_it / Σ_t m_it) / norm.num_samples; a sample with Σ_t m_it = 0 adds 0.
    per_token [n, T], mask [n, T] -> scalar.
    """
    l, m = _masked(per_token, mask)
    per_sample = l.sum(-1) / m.sum(-1).clamp(min=1).to(l.dtype)
    return per_sample.sum() / max(norm.num_samples, 1)


@LOSS_AGG.register("token_mean")
def token_mean(per_token: torch.Tensor, mask: torch.Tensor, norm: StepNorm) -> torch.Tensor:
    """DAPO: every token of the step weighs the same. share = Σ l·m / norm.num_tokens.

    per_token [n, T], mask [n, T] -> scalar.
    """
    l, _ = _masked(per_token, mask)
    return l.sum() / max(norm.num_tokens, 1)


@LOSS_AGG.register("seq_sum")
def seq_sum(per_token: torch.Tensor, mask: torch.Tensor, norm: StepNorm) -> torch.Tensor:
    """Sum over each sample's tokens, mean over samples. share = Σ l·m / norm.num_samples.

    per_token [n, T], mask [n, T] -> scalar.
    """
    l, _ = _masked(per_token, mask)
    return l.sum() / max(norm.num_samples, 1)


@LOSS_AGG.register("seq_sum_norm")
def seq_sum_norm(per_token: torch.Tensor, mask: torch.Tensor, norm: StepNorm) -> torch.Tensor:
    """Dr. GRPO: a constant normaliser, free of length bias.

    share = Σ l·m / (norm.num_samples · norm.max_len). per_token [n, T], mask [n, T] -> scalar.
    """
    l, _ = _masked(per_token, mask)
    return l.sum() / (max(norm.num_samples, 1) * norm.max_len)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` [n, T] over positions where mask [n, T] != 0 (0 when there are none).

    For logging micro-batch metrics (clip_frac, mean KL, mean ratio) only: it normalises by this
    micro-batch's own token count, which is exactly what a loss must not do (see module docstring).
    """
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape")
    m = mask != 0
    v = values if values.is_floating_point() else values.to(torch.float32)  # bool flags → fractions
    v = torch.where(m, v, torch.zeros_like(v))
    return v.sum() / m.sum().clamp(min=1).to(v.dtype)
