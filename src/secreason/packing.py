"""Padding-free (varlen) batches: several sequences in one row, kept apart by their position ids.

transformers (≥ 4.53, checked for 5.x by tests/test_packing.py) builds a block-diagonal causal mask
from `position_ids` when the forward gets no `attention_mask` (masking_utils
`find_packed_sequence_indices`, for sdpa, eager and flex), and flash-attention-2 runs its varlen
kernel from them: a sequence starts wherever the position ids do not count up by one. This is what
TRL's `padding_free` and transformers' `DataCollatorWithFlattening` rely on. Passing an
`attention_mask` with such a row, or a KV cache (`use_cache` defaults to True, in training too),
switches that off: the examples then attend to each other. Callers pass `use_cache=False`.

Used by SFT packing (secreason.data.sft.collate) and by GRPO's padding-free training half
(secreason.modules.logprobs, `algorithm.padding_free`).
"""
from __future__ import annotations

import torch


def restarting_positions(lengths: list[int] | torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 for each sequence: lengths [K] → [Σ lengths] (0 … L_k − 1 each)."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    starts = torch.cumsum(lengths, 0) - lengths
    return torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths)


def flatten_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The real tokens of each row, end to end, as one padding-free row.

    ids/mask [N, W] (any padding side; mask 1 = real token) → (input_ids [1, Σ real],
    position_ids [1, Σ real]) with positions restarting at every row. Rows keep their order, and
    inside a row the tokens keep theirs.
    """
    keep = mask.bool()
    flat = ids[keep].unsqueeze(0)
    return flat, restarting_positions(keep.sum(1)).to(ids.device).unsqueeze(0)


def supports_padding_free(model: torch.nn.Module) -> bool:
    """True when the model's attention keeps packed sequences apart from position ids alone: the
    mask-building implementations of transformers (sdpa, eager, flex) and flash-attention's varlen
    kernels. Models outside transformers, or with another attention, get padded batches."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    return impl in {"sdpa", "eager", "flex_attention"} or (isinstance(impl, str) and "flash" in impl)
