"""Completions from the live policy with HF `generate`: no second copy of the weights, no sync."""
from __future__ import annotations

from typing import Any

import torch

from secreason.rollout import Rollout, SamplingConfig
from secreason.sampling.base import Generator, completions_to_rollout, cut_at_eos, left_pad, stop_token_ids


class HFGenerator(Generator):
    """`batch_size`: prompts per `generate` call (None: all at once). `generate_kwargs`: more
    arguments for `model.generate` (e.g. `min_new_tokens`), after ours."""

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 64, seed: int = 0,
                 batch_size: int | None = None, generate_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        self.batch_size = batch_size
        self.generate_kwargs = dict(generate_kwargs or {})

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Nothing to do: generation reads the policy's own parameters."""

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int) -> Rollout:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}.generate before bind(model, tokenizer) / trainer setup")
        cfg = self.sampling(n)
        self.calls += 1
        tok, model = self.tokenizer, self.model
        eos_ids = set(stop_token_ids(tok, model))
        was_training = model.training
        model.eval()
        completions: list[list[int]] = []
        logprobs: list[list[float]] = []
        step = self.batch_size or len(prompt_ids)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                for start in range(0, len(prompt_ids), step):
                    chunk = [p for p in prompt_ids[start:start + step] for _ in range(n)]
                    c, lp = self._generate_chunk(chunk, cfg, eos_ids)
                    completions += c
                    logprobs += lp
        finally:
            model.train(was_training)
        return completions_to_rollout(prompt_ids, n, completions, logprobs, tok.eos_token_id, tok.pad_token_id,
                                      cfg.max_tokens, tok)

    def _generate_chunk(self, rows: list[list[int]], cfg: SamplingConfig, eos_ids: set[int]):
        ids, mask = left_pad(rows, self.tokenizer.pad_token_id)
        device = next(self.model.parameters()).device
        greedy = cfg.temperature == 0
        settings = dict(
            max_new_tokens=cfg.max_tokens, do_sample=not greedy, temperature=None if greedy else cfg.temperature,
            top_p=None if greedy else cfg.top_p, top_k=0, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(eos_ids), output_scores=True, return_dict_in_generate=True)
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
