"""Lightning strategies as `trainer.strategy` takes them (conf/trainer/ddp.yaml, fsdp.yaml).

Lightning's FSDPStrategy is the engine; three things stand between it and a CPU box (tests, CI, a
laptop), and this subclass removes just those:
- the Trainer refuses `type(strategy) is FSDPStrategy` without a GPU accelerator (a subclass is
  not that type);
- Lightning wraps with `device_id=None` on CPU, which torch's FSDP refuses when no accelerator
  exists; it accepts the CPU device itself (gloo does the collectives);
- Lightning gathers full checkpoints with `offload_to_cpu=True`, which on a CPU device frees the
  very storage it then copies (a segfault); on CPU the gather does not offload.
On a GPU everything is Lightning's code unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import lightning.pytorch.strategies.fsdp as _lightning_fsdp
from lightning.pytorch.strategies import FSDPStrategy as _LightningFSDP
from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
from torch.nn import Module


def _full_state_dict_context_in_place(module: Module, world_size: int, rank0_only: bool = True):
    """Lightning's `_get_full_state_dict_context` without the offload (the tensors already are on CPU)."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.state_dict_type(
        module, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))


def fsdp_wrapped(module: Module) -> Module:
    """`module` as an FSDP unit with the running strategy's settings (inside its
    `model_sharded_context`, where `LightningModule.configure_model` runs); unchanged when it
    already is one or outside that context."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import wrap

    return module if isinstance(module, FullyShardedDataParallel) else wrap(module)


class FSDPStrategy(_LightningFSDP):
    """Lightning's FSDPStrategy, also on `accelerator=cpu`."""

    def _fsdp_settings(self) -> dict:
        return dict(cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                    sharding_strategy=self.sharding_strategy, device_id=self.root_device, **self.kwargs)

    def _setup_model(self, model: Module) -> Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        already = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
        if self.root_device.type != "cpu" or already:
            return super()._setup_model(model)
        model = FullyShardedDataParallel(module=model, **self._fsdp_settings())
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model

    @contextmanager
    def model_sharded_context(self) -> Iterator[None]:
        """Where `LightningModule.configure_model` wraps its own modules (`torch.distributed.fsdp.wrap.wrap`)."""
        if self.root_device.type != "cpu":
            with super().model_sharded_context():
                yield
            return
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import enable_wrap

        with enable_wrap(wrapper_cls=FullyShardedDataParallel, **self._fsdp_settings()):
            yield

    @contextmanager
    def _full_state_dicts_in_place(self) -> Iterator[None]:
        if self.root_device.type != "cpu":
            yield
            return
        original = _lightning_fsdp._get_full_state_dict_context
        _lightning_fsdp._get_full_state_dict_context = _full_state_dict_context_in_place
        try:
            yield
        finally:
            _lightning_fsdp._get_full_state_dict_context = original

    def lightning_module_state_dict(self) -> dict[str, Any]:
        with self._full_state_dicts_in_place():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        with self._full_state_dicts_in_place():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        with self._full_state_dicts_in_place():
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
