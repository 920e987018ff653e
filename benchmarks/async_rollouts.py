"""One-step off-policy rollouts (algorithm.async_rollouts=1) against on-policy, in the same run.

One `train.py` run of ours (the grpo_bench shapes: 8 prompts × 4 completions, forced to the full
length) switches `async_rollouts` in blocks of steps, sync block, async block, … (a per-step A/B would
never overlap: a job runs for the *next* step). The first step of each async block generates in line
(no job was started for it) and is left out, as is the first sync step after an async block (its
predecessor's job ran against it). Each sync block is compared with the async block right after it
(about the same load from other jobs): `async_gain` is the median over those pairs of sync/async.

    python benchmarks/async_rollouts.py --model small --max-tokens 64 --sampler hf --blocks 2 --block 3

On 2 cores the overlap is bounded: generation and training each use every core when they run
alone, so running them at once mostly shares the same cores; what overlaps is each phase's
serial part (Python, sampling, small ops) and the idle time of the other.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_bench.ours import overrides  # noqa: E402
from grpo_bench.spec import MODELS, ROOT  # noqa: E402


class BlockSwitch(L.Callback):
    """Sets `async_rollouts` per block of `block` steps (sync first) and times each step's wall clock."""

    def __init__(self, block: int, records_path: str) -> None:
        self.block, self.records_path = int(block), records_path
        self.starts: list[float] = []
        self.modes: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = len(self.starts)
        mode = 0 if step == 0 else (step - 1) // self.block % 2  # step 0: warm-up, sync
        pl_module.async_rollouts = mode
        self.starts.append(time.perf_counter())
        self.modes.append(mode)

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())
        Path(self.records_path).write_text(json.dumps({"starts": self.starts, "modes": self.modes}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="small", choices=sorted(MODELS))
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--sampler", default="hf", choices=["hf", "vllm"])
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--blocks", type=int, default=2, help="sync/async block pairs")
    p.add_argument("--block", type=int, default=3, help="steps per block")
    args = p.parse_args()

    from hydra import compose, initialize_config_dir

    from grpo_bench.spec import PROMPTS_PER_STEP, select_prompts
    from secreason.run import train
    from secreason.tiny import ensure_tiny

    out = Path(tempfile.mkdtemp(prefix="async-bench-"))
    steps = 1 + 2 * args.blocks * args.block
    model_path = str(ensure_tiny(Path(os.environ.get("SECREASON_CACHE", ROOT / ".cache")), size=args.model))
    prompts_dir = out / "prompts"
    prompts_dir.mkdir()
    with open(prompts_dir / "rl_train.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in select_prompts(model_path, PROMPTS_PER_STEP * steps))
    spec = {"size": args.model, "system": args.sampler, "max_tokens": args.max_tokens, "prompts_dir": str(prompts_dir),
            "precision": args.precision, "warmup": 0, "steps": steps, "out_dir": str(out)}
    records = out / "blocks.json"
    ov = [o for o in overrides(spec, out / "events.json", out / "records.json") if "bench_recorder" not in o]
    ov += ["algorithm.is_cap=2.0",
           f"+callbacks.block_switch={{_target_:__main__.BlockSwitch,block:{args.block},records_path:'{records}'}}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=ov)
    t0 = time.perf_counter()
    train(cfg)
    rec = json.loads(records.read_text())
    starts, modes = rec["starts"], rec["modes"]
    per_step = [b - a for a, b in zip(starts, starts[1:])]
    # Per block pair (a sync block, then an async block: adjacent, so under about the same load):
    # the median step of each, without the warm-up step, an async block's first step (in line) and a
    # sync step right after an async one (the job of the step before ran against it).
    pairs = []
    for k in range(args.blocks):
        first = 1 + 2 * k * args.block
        sync_block = per_step[first + (1 if k else 0): first + args.block]
        async_block = per_step[first + args.block + 1: first + 2 * args.block]
        pairs.append((statistics.median(sync_block), statistics.median(async_block)))
    print(f"model={args.model} sampler={args.sampler} precision={args.precision} max_tokens={args.max_tokens} "
          f"steps={steps} wall={time.perf_counter() - t0:.0f}s")
    print("per-step s:", " ".join(f"{'A' if m else 'S'}{s:.2f}" for m, s in zip(modes, per_step)))
    print("block pairs (sync s/step, async s/step):", " ".join(f"({a:.2f}, {b:.2f})" for a, b in pairs))
    gains = [a / b for a, b in pairs]
    print(f"async_gain={statistics.median(gains):.2f} (median over {len(pairs)} block pairs of sync/async; "
          f"each pair: {' '.join(f'{g:.2f}' for g in gains)})")


if __name__ == "__main__":
    main()
