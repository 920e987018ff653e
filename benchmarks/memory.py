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
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.profilers import PassThroughProfiler
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

GB = 1e9
MODES = {"full": [], "full_gc": ["model.gradient_checkpointing=true"], "lora": ["model.lora.r=8"],
         "qlora": ["model.lora.r=8", "model.quantization=nf4"]}
SIZES = ("tiny", "small")
KINDS = ("sft", "grpo")
MAX_STEPS = 6  # the probe stops the fit once it has measured a step

# Llama-3.1-8B (its config.json; nothing is downloaded).
LLAMA31_8B = dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128256,
                  tied=False)


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


# ------------------------------------------------------------------------------ the arithmetic

def breakdown(run: dict) -> dict:
    """The step's parts in bytes: persistent (weights, reference, optimizer) and transient
    (gradients, activations, sampler), and the peak."""
    peaks = run["peaks"]
    train_phases = ("grpo/fwd_bwd", "forward", "backward")
    act = max([live - grads for name, (live, grads) in peaks.items() if name in train_phases] or [0])
    sampler = peaks.get("grpo/generate", [0, 0])[0]
    persistent = run["weights"] + run["reference"] + run["optimizer"]
    transient = max(live for live, _ in peaks.values()) if peaks else 0
    return {"weights": run["weights"], "reference": run["reference"], "optimizer": run["optimizer"],
            "gradients": run["gradients"], "activations": act, "sampler": sampler, "peak": persistent + transient}


def per_parameter(runs: list[dict]) -> dict:
    """Bytes per parameter derived from the runs (fp32 training)."""
    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else float("nan")

    full = [r for r in runs if r["mode"].startswith("full")]
    adapters = [r for r in runs if not r["mode"].startswith("full")]
    quant = [r for r in runs if r["mode"] == "qlora" and r["quantized_params"]]
    return {
        "weights_fp32": mean(r["weights"] / r["params"] for r in full),
        "gradient_per_trainable": mean(r["gradients"] / r["trainable"] for r in runs),
        "adamw_per_trainable": mean(r["optimizer"] / r["trainable"] for r in runs),
        "reference_full": mean(r["reference"] / r["params"] for r in full if r["kind"] == "grpo"),
        "reference_lora": mean(r["reference"] / r["params"] for r in adapters if r["kind"] == "grpo"),
        "nf4_linear": mean(r["quantized_bytes"] / r["quantized_params"] for r in quant),
    }


def activation_fit(runs: list[dict], mode: str = "full") -> tuple[float, float]:
    """(a, b) of activation bytes per token = a·hidden·layers + b·vocab, least squares over the
    runs of `mode` (full: without, full_gc: with gradient checkpointing; two sizes: two unknowns)."""
    rows = [(r["hidden"] * r["layers"], r["vocab"], breakdown(r)["activations"] / r["tokens"])
            for r in runs if r["mode"] == mode and r["tokens"]]
    sxx = sum(x * x for x, _, _ in rows)
    sxy = sum(x * v for x, v, _ in rows)
    syy = sum(v * v for _, v, _ in rows)
    sxz = sum(x * z for x, _, z in rows)
    syz = sum(v * z for _, v, z in rows)
    det = sxx * syy - sxy * sxy
    if not rows or abs(det) < 1e-9:
        return float("nan"), float("nan")
    return (sxz * syy - sxy * syz) / det, (sxx * syz - sxy * sxz) / det


def llama_params(shape: dict) -> dict:
    """Parameter counts of a Llama: linear (the 4-bit-quantizable projections), the rest, total."""
    h, i, layers, v = shape["hidden"], shape["intermediate"], shape["layers"], shape["vocab"]
    kv = shape["kv_heads"] * shape["head_dim"]
    attn = h * shape["heads"] * shape["head_dim"] * 2 + h * kv * 2  # q, o; k, v
    linear = layers * (attn + 3 * h * i)
    other = v * h * (1 if shape["tied"] else 2) + layers * 2 * h + h  # embeddings, lm_head, norms
    return {"linear": linear, "other": other, "total": linear + other}


def lora_params(shape: dict, r: int) -> int:
    """LoRA parameters on every linear projection (all-linear): r·(in + out) each."""
    h, i, kv = shape["hidden"], shape["intermediate"], shape["kv_heads"] * shape["head_dim"]
    q = shape["heads"] * shape["head_dim"]
    per_layer = (h + q) * 2 + (h + kv) * 2 + (h + i) * 3
    return shape["layers"] * r * per_layer


@dataclass
class Setup:
    name: str
    gpus: int
    gpu_gb: float
    mode: str                 # full | lora | qlora
    master_fp32: bool = True  # fp32 weights, bf16-mixed autocast (full FT)
    cpu_offload: bool = False  # FSDP cpu_offload: parameters, gradients, optimizer state in host memory
    lines: list[str] = field(default_factory=list)


