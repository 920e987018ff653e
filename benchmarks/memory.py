#!/usr/bin/env python
"""Peak memory of one SFT step and one GRPO step, by part, and the 8B plan derived from it.

    python benchmarks/memory.py                      # tiny + small × full / LoRA / QLoRA, SFT + GRPO
    python benchmarks/memory.py --sizes tiny --modes full lora --kinds sft    # a subset

Each run is `secreason.run.train(cfg)` (the body of train.py) with the config composed from conf/
(`+experiment=sft|grpo model=tiny|small`, LoRA: `model.lora.r=8`, QLoRA: also `model.quantization=nf4`,
fp32, no checkpoints or loggers) for 2 steps; the second step is measured:

- the persistent parts, read off the objects: the policy's weights (every tensor of its state dict,
  4-bit packing and quantization constants included), the reference (GRPO: a frozen copy of the
  policy; under LoRA none, the policy with its adapters off), the optimizer state;
- the transient parts, from a TorchDispatchMode (`LiveBytes`) that counts every tensor storage
  allocated during the step while it is alive: gradients (each counted as it first accumulates), the
  activations and temporaries of the forward/backward (live bytes at their peak minus the gradients
  then alive), and the sampler's (HF generate: KV cache, logits; `grpo/generate`). Phases are the
  ones the module and the sampler name in Lightning's profiler (`grpo/generate`, `grpo/ref`,
  `grpo/fwd_bwd`, `grpo/optimizer`; SFT: Lightning's training_step / backward / optimizer_step).

Peak of the step = persistent + the largest live transient bytes. From the runs it prints the bytes
per parameter of each part (weights per parameter, gradients and optimizer state per trainable
parameter, 4-bit linear weights per parameter) and fits activation bytes per token as
a·hidden·layers + b·vocab (tiny and small differ in hidden·layers, share the vocab). `plan_8b` then
gives the Llama-3.1-8B table of the README (what fits on 1×80 GB, 1×141 GB, 8×80 GB FSDP), with each
sum printed. CPU fp32 figures: on a GPU under bf16-mixed the activations are about half.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import weakref
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.profilers import PassThroughProfiler
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from memory_plan import report  # noqa: E402  (beside this file)

MODES = {"full": [], "full_gc": ["model.gradient_checkpointing=true"], "lora": ["model.lora.r=8"],
         "qlora": ["model.lora.r=8", "model.quantization=nf4"]}
SIZES = ("tiny", "small")
KINDS = ("sft", "grpo")
MAX_STEPS = 6  # the probe stops the fit once it has measured a step

# ------------------------------------------------------------------------------ measuring

class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages allocated while active and still alive; the peak of that per
    phase (`phase()` names the current one), with the gradient bytes alive at each peak."""

    def __init__(self, phase) -> None:
        super().__init__()
        self.phase, self.live, self.grads = phase, 0, 0
        self.peaks: dict[str, tuple[int, int]] = {}  # phase: (live bytes, of which gradients)
        self._seen: dict[int, int] = {}  # storage address: bytes

    def _free(self, address: int) -> None:
        self.live -= self._seen.pop(address, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and not t.is_meta}  # a view or in-place result allocates nothing
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                storage = t.untyped_storage()
                address = storage.data_ptr()
                if address and address not in self._seen and address not in inputs:
                    self._seen[address] = storage.nbytes()
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._free, address)
        name = self.phase()
        if self.live > self.peaks.get(name, (-1, 0))[0]:
            self.peaks[name] = (self.live, self.grads)
        return out


class PhaseNames(PassThroughProfiler):
    """The trainer's profiler: keeps the stack of open actions, so LiveBytes knows the phase."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def start(self, action_name: str) -> None:
        self.stack.append(action_name)

    def stop(self, action_name: str) -> None:
        if action_name in self.stack:
            del self.stack[len(self.stack) - 1 - self.stack[::-1].index(action_name)]

    def current(self) -> str:
        """The innermost of GRPO's phases; else (SFT) Lightning's training_step, backward or
        optimizer_step; else "other"."""
        for name in reversed(self.stack):
            if name.startswith("grpo/"):
                return name
        for name in reversed(self.stack):
            for key, phase in (("]" + "backward", "backward"), (".backward", "backward"),
                               (".optimizer_step", "optimizer"), (".training_step", "forward")):
                if key in name:
                    return phase
        return "other"


def storage_bytes(tensors) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def module_tensors(module) -> list[torch.Tensor]:
    """Every tensor a module keeps: parameters, buffers and bitsandbytes' quantization state."""
    out = [*module.parameters(), *module.buffers()]
    for p in module.parameters():
        state = getattr(p, "quant_state", None)
        if state is not None:
            out += [v for v in vars(state).values() if isinstance(v, torch.Tensor)]
            nested = getattr(state, "state2", None)
            out += [v for v in vars(nested).values() if isinstance(v, torch.Tensor)] if nested else []
    return out


def quantized_linear_bytes(model) -> tuple[int, int]:
    """(bytes, parameters) of the 4-bit linear weights (packed data and quantization constants)."""
    total_bytes = total_params = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        if state is not None:
            total_bytes += storage_bytes(module_tensors(_Holder(p)))
            total_params += math.prod(state.shape)
    return total_bytes, total_params


