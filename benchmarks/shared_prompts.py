#!/usr/bin/env python
"""Policy forward+backward of one GRPO step with and without shared prompts, at prompt-heavy shapes.

    python benchmarks/shared_prompts.py            # small model, 8 prompts × 4, 3 repetitions

grpo_step.py compares whole steps with TRL on 48-token prompts and forced, equal completion lengths.
Security prompts are longer (CVE text, CTI reports) and completions vary in length: here prompts of
150–250 tokens (left-padded), completions of 32–256 tokens (right-padded), micro-batches of 8 rows,
bf16 autocast, sum of logprobs as the loss. Three settings, run in turn so drift hits them alike:

- length cut, no sharing: rows longest first, every row runs [prompt, completion];
- length cut, sharing: the same micro-batches, each distinct prompt once per micro-batch;
- auto cut, sharing: GRPOModule's default (`micro_batch_rows`: whole groups or length order,
  whichever runs fewer token positions).
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

from secreason.models import load_causal_lm  # noqa: E402
from secreason.modules.grpo import micro_batch_rows  # noqa: E402
from secreason.modules.logprobs import completion_logprobs  # noqa: E402
from secreason.tiny import ensure_tiny  # noqa: E402


def make_batch(prompts: int, n: int, prompt_range: tuple[int, int], completion_range: tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    plen = torch.randint(prompt_range[0], prompt_range[1] + 1, (prompts,), generator=g).repeat_interleave(n)
    clen = torch.randint(completion_range[0], completion_range[1] + 1, (prompts * n,), generator=g)
    width_p, width_c = int(plen.max()), int(clen.max())
    distinct = [torch.randint(10, 500, (int(plen[i * n]),), generator=g) for i in range(prompts)]
    prompt_ids = torch.zeros(prompts * n, width_p, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    for row in range(prompts * n):
        k = int(plen[row])
        prompt_ids[row, width_p - k:], prompt_mask[row, width_p - k:] = distinct[row // n], 1
    completion_ids = torch.randint(10, 500, (prompts * n, width_c), generator=g)
    completion_mask = (torch.arange(width_c)[None] < clen[:, None]).long()
    groups = torch.arange(prompts).repeat_interleave(n)
    return (prompt_ids, prompt_mask, completion_ids, completion_mask), plen, clen, groups


def select(tensors, rows: torch.Tensor):
    """What Rollout.select does: the rows, with all-padding prompt columns and trailing completion padding cut."""
    prompt_ids, prompt_mask, completion_ids, completion_mask = tensors
    pm = prompt_mask[rows]
    keep, t = pm.sum(0) > 0, int(completion_mask[rows].sum(-1).max())
    return prompt_ids[rows][:, keep], pm[:, keep], completion_ids[rows][:, :t], completion_mask[rows][:, :t]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--micro-batch", type=int, default=8)
    args = ap.parse_args()
    model = load_causal_lm(str(ensure_tiny(ROOT / ".cache", size=args.size))).train()
    tensors, plen, clen, groups = make_batch(8, 4, (150, 250), (32, 256))
    settings = {
        "length cut, no sharing": (micro_batch_rows(clen, args.micro_batch), False),
        "length cut, sharing": (micro_batch_rows(clen, args.micro_batch), True),
        "auto cut, sharing (default)": (micro_batch_rows(clen, args.micro_batch, groups, plen), True),
    }

    def fwd_bwd(micro, share: bool) -> float:
        t0 = time.perf_counter()
        for rows in micro:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logp, _ = completion_logprobs(model, *select(tensors, rows), share_prompts=share)
            logp.sum().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    fwd_bwd(*settings["length cut, no sharing"])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in settings}
    for rep in range(args.reps):
        for name, (micro, share) in settings.items():
            times[name].append(fwd_bwd(micro, share))
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    base = statistics.median(times["length cut, no sharing"])
    print(f"\n{args.size} model, 8 prompts × 4, prompts 150–250 tokens, completions 32–256, "
          f"micro-batches of {args.micro_batch}, {torch.get_num_threads()} threads")
    print("| setting | fwd+bwd median (s) | vs no sharing |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | ×{statistics.median(ts) / base:.2f} |")


if __name__ == "__main__":
    main()
