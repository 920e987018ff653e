"""The wandb logger whose `offline` setting is the only thing that decides offline or online.

Lightning's WandbLogger sets `WANDB_MODE` for `offline=true` but leaves it alone for `offline=false`,
so a `WANDB_MODE=offline` left in the environment (by a wrapper, a cluster profile or an older
train.py) kept a run the user asked to be online offline. Here the mode goes to `wandb.init` and
into `WANDB_MODE` (which wandb's service process reads) when the run starts, from `offline` alone.
"""
from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    def __init__(self, *args: Any, offline: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, offline=offline, mode="offline" if offline else "online", **kwargs)

    @property
    def mode(self) -> str:
        return self._wandb_init["mode"]

    @property
    def experiment(self):  # noqa: D102 (Lightning's, with the mode set first)
        if self._experiment is None:
            os.environ["WANDB_MODE"] = self.mode
        return super().experiment