def plan_8b(bpp: dict, act: tuple[float, float], setups: list[Setup], shape: dict = LLAMA31_8B,
            tokens_per_micro_batch: int = 8 * 1024, lora_r: int = 16, engine_kv_gb: float = 10.0,
            bf16_activation_factor: float = 0.5) -> list[dict]:
    """Per-GPU GB of GRPO on `shape` for each setup, each term shown: (name, fits, total, lines).

    Weights: fp32 master (4 B) or bf16 (2 B) per parameter, NF4 linear weights at `bpp['nf4_linear']`
    with the rest bf16; gradients and AdamW state per trainable parameter in fp32 (measured 4 and 8 B);
    the reference: a bf16 copy (full FT; sharded under FSDP) or none (LoRA: adapters off); activations
    from the fitted a·hidden·layers + b·vocab bytes per token at `tokens_per_micro_batch`, halved
    for bf16-mixed; the colocated vLLM engine: its bf16 weights plus `engine_kv_gb` of KV cache.
    """
    counts = llama_params(shape)
    total, linear, other = counts["total"], counts["linear"], counts["other"]
    a, b = act
    act_gb = (a * shape["hidden"] * shape["layers"] + b * shape["vocab"]) * tokens_per_micro_batch \
        * bf16_activation_factor / GB
    engine_gb = total * 2 / GB + engine_kv_gb
    out = []
    for s in setups:
        terms: list[tuple[str, float]] = []
        shard = s.gpus if s.gpus > 1 else 1
        if s.mode == "full":
            wb = 4.0 if s.master_fp32 else 2.0
            state = total * (wb + bpp["gradient_per_trainable"] + bpp["adamw_per_trainable"]) / shard / GB
            label = (f"weights {wb:g} + grads {bpp['gradient_per_trainable']:.0f} + AdamW "
                     f"{bpp['adamw_per_trainable']:.0f} B × {total / 1e9:.2f}B params" + (f" / {shard}" if shard > 1 else ""))
            if s.cpu_offload:
                terms.append((f"{label}: in host memory (cpu_offload)", 0.0))
                terms.append(("one FSDP unit gathered (bf16 decoder layer)", counts["linear"] / shape["layers"] * 2 / GB))
            else:
                terms.append((label, state))
            if s.cpu_offload:  # sharded like the policy, with its settings: offloaded too
                terms.append(("reference, bf16: in host memory (cpu_offload)", 0.0))
            else:
                terms.append(("reference, bf16" + (f" / {shard}" if shard > 1 else ""), total * 2 / shard / GB))
        else:
            n_lora = lora_params(shape, lora_r)
            if s.mode == "lora":
                terms.append((f"base bf16 2 B × {total / 1e9:.2f}B", total * 2 / GB))
            else:
                terms.append((f"base NF4 {bpp['nf4_linear']:.3f} B × {linear / 1e9:.2f}B linear + bf16 2 B × "
                              f"{other / 1e9:.2f}B other", (linear * bpp["nf4_linear"] + other * 2) / GB))
            per = 4.0 + bpp["gradient_per_trainable"] + bpp["adamw_per_trainable"]
            terms.append((f"LoRA r={lora_r}: {per:.0f} B × {n_lora / 1e6:.0f}M", n_lora * per / GB))
            terms.append(("reference: the base, adapters off", 0.0))
        terms.append((f"activations, {tokens_per_micro_batch} tokens a micro-batch", act_gb))
        terms.append((f"vLLM engine: bf16 weights + {engine_kv_gb:g} GB KV", engine_gb))
        gb = sum(v for _, v in terms)
        out.append({"name": s.name, "fits": gb <= s.gpu_gb, "total_gb": gb, "gpu_gb": s.gpu_gb,
                    "lines": [f"{label} = {v:.1f} GB" for label, v in terms]})
    return out


SETUPS_8B = [
    Setup("1×80 GB, LoRA", 1, 80, "lora"), Setup("1×80 GB, QLoRA", 1, 80, "qlora"),
    Setup("1×80 GB, full (fp32 master)", 1, 80, "full"),
    Setup("1×141 GB, LoRA", 1, 141, "lora"), Setup("1×141 GB, QLoRA", 1, 141, "qlora"),
    Setup("1×141 GB, full (fp32 master)", 1, 141, "full"),
    Setup("1×141 GB, full, FSDP cpu_offload", 1, 141, "full", cpu_offload=True),
    Setup("8×80 GB, FSDP full (fp32 master)", 8, 80, "full"),
]


def table(runs: list[dict]) -> str:
    head = "| step | model | mode | params | trainable | weights | reference | optimizer | gradients | " \
           "activations | sampler | peak |\n|" + "---|" * 12
    rows = []
    for r in runs:
        b = breakdown(r)
        mb = {k: f"{v / 1e6:.2f} MB" for k, v in b.items()}
        rows.append(f"| {r['kind']} | {r['size']} | {r['mode']} | {r['params'] / 1e6:.2f}M | "
                    f"{r['trainable'] / 1e6:.3f}M | {mb['weights']} | {mb['reference']} | {mb['optimizer']} | "
                    f"{mb['gradients']} | {mb['activations']} | {mb['sampler']} | {mb['peak']} |")
    return "\n".join([head, *rows])


def report(runs: list[dict]) -> str:
    bpp = per_parameter(runs)
    lines = [table(runs), "", "bytes per parameter (fp32 training):"]
    lines += [f"  {k} = {v:.3f}" for k, v in bpp.items()]
    for mode in ("full", "full_gc"):
        a, b = activation_fit(runs, mode)
        lines.append(f"activation bytes per token ({mode}) = {a:.2f}·hidden·layers + {b:.2f}·vocab (fp32)")
    # the 8B recipes checkpoint activations (model.gradient_checkpointing: true)
    act = activation_fit(runs, "full_gc")
    if not all(map(math.isfinite, act)):
        act = activation_fit(runs, "full")
    lines += ["", "Llama-3.1-8B GRPO, per GPU (sampler=vllm colocated, gradient checkpointing):"]
    for row in plan_8b(bpp, act, SETUPS_8B):
        lines.append(f"  {row['name']}: {row['total_gb']:.1f} GB of {row['gpu_gb']:g} → "
                     f"{'fits' if row['fits'] else 'does not fit'}")
        lines += [f"      {line}" for line in row["lines"]]
    return "\n".join(lines)


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
