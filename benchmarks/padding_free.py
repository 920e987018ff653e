#!/usr/bin/env python
"""GRPO's training half with padded micro-batches against padding-free ones (`algorithm.padding_free`).

    python benchmarks/padding_free.py              # small model, 8 prompts × 4, 3 repetitions

The shapes of grpo_step.py and shared/notes/grpo-step-floor.md: 48-token prompts, completions of
32–256 tokens, micro-batches of 8 rows, bf16 autocast (`--fp32` for fp32), the policy's forward and
backward with the sum of logprobs as the loss. Three settings, run in turn in one process so that
drift from other load on the host hits them alike (paired A/B):

- padded, length cut: rows longest first, every row runs [prompt, completion] padded to the micro-batch;
- padded, auto cut + shared prompts: GRPOModule's default before padding_free;
- padding-free: the same micro-batches, each one packed varlen row of real tokens only.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from secreason.models import load_causal_lm  # noqa: E402
from secreason.modules.grpo import micro_batch_rows  # noqa: E402
from secreason.modules.logprobs import completion_logprobs  # noqa: E402
from secreason.tiny import ensure_tiny  # noqa: E402
from shared_prompts import make_batch, select  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    args = ap.parse_args()
    model = load_causal_lm(str(ensure_tiny(ROOT / ".cache", size=args.size))).train()
    tensors, plen, clen, groups = make_batch(8, 4, (48, 48), (32, 256))
    length_cut = micro_batch_rows(clen, args.micro_batch)
    settings = {
        "padded, length cut": (length_cut, {}),
        "padded, auto cut + shared prompts": (micro_batch_rows(clen, args.micro_batch, groups, plen),
                                              {"share_prompts": True}),
        "padding-free": (length_cut, {"padding_free": True}),
    }
    autocast = contextlib.nullcontext if args.fp32 else lambda: torch.autocast("cpu", dtype=torch.bfloat16)

    def fwd_bwd(micro, how: dict) -> float:
        t0 = time.perf_counter()
        for rows in micro:
            with autocast():
                logp, _ = completion_logprobs(model, *select(tensors, rows), with_entropy=True, **how)
            logp.sum().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    fwd_bwd(*settings["padding-free"])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in settings}
    for rep in range(args.reps):
        for name, (micro, how) in settings.items():
            times[name].append(fwd_bwd(micro, how))
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    real = int(tensors[1].sum() + tensors[3].sum())
    padded = sum(int(select(tensors, rows)[1].numel() + select(tensors, rows)[3].numel()) for rows in length_cut)
    base = statistics.median(times["padded, length cut"])
    print(f"\n{args.size} model, 8 prompts × 4, prompts 48 tokens, completions 32–256 "
          f"(mean {clen.float().mean():.0f}), micro-batch {args.micro_batch}, "
          f"{'fp32' if args.fp32 else 'bf16 autocast'}; token positions: padded {padded}, real {real}")
    print("| setting | fwd+bwd s (median) | vs padded |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {base / statistics.median(t):.2f}× |")


if __name__ == "__main__":
    main()
