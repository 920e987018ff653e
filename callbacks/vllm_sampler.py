"""Rollouts from a colocated vLLM engine (secreason.sampling.vllm_engine), as a Lightning callback.

    setup            the engine's dtype follows the trainer's precision ("auto"), then the engine
                     is built from the policy's current weights.
    on_train_start   one sync: after a resume, Lightning restores the checkpoint's weights *after*
                     `setup`, so the engine is brought to the restored policy before the first rollout.
    on_train_batch_end  the sync (SamplerCallback), and the probe check's |Δlogprob| logged as
                     `rollout/sync_check_diff`.
    teardown         the engine is shut down.
"""
from __future__ import annotations

from typing import Any

import lightning as L

from secreason.callbacks.sampler import SamplerCallback
from secreason.sampling.vllm_engine import VLLMGenerator


def precision_dtype(precision: str) -> str | None:
    """The dtype Lightning's `trainer.precision` computes matmuls in, if lower than float32."""
    if precision.startswith("bf16"):
        return "bfloat16"
    if precision.startswith("16"):
        return "float16"
    return None


class VLLMSampler(SamplerCallback, VLLMGenerator):
    """conf/sampler/vllm.yaml; see VLLMGenerator for the arguments."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer_dtype = precision_dtype(str(trainer.precision))
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sync_weights(pl_module.model)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        synced = self.syncs
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.syncs != synced and self.last_check_diff is not None:
            pl_module.log("rollout/sync_check_diff", self.last_check_diff, batch_size=1)
