"""Every `log_rollouts_every_n_steps` optimizer steps, the batch's completions as a wandb.Table.

`rollout/samples`: prompt, completion, each reward function's score, correctness, format penalty,
total, penalty reasons and advantage (secreason.modules.rollout_table). Logged by global rank 0 to
every wandb logger of the run (offline runs keep it in their files); other loggers and algorithms
without scored rollouts (SFT) are left alone.
"""
from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from secreason.errors import ConfigError
from secreason.modules.rollout_table import rollout_table

TABLE_KEY = "rollout/samples"


class RolloutTable(L.Callback):
    def __init__(self, log_rollouts_every_n_steps: int = 10, max_rows: int | None = 64) -> None:
        n = log_rollouts_every_n_steps
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"callbacks.rollout_table.log_rollouts_every_n_steps={n!r}: must be an integer ≥ 1")
        if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1):
            raise ConfigError(f"callbacks.rollout_table.max_rows={max_rows!r}: must be an integer ≥ 1 or null")
        self.every_n_steps, self.max_rows = n, max_rows
        self.last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        scored = batch.get("scored") if isinstance(batch, dict) else None
        if scored is None or step % self.every_n_steps or step == self.last_step or not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        self.last_step = step
        columns, data = rollout_table(batch["rollout"], batch["rows"], scored, pl_module.num_generations, step,
                                      self.max_rows)
        for logger in loggers:
            logger.log_table(TABLE_KEY, columns=columns, data=data, step=step)