class _Holder(torch.nn.Module):
    def __init__(self, p) -> None:
        super().__init__()
        self.p = p


class MemoryProbe(L.Callback):
    """Measures the first batch after the optimizer state exists (a GRPO batch whose groups all
    have zero variance makes no step), then stops the fit; first among the callbacks, so its
    window opens before the sampler generates. Writes the figures as JSON to `out`."""

    def __init__(self, out: str) -> None:
        self.out, self.tracker, self.measured = out, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.measured is not None or not any(trainer.optimizers[0].state.values()):
            return
        self.measured = batch_idx
        # The previous step's gradients would be freed inside this one, unseen: drop them now
        # (each step starts from none: accumulate_grad_batches is 1).
        pl_module.zero_grad(set_to_none=True)
        self.trainable = [p for p in pl_module.parameters() if p.requires_grad]
        self.tracker = LiveBytes(trainer.profiler.current)
        counted: set[int] = set()

        def on_grad(p) -> None:
            if id(p) not in counted:
                counted.add(id(p))
                self.tracker.grads += p.grad.untyped_storage().nbytes()

        self.hooks = [p.register_post_accumulate_grad_hook(on_grad) for p in self.trainable]
        self.tracker.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx != self.measured:
            return
        trainer.should_stop = True
        self.tracker.__exit__(None, None, None)
        for h in self.hooks:
            h.remove()
        policy = pl_module.model
        ref = getattr(pl_module, "_ref", [])
        optimizer = trainer.optimizers[0]
        opt_tensors = [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
        rollout = batch.get("rollout") if isinstance(batch, dict) else None
        if rollout is not None:
            tokens = int((rollout.prompt_mask.sum() + rollout.completion_mask.sum()).item())
            generated = int(rollout.completion_mask.sum().item())
        else:
            tokens, generated = int(batch["attention_mask"].sum().item()), 0
        qbytes, qparams = quantized_linear_bytes(policy)
        figures = {
            "params": sum(p.numel() for p in policy.parameters()) + (qparams - sum(
                p.numel() for p in policy.parameters() if getattr(p, "quant_state", None) is not None)),
            "trainable": sum(p.numel() for p in self.trainable),
            "weights": storage_bytes(module_tensors(policy)),
            "reference": sum(storage_bytes(module_tensors(m)) for m in ref),
            "optimizer": storage_bytes(opt_tensors),
            "gradients": sum(p.numel() * p.element_size() for p in self.trainable),
            "quantized_bytes": qbytes, "quantized_params": qparams,
            "peaks": {k: list(v) for k, v in self.tracker.peaks.items()},
            "tokens": tokens, "generated": generated,
        }
        Path(self.out).write_text(json.dumps(figures))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.measured is None:
            raise RuntimeError(f"no optimizer step in {MAX_STEPS} batches: nothing measured")


def overrides(kind: str, size: str, mode: str, out_dir: Path, probe_out: Path) -> list[str]:
    common = [f"+experiment={kind}", f"model={size}", *MODES[mode], "trainer.precision=32-true",
              f"trainer.max_steps={MAX_STEPS}", "trainer.enable_progress_bar=false",
              "++trainer.enable_model_summary=false", "++trainer.enable_checkpointing=false",
              "trainer.limit_val_batches=0",
              "callbacks.model_checkpoint=null", "callbacks.hf_export=null", "logger.wandb=null", "logger.csv=null",
              "data.batch_size=4", f"paths.root_dir='{ROOT}'", f"paths.output_dir='{out_dir}'",
              f"trainer.profiler={{_target_:{__name__}.PhaseNames}}",
              f"+callbacks.memory_probe={{_target_:{__name__}.MemoryProbe,out:'{probe_out}'}}"]
    if kind == "grpo":
        common += ["algorithm.num_generations=2", "algorithm.micro_batch_size=8", "sampler.max_tokens=32",
                   "++sampler.generate_kwargs.min_new_tokens=32"]
    else:
        common += ["data.max_length=256"]
    return common


def measure(kind: str, size: str, mode: str) -> dict:
    from hydra import compose, initialize_config_dir

    from secreason.run import train

    with tempfile.TemporaryDirectory() as tmp:
        probe_out = Path(tmp) / "figures.json"
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=overrides(kind, size, mode, Path(tmp) / "run", probe_out))
        train(cfg)
        figures = json.loads(probe_out.read_text())
    from secreason.tiny import SIZES as TINY_SIZES
    from secreason.tiny import VOCAB_SIZE

    shape = TINY_SIZES[size]
    return {"kind": kind, "size": size, "mode": mode, **figures,
            "hidden": shape["hidden_size"], "layers": shape["num_hidden_layers"], "vocab": VOCAB_SIZE,
            "kv_dim": shape["num_key_value_heads"] * shape["head_dim"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument("--load", help="report the figures a --json run wrote, without measuring")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if args.load:
        runs = json.loads(Path(args.load).read_text())
    else:
        runs = [measure(k, s, m) for s in args.sizes for k in args.kinds for m in args.modes]
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    print(report(runs))


if __name__ == "__main__":
    main()
