"""The policy's weights under HF checkpoint names, LoRA merged: one strategy for every consumer.

`hf_weights(model)` is what the vLLM engine is synced with, and `save_policy` (built on it) is what
the engine starts from and what `secreason.models.export_hf` writes. So the exported model is the
model the sampler served and the rewards scored: for QLoRA, the dequantized 4-bit base plus the
adapters' deltas (not a fresh full-precision base, which the adapters were never trained against).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (the model itself when there is none)."""
    return model.get_base_model() if hasattr(model, "peft_config") else model


def policy_dtype(model: torch.nn.Module) -> str:
    """The name of the policy's floating dtype (packed 4-bit uint8 weights are skipped)."""
    for p in base_model(model).parameters():
        if p.dtype in DTYPE_NAMES:
            return DTYPE_NAMES[p.dtype]
    return "float32"


def _lora_path(parts: list[str]) -> bool:
    return any(p.startswith("lora_") for p in parts) or "original_module" in parts


def hf_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the policy as a plain HF checkpoint: LoRA merged, names without peft's prefixes.

    A plain model yields its state dict. A peft LoRA model yields base weight + Σ active adapters'
    `get_delta_weight`, one layer at a time (no copy of the model, nothing modified in place; a 4-bit
    base is dequantized); modules_to_save yield their trained copy. DoRA and other non-LoRA tuners
    fall back to merge in place → read → unmerge.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        yield from _fsdp_unit_weights(model)
        return
    if not hasattr(model, "peft_config"):
        for name, tensor in model.state_dict().items():
            yield name, tensor.detach()
        return
    base = model.get_base_model()
    if any(getattr(cfg, "peft_type", None) != "LORA" or getattr(cfg, "use_dora", False)
           for cfg in model.peft_config.values()):
        yield from _merged_in_place(model)
        return
    real = {n for n, _ in base.named_parameters(remove_duplicate=False)}
    real |= {n for n, _ in base.named_buffers(remove_duplicate=False)}
    for name, tensor in base.state_dict(keep_vars=True).items():
        parts = name.split(".")
        if name not in real or _lora_path(parts):  # not real: bitsandbytes quant-state entries
            continue
        if "modules_to_save" in parts:
            i = parts.index("modules_to_save")
            owner = base.get_submodule(".".join(parts[:i]))
            if parts[i + 1] == getattr(owner, "active_adapter", parts[i + 1]):
                yield ".".join(parts[:i] + parts[i + 2:]), tensor.detach()
            continue
        if "base_layer" not in parts:
            yield name, tensor.detach()
            continue
        i = parts.index("base_layer")
        layer = base.get_submodule(".".join(parts[:i]))
        w = _dequantized(tensor)
        if parts[i + 1:] == ["weight"] and not getattr(layer, "merged", False) \
                and not getattr(layer, "disable_adapters", False):
            for adapter in layer.active_adapters:
                if adapter in getattr(layer, "lora_A", {}) or adapter in getattr(layer, "lora_embedding_A", {}):
                    w = w + layer.get_delta_weight(adapter).to(w.dtype)
        yield ".".join(parts[:i] + parts[i + 1:]), w.detach()


def _fsdp_unit_weights(root: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The whole weights of an FSDP-wrapped plain policy, one FSDP unit at a time (the model's shell:
    embeddings, norm, head; then each decoder layer): each unit's own parameters are gathered,
    copied out and resharded before the next unit is gathered, so a rank holds one unit beyond its
    shards, never a second whole model. Collective: every rank iterates it to the end, in step."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    wrapped = "_fsdp_wrapped_module."
    if hasattr(root.module, "peft_config"):
        from secreason.errors import ConfigError

        raise ConfigError("sampler=vllm with LoRA under trainer=fsdp is not supported: use trainer=ddp for LoRA")
    for prefix, unit in root.named_modules():
        if not isinstance(unit, FSDP):
            continue
        nested = {id(p) for inner in FSDP.fsdp_modules(unit) if inner is not unit for p in inner.parameters()}
        with FSDP.summon_full_params(unit, recurse=False, writeback=False):
            # Tied weights under each name, as a state dict has them (vLLM's reload wants lm_head too).
            for name, param in unit.named_parameters(remove_duplicate=False):
                if id(param) not in nested:  # this unit's own: gathered now
                    full = f"{prefix}.{name}" if prefix else name
                    yield full.replace(wrapped, ""), param.detach().clone()
    for prefix, module in root.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:  # checkpoint buffers only (not rotary tables)
                yield f"{prefix}.{name}".lstrip(".").replace(wrapped, ""), buffer.detach()


def _dequantized(tensor: torch.Tensor) -> torch.Tensor:
    if getattr(tensor, "quant_state", None) is None:
        return tensor
    from peft.utils.integrations import dequantize_bnb_weight

    return dequantize_bnb_weight(tensor, state=tensor.quant_state)


def _merged_in_place(model) -> Iterator[tuple[str, torch.Tensor]]:
    """Fallback (DoRA, other tuners): merge → copy the merged weights → unmerge."""
    model.merge_adapter()
    try:
        items = []
        for name, tensor in model.get_base_model().state_dict().items():
            parts = name.split(".")
            if _lora_path(parts):
                continue
            if "modules_to_save" in parts:
                i = parts.index("modules_to_save")
                parts = parts[:i] + parts[i + 2:]
            items.append((".".join(p for p in parts if p != "base_layer"), tensor.detach().clone()))
    finally:
        model.unmerge_adapter()
    yield from items


def save_policy(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """The policy's current weights (LoRA merged, 4-bit dequantized) + tokenizer as a plain HF dir.

    The tensors are written as one safetensors file beside the base's config (without its
    quantization_config: merged weights are full precision), by us rather than `save_pretrained`:
    transformers' `save_pretrained` of a quantized model writes its packed 4-bit state whatever
    `state_dict` it is given, and under torch.distributed it writes nothing on ranks other than 0,
    whereas each rank's vLLM engine loads its own dump.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = base_model(model)
    save_file(_unshared(hf_weights(model)), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    base.config.save_pretrained(out_dir)
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.pop("quantization_config", None) is not None:
        cfg["dtype"] = policy_dtype(model)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _unshared(weights: Iterator[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each storage once: a tied lm_head shares the embedding's (safetensors
    refuses shared storage; `from_pretrained` ties it again from the config)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in weights:
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel():
            continue
        seen.add(ptr)
        out[name] = tensor.contiguous()
    return out
