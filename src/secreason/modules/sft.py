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
        # use_cache=False: with a cache (the default, even in training) transformers does not split
        # packed rows at their position-id restarts, and packed examples attend to each other.
        return self.model(**kwargs, use_cache=False).logits

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, n_tokens = assistant_token_loss(self(batch), batch["labels"])
        now = time.perf_counter()
        bs = batch["input_ids"].size(0)
        tokens = float(batch["num_tokens"].sum())
        logged_loss = loss.detach()
        if self.trainer.world_size > 1:
            loss, logged_loss, n_tokens, tokens = self._global_token_mean(loss, n_tokens, tokens)
        self.log("train/loss", logged_loss, prog_bar=True, batch_size=bs)
        self.log("train/target_tokens", float(n_tokens), batch_size=bs)
        if self._t_last is not None:
            self.log("train/tokens_per_s", tokens / max(now - self._t_last, 1e-9), batch_size=bs,
                     sync_dist=True)  # on N ranks: the global batch's tokens over the ranks' mean step time
        self._t_last = now
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        return loss

    def _global_token_mean(self, loss: torch.Tensor, n_tokens: int, tokens: float):
        """On N ranks: the loss whose gradient, averaged over ranks by DDP/FSDP, is that of the mean over
        every rank's target tokens (a rank's own mean would weigh a token by its rank's token count),
        plus the logged numbers of the global batch: (loss, mean loss, target tokens, tokens)."""
        local = torch.tensor([loss.detach().float().item() * n_tokens, n_tokens, tokens], device=self.device,
                             dtype=torch.float64)
        loss_sum, total, all_tokens = self.trainer.strategy.reduce(local, reduce_op="sum").tolist()
        scale = n_tokens / max(total, 1.0) * self.trainer.world_size
        return loss * scale, loss_sum / max(total, 1.0), int(total), all_tokens

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """`trainer.gradient_clip_val` under FSDP too: each rank holds a shard of the gradients, so the
        FSDP root clips by the norm over all ranks (Lightning's FSDP refuses to clip by norm)."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = self.trainer.strategy.model
        by_norm = gradient_clip_algorithm in (None, "norm")
        if isinstance(root, FullyShardedDataParallel) and gradient_clip_val and by_norm:
            root.clip_grad_norm_(float(gradient_clip_val))
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, n = assistant_token_loss(self(batch), batch["labels"])
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0), sync_dist=True)

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.model.parameters())
        scheduler = self.make_scheduler(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
