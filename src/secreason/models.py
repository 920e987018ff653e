"""Load a causal LM and its tokenizer by path or hub id, with optional LoRA / QLoRA.

The same code loads the tiny offline model (a local HF dir) and `fdtn-ai/Foundation-Sec-8B`.
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

from secreason.errors import ConfigError, MissingPathError

log = logging.getLogger(__name__)

# Weight files a local model dir must hold one of (single or sharded, with their index).
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.bin.index.json")


def _load_errors() -> tuple[type[BaseException], ...]:
    """What `from_pretrained` raises for a bad model dir or hub id (unreadable or garbage files,
    missing weights, an unknown model type, offline): the user's to fix, so one line naming
    model.path. Anything else (our own bugs among them) keeps its traceback."""
    errors: list[type[BaseException]] = [OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:
        pass
    return tuple(errors)


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())  # one line, whatever the library's layout
    if "weights_only" in text:  # torch's advice to turn safe loading off is not one to pass on
        text = "a weights file is not a plain tensor file (refused by safe loading, weights_only=True)"
    return f"{type(e).__name__}: {text[:400]}" if text else type(e).__name__


# Llama-3.1's published chat format, for base models that ship no chat template (Foundation-Sec-8B
# is one): BOS once, then per message `<|start_header_id|>role<|end_header_id|>\n\n content
# <|eot_id|>`. Unlike the Instruct model's template: no system preamble (knowledge/today dates),
# no tool calls, content not trimmed. Prefix-stable, which assistant-only masking needs.
DEFAULT_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[str(name)]
    except KeyError:
        raise ConfigError(f"model.dtype={name!r} unknown; choose one of {sorted(DTYPES)}") from None


def resolve_device(name: str | None = "auto", key: str = "device") -> torch.device:
    """The device of a `device` config key: auto → the GPU when there is one (cuda), else the CPU;
    or any torch device (cpu, cuda, cuda:1, mps). ConfigError naming `key` for one that is unknown
    or absent here."""
    name = "auto" if name is None else str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{key}={name!r} is not a device; choose auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name}: no CUDA device is available here (device=auto falls back to the CPU)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}={name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={name}: MPS is not available here")
    return device


def resolve_model_path(model_cfg: Mapping[str, Any], cache_dir: str | Path) -> str:
    """`model.path` if set, else the tiny offline model built into `cache_dir`."""
    path = model_cfg.get("path")
    if path:
        local = Path(str(path)).expanduser()
        if local.exists():
            check_model_dir(local, str(path))
            return str(local)
        if str(path).startswith((".", "/", "~")) or str(path).count("/") != 1:
            raise MissingPathError(f"model.path={path}: no such directory")
        return str(path)  # a hub id
    size = model_cfg.get("tiny_size")
    if not size:
        raise ConfigError("model.path is not set and the model config is not a tiny one (model.tiny_size)")
    from secreason.tiny import ensure_tiny

    return str(ensure_tiny(cache_dir, seed=int(model_cfg.get("tiny_seed", 0)), size=size,
                           flavor=str(model_cfg.get("tiny_flavor") or "tiny")))


def check_model_dir(local: Path, shown: str) -> None:
    """A local model dir, checked before anything loads: a readable config.json holding a JSON
    object, and weights. Raises MissingPathError / ConfigError naming `model.path=<shown>`."""
    config = local / "config.json"
    if not config.is_file():
        raise MissingPathError(f"model.path={shown}: no config.json there (not an HF model dir)")
    try:
        parsed = json.loads(config.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"model.path={shown}: config.json is not valid JSON ({_reason(e)})") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"model.path={shown}: config.json holds a {type(parsed).__name__}, not a JSON object")
    if not any(next(local.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise MissingPathError(f"model.path={shown}: no weights there (model.safetensors, sharded "
                               f"model-*.safetensors with their index, or pytorch_model*.bin)")


def load_tokenizer(path: str, chat_template: str | None = None):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except _load_errors() as e:
        raise ConfigError(f"model.path={path}: cannot load its tokenizer ({_reason(e)})") from e
    if chat_template:
        tok.chat_template = chat_template
    elif not tok.chat_template:
        log.info("tokenizer at %s has no chat template; using the Llama-3.1 format default", path)
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def lora_enabled(lora: Mapping[str, Any] | None) -> bool:
    return bool(lora) and int(lora.get("r") or 0) > 0


def load_causal_lm(path: str, dtype: str = "float32", attn_implementation: str | None = "sdpa",
                   gradient_checkpointing: bool = False, quantization: str | None = None,
                   lora: Mapping[str, Any] | None = None, trust_remote_code: bool = False,
                   device: str | torch.device | None = None, compile: bool = False):
    """The policy as an HF model, wrapped by peft when `lora.r > 0`, compiled when `compile`
    (`compile_model`).

    quantization="nf4" loads 4-bit NF4 weights with bitsandbytes (QLoRA) and needs LoRA: a 4-bit
    base cannot be trained on its own. `device`: where the weights go (None: left on the CPU for
    Lightning to place, as training does; eval and judges pass `resolve_device(...)`).
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization:
        if quantization != "nf4":
            raise ConfigError(f"model.quantization={quantization!r} unknown; choose nf4 or null")
        if not lora_enabled(lora):
            raise ConfigError("model.quantization=nf4 needs LoRA: set model.lora.r > 0 (QLoRA)")
        from transformers import BitsAndBytesConfig

        compute = torch_dtype(dtype) if torch_dtype(dtype) != torch.float16 else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        if device is not None:  # a 4-bit model cannot be moved after loading
            kwargs["device_map"] = {"": str(device)}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except _load_errors() as e:
        raise ConfigError(f"model.path={path}: cannot load the model ({_reason(e)})") from e
    if device is not None and not quantization:
        model = model.to(device)
    if quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_enabled(lora):
        model = wrap_lora(model, lora)
    return compile_model(model) if check_compile_flag(compile) else model


