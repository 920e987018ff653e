"""The arithmetic of benchmarks/memory.py: a measured step's parts, the bytes per parameter and the
activation law derived from the runs, and the Llama-3.1-8B plan built from them (each sum kept as
a printable line). Pure: no torch; covered by tests/test_memory_plan.py."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

GB = 1e9

# Llama-3.1-8B (its config.json; nothing is downloaded).
LLAMA31_8B = dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128256,
                  tied=False)


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
