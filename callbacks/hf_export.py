"""Write the trained policy as an HF directory (merged weights + tokenizer) when training ends.

That directory is what the next stage takes as `model.path=` and what evaluation loads.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from secreason.models import export_hf

log = logging.getLogger(__name__)


class HFExport(L.Callback):
    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        export_hf(pl_module.model, pl_module.tokenizer, self.dirpath)
        log.info("HF checkpoint written to %s", self.dirpath)
        print(f"hf_checkpoint: {self.dirpath}")
