"""Write the trained policy as an HF directory (merged weights + tokenizer) when training ends.

That directory is what the next stage takes as `model.path=` and what evaluation loads. Global
rank 0 writes it while the other ranks wait at a barrier, so no rank moves on (or exits) before the
directory is complete. Under FSDP no rank holds the whole model: every rank takes part in gathering
the full state dict, which lands on rank 0 only (in host memory), and rank 0 writes it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from secreason.errors import ConfigError
from secreason.models import export_hf
from secreason.sampling.hf import fsdp_root

log = logging.getLogger(__name__)


def gathered_state_dict(root: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The full state dict of FSDP `root` on rank 0 (its keys under `prefix`, without it), {} on the
    other ranks. Collective: every rank calls it."""
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

    # To host memory on GPUs; on a CPU device offloading frees the very storage it copies (a segfault).
    on_cpu = next(root.parameters()).device.type == "cpu"
    config = FullStateDictConfig(offload_to_cpu=not on_cpu, rank0_only=True)
    with FullyShardedDataParallel.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
        full = root.state_dict()
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


class HFExport(L.Callback):
    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(trainer.strategy, FSDPStrategy) and hasattr(pl_module.model, "peft_config"):
            # Merging LoRA into the base needs whole layers; fail now, not after training.
            raise ConfigError("callbacks.hf_export: a LoRA policy cannot be exported under trainer=fsdp yet; "
                              "use trainer=ddp (the adapters are small) or set callbacks.hf_export=null")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        root = fsdp_root(trainer.strategy.model, pl_module.model)
        state = None
        if root is not None:  # every rank: the FSDP gather is collective
            state = gathered_state_dict(root, prefix="model." if root is trainer.strategy.model else "")
        if trainer.is_global_zero:
            export_hf(pl_module.model, pl_module.tokenizer, self.dirpath, state_dict=state)
            log.info("HF checkpoint written to %s", self.dirpath)
            print(f"hf_checkpoint: {self.dirpath}")
        trainer.strategy.barrier("hf_export")  # the other ranks wait until the directory is complete