def check_compile_flag(value: Any) -> bool:
    """model.compile as a bool; anything else (a string, a mode name) is one clear error."""
    if not isinstance(value, bool):
        raise ConfigError(f"model.compile={value!r}: must be true or false")
    return value


def compile_model(model):
    """`torch.compile` the model's forward in place (`nn.Module.compile`), so parameter names and
    state_dict keys stay as they are: checkpoints, the vLLM weight push and the HF export see the
    same model. Lazy: the first forward of each new input signature compiles (the small model's
    first GRPO step takes about a minute longer on 2 CPU cores: benchmarks/RESULTS.md); new lengths
    after the first recompile run one shape-dynamic graph. Gains come from fusing the layers'
    elementwise work, so they grow with tokens per step, not with parameters.

    Not supported: FSDP (secreason.run refuses the combination; wrapping after compiling breaks the
    compiled graph's view of the parameters). `copy.deepcopy` drops the compiled forward; use
    `frozen_copy` for a compiled reference."""
    log.info("model.compile=true: the forward compiles on its first calls (minutes on CPU)")
    # Inductor's CPU kernels are shaped for the thread count of the thread that first calls them: at 1
    # thread it emits serial loops, for good. The first call can come while the cores are split
    # (algorithm.async_rollouts), so the kernels are generated for this count and read the calling
    # thread's count when they run.
    model.compile(options={"cpp.threads": torch.get_num_threads(), "cpp.dynamic_threads": True})
    return model


def is_compiled(model) -> bool:
    return getattr(model, "_compiled_call_impl", None) is not None


def frozen_copy(model):
    """A frozen eval-mode copy of `model` (GRPO's reference), compiled when `model` is: a deepcopy
    of a compiled module runs eager (torch drops the compiled forward when copying)."""
    import copy

    ref = copy.deepcopy(model).eval().requires_grad_(False)
    return compile_model(ref) if is_compiled(model) else ref


def wrap_lora(model, lora: Mapping[str, Any]):
    from peft import LoraConfig, get_peft_model

    target = lora.get("target_modules", "all-linear")
    if not isinstance(target, str):
        target = list(target)
    config = LoraConfig(r=int(lora["r"]), lora_alpha=int(lora.get("alpha", 16)),
                        lora_dropout=float(lora.get("dropout", 0.0)), target_modules=target,
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    if getattr(model, "is_gradient_checkpointing", False):
        model.enable_input_require_grads()
    return model


ADAPTER_DIR = "adapter"  # the LoRA adapter alone, inside an export of a peft policy
EXPORT_SUFFIX = ".export"  # temp dirs of an export in progress: `.hf_model.<host>.<pid>.<hex>.export`


def export_hf(model, tokenizer, out_dir: str | Path, state_dict: Mapping[str, Any] | None = None,
              card: str | None = None) -> Path:
    """Save the policy (LoRA merged, a 4-bit base dequantized) + tokenizer as an HF dir that
    `model.path=` accepts. The weights are `secreason.sampling.weights.save_policy`'s, the same the
    vLLM sampler serves. A peft policy also gets `adapter/` (peft's `save_pretrained`: the adapter
    alone, for `PeftModel.from_pretrained(base, out_dir / "adapter")`). `card`: the README.md (model card).

    Written to a temp dir beside `out_dir` (temp dirs of killed exports there are removed first),
    then swapped in by two renames (the old dir aside, the new one in), so a reader or a crash sees
    a complete directory, never a half-written one.

    `state_dict`: the full weights gathered elsewhere (FSDP: `model` itself holds only shards),
    saved with `model`'s config; a plain (not peft) model only."""
    import os
    import shutil

    from secreason.checkpoint_io import own_temp_path, remove_stale_temps
    from secreason.sampling.weights import save_policy

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir.parent, EXPORT_SUFFIX)  # what a killed export left behind
    tmp, old = own_temp_path(out_dir, EXPORT_SUFFIX), own_temp_path(out_dir, EXPORT_SUFFIX)
    tmp.mkdir()
    try:
        if state_dict is None:
            save_policy(model, tokenizer, tmp)
            if hasattr(model, "peft_config"):
                model.save_pretrained(tmp / ADAPTER_DIR)
        else:
            if hasattr(model, "peft_config"):
                raise ValueError("export_hf: a gathered state_dict is for a plain model, not a peft one")
            getattr(model, "module", model).save_pretrained(tmp, state_dict=dict(state_dict))  # FSDP: the inner model
            tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
