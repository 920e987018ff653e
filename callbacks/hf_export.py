"""Write the trained policy as an HF directory (merged weights + tokenizer) when training ends.

That directory is what the next stage takes as `model.path=` and what evaluation loads. A LoRA
policy's directory also holds `adapter/` (the adapter alone, peft's format). `every_n_steps` > 0
writes it during training too (each time swapped in whole, `secreason.models.export_hf`), so a
crashed run leaves the last one. Its README.md is a model card naming the Hydra config and
overrides of the run (`secreason.model_card`). `push_to_hub` uploads the final directory to
`hub_repo_id` (off by default). Global
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
from secreason.model_card import model_card
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
    def __init__(self, dirpath: str, every_n_steps: int = 0, push_to_hub: bool = False,
                 hub_repo_id: str | None = None, hub_private: bool = True) -> None:
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 0:
            raise ConfigError(f"callbacks.hf_export.every_n_steps={every_n_steps!r}: must be an integer ≥ 0 "
                              "(0: only when training ends)")
        if push_to_hub and not hub_repo_id:
            raise ConfigError("callbacks.hf_export.push_to_hub=true needs callbacks.hf_export.hub_repo_id "
                              "(e.g. my-org/secreason-grpo)")
        self.dirpath, self.every_n_steps = Path(dirpath), every_n_steps
        self.push_to_hub, self.hub_repo_id, self.hub_private = push_to_hub, hub_repo_id, hub_private
        self.last_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(trainer.strategy, FSDPStrategy) and hasattr(pl_module.model, "peft_config"):
            # Merging LoRA into the base needs whole layers; fail now, not after training.
            raise ConfigError("callbacks.hf_export: a LoRA policy cannot be exported under trainer=fsdp yet; "
                              "use trainer=ddp (the adapters are small) or set callbacks.hf_export=null")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self.last_step:
            self.export(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self.last_step:  # the last periodic export may be of this very step
            self.export(trainer, pl_module)
        if self.push_to_hub and trainer.is_global_zero:
            push_folder(self.dirpath, self.hub_repo_id, self.hub_private)

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_step = trainer.global_step
        root = fsdp_root(trainer.strategy.model, pl_module.model)
        state = None
        if root is not None:  # every rank: the FSDP gather is collective
            state = gathered_state_dict(root, prefix="model." if root is trainer.strategy.model else "")
        if trainer.is_global_zero:
            export_hf(pl_module.model, pl_module.tokenizer, self.dirpath, state_dict=state,
                      card=card_for(pl_module))
            log.info("HF checkpoint (step %d) written to %s", trainer.global_step, self.dirpath)
            print(f"hf_checkpoint: {self.dirpath}")
        trainer.strategy.barrier("hf_export")  # the other ranks wait until the directory is complete


def card_for(pl_module: L.LightningModule) -> str:
    """The model card: base model and algorithm from the module, config and overrides from Hydra
    (when the run was started by train.py)."""
    config_name, overrides = None, []
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            hydra = HydraConfig.get()
            config_name, overrides = hydra.job.config_name, list(hydra.overrides.task)
    except ImportError:  # hydra is a dependency; a plain script without it records no config
        pass
    model = pl_module.model
    base = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(
        getattr(getattr(model, "base_model", None), "config", None), "_name_or_path", None)
    return model_card(base, type(pl_module).__name__, config_name, overrides, adapter=hasattr(model, "peft_config"))


def push_folder(dirpath: Path, repo_id: str, private: bool) -> None:
    """Upload the export to the hub (create the repo if needed); the token is huggingface_hub's own."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(dirpath), commit_message="secreason export")
    log.info("pushed %s to the hub as %s", dirpath, repo_id)
    print(f"hf_hub: {repo_id}")
