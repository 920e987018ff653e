"""Completions from the live policy with HF `generate`: no second copy of the weights, no sync.

Under FSDP each rank holds a shard of every parameter. The sampler callback hands the generator
the FSDP unit that wraps the policy (`gather_from`); each `generate` then runs on every rank in
step: the parameters of the model's outer units (embeddings, head) are gathered once per call
(`unit_parameters`), each decoder layer gathers its own in every forward (FSDP's hooks), and
`synced_gpus` keeps every rank stepping until the longest completion of any rank is done, so the
gathers match. Memory stays sharded; the price is a gather per layer per decoded token.
(Gathering everything up front does not work with FSDP1: its forward reshards what was gathered,
and the next forward gathers again.)
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from secreason.rollout import Rollout, SamplingConfig
from secreason.sampling.base import Generator, completions_to_rollout, cut_at_eos, left_pad, stop_token_ids


def fsdp_root(*modules: torch.nn.Module | None) -> torch.nn.Module | None:
    """The first of `modules` that is an FSDP instance, else None. For generation pass the policy
    first (the unit wrapping it: GRPOModule wraps it itself, Lightning's auto-wrap makes it a
    unit), for a state dict the strategy's root first."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return next((m for m in modules if isinstance(m, FullyShardedDataParallel)), None)


@contextlib.contextmanager
def unit_parameters(unit: torch.nn.Module | None) -> Iterator[None]:
    """Inside the block, the own parameters of FSDP `unit` and of every unit in it that holds
    further units (the model's shell: embeddings, norm, head; under LoRA also the base model's
    unit) are whole. `generate` is reached through attributes, past those units' forward, so they
    would not gather; the innermost units (decoder layers) do in their own forward. Nothing when
    `unit` is not FSDP. Collective: every rank enters it."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if not isinstance(unit, FSDP):
        yield
        return
    shells = [m for m in FSDP.fsdp_modules(unit) if any(isinstance(c, FSDP) for c in m.modules() if c is not m)]
    with contextlib.ExitStack() as stack:
        for shell in shells or [unit]:
            stack.enter_context(FSDP.summon_full_params(shell, writeback=False, recurse=False))
        yield


class HFGenerator(Generator):
    """`batch_size`: prompts per `generate` call (None: all at once). `generate_kwargs`: more
    arguments for `model.generate` (e.g. `min_new_tokens`), after ours."""

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 64, seed: int = 0,
                 batch_size: int | None = None, generate_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        self.batch_size = batch_size
        self.generate_kwargs = dict(generate_kwargs or {})
        self.fsdp_unit: torch.nn.Module | None = None

    def gather_from(self, unit: torch.nn.Module | None) -> None:
        """Generate under FSDP with `unit`, the FSDP unit wrapping the bound model (None: it is whole).
        Every rank must then call `generate` as often as the others."""
        self.fsdp_unit = unit

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Nothing to do: generation reads the policy's own parameters."""

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int) -> Rollout:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}.generate before bind(model, tokenizer) / trainer setup")
        cfg = self.sampling(n)
        self.calls += 1
        tok, model = self.tokenizer, self.model
        self.stop_ids = stop_token_ids(tok, model)  # the model's generation config may have changed since bind
        eos_ids = set(self.stop_ids)
        was_training = model.training
        model.eval()
        completions: list[list[int]] = []
        logprobs: list[list[float]] = []
        step = self.batch_size or len(prompt_ids)
        try:
            with unit_parameters(self.fsdp_unit), torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                for start in range(0, len(prompt_ids), step):
                    chunk = [p for p in prompt_ids[start:start + step] for _ in range(n)]
                    c, lp = self._generate_chunk(chunk, cfg, eos_ids)
                    completions += c
                    logprobs += lp
        finally:
            model.train(was_training)
        return completions_to_rollout(prompt_ids, n, completions, logprobs, eos_ids, tok.pad_token_id,
                                      cfg.max_tokens, tok)

    def _generate_chunk(self, rows: list[list[int]], cfg: SamplingConfig, eos_ids: set[int]):
        ids, mask = left_pad(rows, self.tokenizer.pad_token_id)
        device = next(self.model.parameters()).device
        greedy = cfg.temperature == 0
        settings = dict(
            max_new_tokens=cfg.max_tokens, do_sample=not greedy, temperature=None if greedy else cfg.temperature,
            top_p=None if greedy else cfg.top_p, top_k=0, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(eos_ids), output_scores=True, return_dict_in_generate=True,
            # Under FSDP every forward gathers parameters, so every rank steps until all are done;
            # explicit, since transformers guesses it from the model and world size.
            synced_gpus=self.fsdp_unit is not None)
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  **{**settings, **self.generate_kwargs})
        new = out.sequences[:, ids.shape[1]:].cpu()
        # scores are the processed logits (after temperature / top-p): the distribution sampled from.
        scores = torch.stack(out.scores, 1).float().cpu().log_softmax(-1)
        lp = scores.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        completions, logprobs = [], []
        for row, row_lp in zip(new.tolist(), lp.tolist()):
            k = cut_at_eos(row, eos_ids)
            completions.append(row[:k])
            logprobs.append(row_lp[:k])
        return completions, logprobs
