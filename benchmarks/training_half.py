#!/usr/bin/env python
"""The training half of grpo_step.py's small-model step, lever by lever, paired in one process.

    python benchmarks/training_half.py                 # 3 repetitions, bf16 autocast
    python benchmarks/training_half.py --profile       # plus torch.profiler's top ops of one step

grpo_step.py's shapes: 8 prompts × 4 completions, prompts of 48 tokens, completions of exactly 256
tokens, one micro-batch of 32 rows, shared prompts, bf16 autocast (what `trainer.precision=bf16-mixed`
does). Each repetition runs every setting in turn, so drift from other load on the host hits them alike:

- ref forward under `torch.no_grad` (the module) or `torch.inference_mode`;
- the policy's forward + backward (loss: Σ logprobs + the k3 KL to the reference, entropy on) with
  the logprobs gathered from a full log_softmax or from `selected_logprobs` (logits[id] − logsumexp).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from secreason.models import load_causal_lm  # noqa: E402
from secreason.modules.logprobs import completion_logprobs  # noqa: E402
from secreason.tiny import ensure_tiny  # noqa: E402
from shared_prompts import make_batch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    path = str(ensure_tiny(ROOT / ".cache", size="small"))
    model = load_causal_lm(path).train()
    ref = load_causal_lm(path).eval().requires_grad_(False)
    tensors, *_ = make_batch(8, 4, (48, 48), (256, 256))
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731

    def ref_forward(grad_off) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        with grad_off(), bf16():
            lp, _ = completion_logprobs(ref, *tensors, share_prompts=True)
        return time.perf_counter() - t0, lp.clone()

    ref_lp = ref_forward(torch.no_grad)[1]

    def fwd_bwd(selective: bool) -> float:
        t0 = time.perf_counter()
        with bf16():
            logp, _ = completion_logprobs(model, *tensors, with_entropy=True, share_prompts=True, selective=selective)
        d = ref_lp - logp
        (logp.sum() + 0.02 * (d.exp() - d - 1).sum()).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    settings = {"ref: no_grad": lambda: ref_forward(torch.no_grad)[0],
                "ref: inference_mode": lambda: ref_forward(torch.inference_mode)[0],
                "fwd+bwd: log_softmax": lambda: fwd_bwd(False),
                "fwd+bwd: selective": lambda: fwd_bwd(True)}
    for fn in settings.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in settings}
    for rep in range(args.reps):
        for name, fn in settings.items():
            times[name].append(fn())
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    print(f"\nsmall model, 32 rows × (48 + 256) tokens, bf16 autocast, {torch.get_num_threads()} threads; "
          f"medians of {args.reps} (paired ratio = median of per-rep B/A)")
    print("| setting | s (median) | paired ratio |\n|---|---|---|")
    names = list(settings)
    for a, b in ((names[0], names[1]), (names[2], names[3])):
        ratio = statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))
        print(f"| {a} | {statistics.median(times[a]):.2f} | — |")
        print(f"| {b} | {statistics.median(times[b]):.2f} | ×{ratio:.2f} |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ref_forward(torch.no_grad)
            fwd_bwd(False)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
