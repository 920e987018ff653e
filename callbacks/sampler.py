"""The in-loop sampler: a Lightning Callback that fills each batch with a Rollout.

A sampler is a generator (secreason.sampling: `generate`, `sync_weights`) with this class's hooks
mixed in first: `class HFSampler(SamplerCallback, HFGenerator)`. Before a training batch runs,
`on_train_batch_start` turns the batch's prompts into n completions each (`batch["rollout"]`);
after optimizer steps `on_train_batch_end` pushes the new weights into the generator
(`sync_every` steps apart). Both phases are timed by the trainer's profiler as `grpo/generate`
and `grpo/sync`. The generator's state (its call count, hence its seeds) is in the checkpoint, so
a resumed run draws the same completions as an uninterrupted one.
"""
from __future__ import annotations

import time
from typing import Any

import lightning as L

from secreason.errors import ConfigError
from secreason.sampling.base import Generator
from secreason.sampling.hf import fsdp_root


class SamplerCallback(L.Callback, Generator):
    """`sync_every`: optimizer steps between weight syncs; the other arguments go to the generator."""

    def __init__(self, *args: Any, sync_every: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if sync_every < 1:
            raise ConfigError(f"sampler.sync_every={sync_every!r}: must be ≥ 1")
        self.sync_every = int(sync_every)
        self.last_sync_step = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.bind(pl_module.model, pl_module.tokenizer)
        self.rank = trainer.global_rank  # each rank its own seeds (secreason.sampling.base.call_seed)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The strategy has wrapped the model by now; under FSDP an HF generator runs with its unit.
        if hasattr(self, "gather_from"):
            self.gather_from(fsdp_root(pl_module.model, trainer.strategy.model))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        t0 = time.perf_counter()
        with trainer.profiler.profile("grpo/generate"):
            batch["rollout"] = self.generate(batch["prompt_ids"], pl_module.num_generations)
        # The slowest rank's time: the step waits for it (every rank logs it, so the max is collective).
        pl_module.log("rollout/generate_s", time.perf_counter() - t0, batch_size=len(batch["prompt_ids"]),
                      sync_dist=True, reduce_fx="max")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step - self.last_sync_step < self.sync_every:
            return
        t0 = time.perf_counter()
        with trainer.profiler.profile("grpo/sync"):
            self.sync_weights(pl_module.model)
        self.last_sync_step = trainer.global_step
        pl_module.log("rollout/sync_s", time.perf_counter() - t0, batch_size=1, sync_dist=True, reduce_fx="max")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.close()

    def state_dict(self) -> dict:
        return {**self.generator_state(), "last_sync_step": self.last_sync_step}

    def load_state_dict(self, state: dict) -> None:
        self.load_generator_state(state)
        self.last_sync_step = int(state.get("last_sync_step", 0))
