"""What every generator shares: sampling settings, per-call seeds, and the Rollout assembly.

A generator turns B prompts (token ids) into B·n completions (`generate`) and, if it keeps its own
copy of the weights, takes the policy's new ones (`sync_weights`). Each call's seed is derived
from (seed, rank, call count) (`call_seed`); the count is part of `generator_state()`, which the
sampler callbacks put in the checkpoint, so a resumed run draws the same completions as an
uninterrupted one.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from secreason.data.chat import end_of_turn_id
from secreason.errors import ConfigError
from secreason.rollout import Rollout, SamplingConfig


class Generator:
    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 64, seed: int = 0) -> None:
        for key, value, ok, rule in (
                ("temperature", temperature, temperature >= 0, "must be ≥ 0"),
                ("top_p", top_p, 0 < top_p <= 1, "must be in (0, 1]"),
                ("max_tokens", max_tokens, max_tokens >= 1, "must be ≥ 1")):
            if not ok:
                raise ConfigError(f"sampler.{key}={value!r}: {rule}")
        self.temperature, self.top_p, self.max_tokens = float(temperature), float(top_p), int(max_tokens)
        self.seed = int(seed)
        self.calls = 0
        self.rank = 0  # the process's global rank (the sampler callbacks set it in `setup`)
        self.model: Any = None
        self.tokenizer: Any = None
        self.stop_ids: list[int] = []  # what completions end at (`stop_token_ids`), set by `bind`

    # -- what a generator implements -------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], n: int) -> Rollout:
        raise NotImplementedError

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the next `generate` sample from `model`'s current weights."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what the generator holds beyond the policy (an engine); safe to call twice."""

    # -- shared ----------------------------------------------------------------------------------
    def bind(self, model: torch.nn.Module, tokenizer: Any) -> "Generator":
        """Attach the policy and its tokenizer (the callbacks do it in `setup`)."""
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = stop_token_ids(tokenizer, model)
        return self

    def sampling(self, n: int) -> SamplingConfig:
        """This call's settings; the seed moves with every call and differs between ranks."""
        return SamplingConfig(n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              seed=call_seed(self.seed, self.rank, self.calls))

    def generator_state(self) -> dict:
        return {"calls": self.calls, "seed": self.seed}

    def load_generator_state(self, state: dict) -> None:
        self.calls, self.seed = int(state["calls"]), int(state["seed"])


# Odd 64-bit constant (2^64 / golden ratio): rank r's seeds differ from rank 0's in high bits that
# seed · 1_000_003 + calls never reaches, so no two (rank, call) pairs of a run share a seed.
_RANK_MIX = 0x9E3779B97F4A7C15


def call_seed(seed: int, rank: int, calls: int) -> int:
    """The sampling seed of call number `calls` on global rank `rank`.

    Rank 0 keeps seed · 1_000_003 + calls, the single-process seed, so one-process runs and their
    checkpoints draw exactly what they drew before; rank r > 0 mixes its rank in, so ranks never
    sample the same completions from the same random stream. Non-negative, < 2^63.
    """
    base = seed * 1_000_003 + calls
    return base if rank == 0 else (base ^ (rank * _RANK_MIX)) & (2 ** 63 - 1)


def stop_token_ids(tokenizer: Any, model: torch.nn.Module | None) -> list[int]:
    """The ids a completion ends at: the tokenizer's eos, the model's generation-config eos, and
    the chat template's end-of-turn token (a base model's eos is `<|end_of_text|>`, but its
    fine-tuned turns end with the template's `<|eot_id|>`)."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    configured = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = []
    elif not isinstance(configured, (list, tuple)):
        configured = [configured]
    return sorted({tokenizer.eos_token_id, end_of_turn_id(tokenizer), *(int(i) for i in configured)} - {None})


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, P] ids and mask, padded on the left so every prompt ends at the same column."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def completions_to_rollout(prompt_ids: list[list[int]], n: int, completions: list[list[int]],
                           logprobs: list[list[float]], eos_id: int | Iterable[int], pad_id: int, max_tokens: int,
                           tokenizer: Any) -> Rollout:
    """Assemble a Rollout from per-completion token lists (each cut after its first eos).

    `eos_id`: the stop id, or all of them (`stop_token_ids`): a completion ending in one of them
    at `max_tokens` is finished, not truncated."""
    stops = {eos_id} if isinstance(eos_id, int) else set(eos_id)
    rows = [p for p in prompt_ids for _ in range(n)]
    p_ids, p_mask = left_pad(rows, pad_id)
    width = max(1, max(len(c) for c in completions))
    c_ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    c_mask = torch.zeros((len(completions), width), dtype=torch.long)
    c_lp = torch.zeros((len(completions), width), dtype=torch.float32)
    truncated = torch.zeros(len(completions), dtype=torch.bool)
    for i, (toks, lps) in enumerate(zip(completions, logprobs)):
        c_ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        c_mask[i, : len(toks)] = 1
        c_lp[i, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
        truncated[i] = (not toks or toks[-1] not in stops) and len(toks) >= max_tokens
    texts = tokenizer.batch_decode(c_ids.masked_fill(c_mask == 0, pad_id).tolist(), skip_special_tokens=False)
    pad_tok = tokenizer.convert_ids_to_tokens(pad_id)
    texts = [t.replace(pad_tok, "") for t in texts]
    group = torch.arange(len(prompt_ids)).repeat_interleave(n)
    return Rollout(p_ids, p_mask, c_ids, c_mask, c_lp, group, truncated, texts)


def cut_at_eos(tokens: list[int], eos_ids: set[int]) -> int:
    """Length of `tokens` up to and including the first eos."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return i + 1
    return len(tokens)
