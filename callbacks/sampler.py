"""The in-loop sampler: a Lightning Callback that fills each batch with a Rollout.

A sampler is a generator (secreason.sampling: `generate`, `sync_weights`) with this class's hooks
mixed in first: `class HFSampler(SamplerCallback, HFGenerator)`. Before a training batch runs,
`on_train_batch_start` turns the batch's prompts into n completions each (`batch["rollout"]`);
after optimizer steps `on_train_batch_end` pushes the new weights into the generator
(`sync_every` steps apart). Both phases are timed by the trainer's profiler as `grpo/generate`
and `grpo/sync`. The generator's state (its call count, hence its seeds) is in the checkpoint, so
a resumed run draws the same completions as an uninterrupted one.

Two settings of the GRPO module change what a batch's rollout is (the module owns and checks them):
- `algorithm.dynamic_sampling.max_rounds` > 0: zero-variance groups are replaced by groups of extra
  prompts (secreason.refill), drawn from `ExtraPromptStream`, whose position is in this state;
- `algorithm.async_rollouts=1`: the next batch is generated while this one trains
  (callbacks/async_rollouts.py); a finished job is in this state.
"""
from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from secreason.callbacks.async_rollouts import RolloutAhead, Shadow, generator_on
from secreason.data.resumable import ExtraPromptStream, batches_trained
from secreason.errors import ConfigError
from secreason.refill import refill_batch, score_rollout
from secreason.rollout import Rollout
from secreason.sampling.base import Generator
from secreason.sampling.hf import HFGenerator, fsdp_root


