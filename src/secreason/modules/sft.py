"""SFT: next-token loss on assistant tokens of chat traces `<think>…</think>answer`.

Deviations from the report (which states only 3 epochs, cosine, peak lr 2e-5): warmup, batch
size, sequence length and optimizer are not stated there; ours are config values.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import lightning as L
import torch
import torch.nn.functional as F

from secreason.data.chat import IGNORE_INDEX
from secreason.optim import optimizer_factory, scheduler_factory


def assistant_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over target tokens. logits [B, T, V], labels [B, T] (IGNORE_INDEX = no loss).

    Returns (loss, number of target tokens); the target of position t is labels[t + 1].
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    n = int((shift_labels != IGNORE_INDEX).sum())
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / max(n, 1), n


class SFTModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, tokenizer: Any, optim: Mapping[str, Any],
                 scheduler: Mapping[str, Any]) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.model.train()  # from_pretrained returns eval mode
        # Checked now (an unknown name fails at start), built in configure_optimizers.
        self.make_optimizer, self.make_scheduler = optimizer_factory(**optim), scheduler_factory(**scheduler)
        self._t_last: float | None = None

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        return self.model(**kwargs).logits

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, n_tokens = assistant_token_loss(self(batch), batch["labels"])
        now = time.perf_counter()
        bs = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/target_tokens", float(n_tokens), batch_size=bs)
        if self._t_last is not None:
            tokens = float(batch["attention_mask"].sum())
            self.log("train/tokens_per_s", tokens / max(now - self._t_last, 1e-9), batch_size=bs)
        self._t_last = now
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, n = assistant_token_loss(self(batch), batch["labels"])
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0), sync_dist=True)

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.model.parameters())
        scheduler = self.make_scheduler(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
