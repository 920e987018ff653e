"""The in-loop sampler interface: a Lightning Callback that fills each batch with a Rollout.

Before a training batch runs, `on_train_batch_start` turns the batch's prompts into n completions
each (`batch["rollout"]`); after optimizer steps `on_train_batch_end` pushes the new weights into
the engine (`sync_every` steps apart). Samplers differ only in `generate` and `sync_weights`:
`hf_sampler.HFSampler` generates with the live policy, `vllm_sampler.VLLMSampler` with a colocated
vLLM engine. Each call's seed is derived from (seed, call count), and the call count is in the
checkpoint, so a resumed run draws the same completions as an uninterrupted one.
"""
from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from secreason.rollout import Rollout, SamplingConfig


class SamplerCallback(L.Callback):
    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 64, seed: int = 0,
                 sync_every: int = 1) -> None:
        if temperature < 0 or not 0 < top_p <= 1 or max_tokens < 1 or sync_every < 1:
            raise ValueError("sampler: need temperature ≥ 0, 0 < top_p ≤ 1, max_tokens ≥ 1, sync_every ≥ 1 "
                             f"(got {temperature}, {top_p}, {max_tokens}, {sync_every})")
        self.temperature, self.top_p, self.max_tokens = float(temperature), float(top_p), int(max_tokens)
        self.seed, self.sync_every = int(seed), int(sync_every)
        self.calls = 0
        self.model: Any = None
        self.tokenizer: Any = None
        self.last_sync_step = 0

    # -- what a sampler implements ---------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], n: int) -> Rollout:
        raise NotImplementedError

    def sync_weights(self, model: torch.nn.Module) -> None:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    def bind(self, model: torch.nn.Module, tokenizer: Any) -> "SamplerCallback":
        """Use outside a Trainer (evaluation): attach a model and tokenizer."""
        self.model, self.tokenizer = model, tokenizer
        return self

    def sampling(self, n: int) -> SamplingConfig:
        return SamplingConfig(n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              seed=self.seed * 1_000_003 + self.calls)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.bind(pl_module.model, pl_module.tokenizer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        t0 = time.perf_counter()
        with trainer.profiler.profile("grpo/generate"):
            batch["rollout"] = self.generate(batch["prompt_ids"], pl_module.num_generations)
        pl_module.log("rollout/generate_s", time.perf_counter() - t0, batch_size=len(batch["prompt_ids"]))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step - self.last_sync_step < self.sync_every:
            return
        t0 = time.perf_counter()
        with trainer.profiler.profile("grpo/sync"):
            self.sync_weights(pl_module.model)
        self.last_sync_step = trainer.global_step
        pl_module.log("rollout/sync_s", time.perf_counter() - t0, batch_size=1)

    def state_dict(self) -> dict:
        return {"calls": self.calls, "seed": self.seed, "last_sync_step": self.last_sync_step}

    def load_state_dict(self, state: dict) -> None:
        self.calls, self.seed = int(state["calls"]), int(state["seed"])
        self.last_sync_step = int(state.get("last_sync_step", 0))


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
                           logprobs: list[list[float]], eos_id: int, pad_id: int, max_tokens: int,
                           tokenizer: Any) -> Rollout:
    """Assemble a Rollout from per-completion token lists (each cut after its first eos)."""
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
        truncated[i] = (not toks or toks[-1] != eos_id) and len(toks) >= max_tokens
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