class SamplerCallback(L.Callback, Generator):
    """`sync_every`: optimizer steps between weight syncs; the other arguments go to the generator."""

    def __init__(self, *args: Any, sync_every: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if sync_every < 1:
            raise ConfigError(f"sampler.sync_every={sync_every!r}: must be ≥ 1")
        self.sync_every = int(sync_every)
        self.last_sync_step = 0
        self.extra_prompts = ExtraPromptStream()
        self.ahead, self.shadow = RolloutAhead(), Shadow()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        # Refused before the engine is built: a bad combination costs nothing.
        if isinstance(trainer.strategy, FSDPStrategy):
            for key, value in (("algorithm.dynamic_sampling.max_rounds", getattr(pl_module, "refill_max_rounds", 0)),
                               ("algorithm.async_rollouts", getattr(pl_module, "async_rollouts", 0))):
                if value:  # FSDP ranks gather parameters in each generate step, so they must generate in lockstep
                    raise ConfigError(f"{key}={value!r}: not supported under trainer=fsdp; use trainer=ddp")
        self.bind(pl_module.model, pl_module.tokenizer)
        self.rank = trainer.global_rank  # each rank its own seeds (secreason.sampling.base.call_seed)
        self.extra_prompts.seed = int(getattr(trainer.datamodule, "seed", 0) or 0)
        self.extra_prompts.rank = trainer.global_rank

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The strategy has wrapped the model by now; under FSDP an HF generator runs with its unit.
        if hasattr(self, "gather_from"):
            self.gather_from(fsdp_root(pl_module.model, trainer.strategy.model))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        t0 = time.perf_counter()
        with trainer.profiler.profile("grpo/generate"):
            if getattr(pl_module, "async_rollouts", 0):
                batch["rollout"] = self._rollout_ahead(trainer, pl_module, batch)
            else:
                batch["rollout"] = self.generate(batch["prompt_ids"], pl_module.num_generations)
                pl_module.log("rollout/staleness", 0.0, batch_size=len(batch["prompt_ids"]))
            if getattr(pl_module, "refill_max_rounds", 0):
                self._refill(trainer, pl_module, batch)
        # The slowest rank's time: the step waits for it (every rank logs it, so the max is collective).
        pl_module.log("rollout/generate_s", time.perf_counter() - t0, batch_size=len(batch["prompt_ids"]),
                      sync_dist=True, reduce_fx="max")

    def _train_items(self, trainer: L.Trainer) -> list[dict]:
        items = getattr(trainer.datamodule, "train_items", None)
        if not items:
            raise ConfigError("algorithm.dynamic_sampling / algorithm.async_rollouts: draw prompts from the "
                              "datamodule's train_items (secreason.data.prompts.PromptDataModule); this one has none")
        return items

    def _refill(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict) -> None:
        """Replace zero-variance groups (correctness) by extra prompts' groups (secreason.refill)."""
        items, n = self._train_items(trainer), pl_module.num_generations

        def draw(k: int) -> tuple[list[list[int]], list[dict]]:
            picked = self.extra_prompts.draw(items, k)
            return [it["prompt_ids"] for it in picked], [it["row"] for it in picked]

        def correctness(r: Rollout, rows: list[dict]) -> torch.Tensor:
            return torch.tensor(score_rollout(pl_module.reward_set, r, rows, n).correctness, dtype=torch.float32)

        done = refill_batch(batch["prompt_ids"], batch["rows"], batch["rollout"], n, pl_module.refill_max_rounds,
                            correctness, draw, self.generate)
        batch["rollout"], batch["prompt_ids"], batch["rows"] = done.rollout, done.prompt_ids, done.rows
        size = len(done.rows)
        pl_module.log("rollout/refill_rounds", float(done.rounds), batch_size=size)
        pl_module.log("rollout/refill_prompts", float(done.extra_prompts), batch_size=size)
        pl_module.log("rollout/refill_varied_frac", done.varied / max(size, 1), batch_size=size)

    def _rollout_ahead(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict) -> Rollout:
        """This batch's rollout, generated during the previous step if that job was for it (else now),
        and the next batch's job started from the current weights (callbacks/async_rollouts.py)."""
        n, index = pl_module.num_generations, batches_trained(trainer)
        taken = self.ahead.take(index, batch["prompt_ids"])
        rollout, made_at = taken if taken is not None else (self.generate(batch["prompt_ids"], n), trainer.global_step)
        pl_module.log("rollout/staleness", float(trainer.global_step - made_at), batch_size=len(batch["prompt_ids"]))
        if taken is not None:
            pl_module.log("rollout/ahead_generate_s", self.ahead.busy_s, batch_size=len(batch["prompt_ids"]))
        upcoming = trainer.datamodule.stream_batch(index + 1) if hasattr(trainer.datamodule, "stream_batch") else None
        if upcoming:
            items = self._train_items(trainer)
            prompts = [items[i]["prompt_ids"] for i in upcoming]
            job = generator_on(self, self.shadow.of(pl_module.model) if isinstance(self, HFGenerator) else None)
            self.calls += 1  # the job's call (its seed is this count before the increment)
            self.ahead.start(lambda p: job.generate(p, n), prompts, index + 1, trainer.global_step)
        return rollout

    # Lightning calls these around each micro-batch's manual_backward: the points where the training
    # thread takes back the cores of a finished rollouts-ahead job.
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self.ahead.reclaim_threads()

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ahead.reclaim_threads()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step - self.last_sync_step < self.sync_every:
            return
        if not isinstance(self, HFGenerator):
            self.ahead.wait()  # an engine job reads the weights this sync replaces
        t0 = time.perf_counter()
        with trainer.profiler.profile("grpo/sync"):
            self.sync_weights(pl_module.model)
        self.last_sync_step = trainer.global_step
        pl_module.log("rollout/sync_s", time.perf_counter() - t0, batch_size=1, sync_dist=True, reduce_fx="max")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.ahead.wait()
        self.close()

    def state_dict(self) -> dict:
        return {**self.generator_state(), "last_sync_step": self.last_sync_step,
                "extra_prompts": self.extra_prompts.state_dict(), "rollout_ahead": self.ahead.state()}

    def load_state_dict(self, state: dict) -> None:
        self.load_generator_state(state)
        self.last_sync_step = int(state.get("last_sync_step", 0))
        if "extra_prompts" in state:
            self.extra_prompts.load_state_dict(state["extra_prompts"])
        self.ahead.load_state(state.get("rollout_ahead"))
