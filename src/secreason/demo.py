"""make demo: SFT, then GRPO and a shuffled-reward control from the same SFT model, on held-out arithmetic.

    python -m secreason.demo [GRPO overrides, e.g. sampler=vllm or seed=1]
                             [--sft OVERRIDE ...] [--limit N] [--samples K] [--out DIR] [--serial]

Stages, each an ordinary `python train.py` run whose logs and HF model land under logs/demo/<time>/:

1. `sft`:     `+experiment=demo_sft`, stopped while the model is partly right on held-out prompts
              (the step count is measured, see conf/experiment/demo_sft.yaml);
2. `grpo`:    `+experiment=demo_grpo` from the SFT model;
3. `control`: `+experiment=demo_control`, the same run (steps, seed, start) with every batch's rewards
              shuffled across its completions (secreason.rewards.control): what training alone does.

The two GRPO arms run side by side (one thread each; `--serial` runs them one after the other). Then
the SFT model and both arms are scored on the held-out prompts (rl_test: digit triples never trained
on) and one table is printed: greedy accuracy with a 95% Wilson interval, and the sampled reward
(mean correctness of K samples per prompt at the sampler's temperature: the policy's expected reward)
with a 95% normal interval over the prompts' means. A PNG of both arms' reward, think length and KL
curves is written beside the runs. The last line is `reward before=… after=…` (sampled, GRPO arm).

Arguments: `--sft KEY=VALUE` goes to the SFT stage only; every other `KEY=VALUE` goes to both GRPO
arms and to the held-out scoring config (so `seed=…` and `sampler.*` match); `seed=…` also reaches
SFT. `--limit N` scores only the first N held-out prompts (for smoke tests).
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[2]
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
ARMS = ("grpo", "control")
ARM_EXPERIMENT = {"grpo": "demo_grpo", "control": "demo_control"}


# ---- intervals and the table (pure, no torch) -------------------------------------------------------

def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion successes/n ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high): the normal interval mean ± z·s/√n with the sample std s (n − 1)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0, 0.0
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def prompt_means(values: Sequence[float], samples: int) -> list[float]:
    """Per-prompt means of `values`, laid out prompt by prompt with `samples` values each."""
    if samples < 1 or len(values) % samples:
        raise ValueError(f"{len(values)} values are not whole groups of {samples}")
    return [sum(values[i:i + samples]) / samples for i in range(0, len(values), samples)]


@dataclass
class HeldOut:
    """One model's held-out scores: greedy correctness per prompt, sampled correctness per sample."""

    greedy: list[float]
    sampled: list[float]
    samples: int
    think_len: float = float("nan")

    @property
    def n(self) -> int:
        return len(self.greedy)

    def accuracy(self) -> tuple[float, float, float]:
        """Greedy accuracy and its 95% Wilson interval (a score counts as correct when ≥ 0.5)."""
        k = sum(1 for v in self.greedy if v >= 0.5)
        low, high = wilson_interval(k, self.n)
        return (k / self.n if self.n else 0.0), low, high

    def reward(self) -> tuple[float, float, float]:
        """Mean sampled reward and a 95% normal interval over the prompts' means (samples of one
        prompt are not independent, so the prompt is the unit)."""
        return mean_interval(prompt_means(self.sampled, self.samples))


def flips(before: HeldOut, after: HeldOut) -> tuple[int, int]:
    """(wrong → right, right → wrong): prompts whose greedy answer changed, against `before`
    (the same prompts in the same order)."""
    if before.n != after.n:
        raise ValueError(f"{after.n} prompts against {before.n}")
    up = sum(1 for b, a in zip(before.greedy, after.greedy) if b < 0.5 <= a)
    down = sum(1 for b, a in zip(before.greedy, after.greedy) if a < 0.5 <= b)
    return up, down


def format_table(rows: Sequence[tuple[str, HeldOut]]) -> str:
    """The demo's table: one line per model, the first being the baseline the deltas (and the
    greedy answers that flipped, wrong→right/right→wrong) refer to."""
    lines = [f"{'model':<20} {'n':>4}  {'greedy accuracy [95% Wilson]':<28} {'Δ':>7} {'flips +/-':>9}  "
             f"{'sampled reward [95% CI]':<24} {'Δ':>7}  {'think':>5}"]
    base = rows[0][1] if rows else None
    for name, scores in rows:
        acc, acc_lo, acc_hi = scores.accuracy()
        rew, rew_lo, rew_hi = scores.reward()
        up, down = flips(base, scores)
        lines.append(f"{name:<20} {scores.n:>4}  {acc:.3f} [{acc_lo:.3f}, {acc_hi:.3f}]{'':<8} "
                     f"{acc - base.accuracy()[0]:>+7.3f} {f'+{up}/-{down}':>9}  "
                     f"{rew:.3f} [{rew_lo:.3f}, {rew_hi:.3f}]{'':<4} {rew - base.reward()[0]:>+7.3f}  "
                     f"{scores.think_len:>5.1f}")
    return "\n".join(lines)


# ---- stages -------------------------------------------------------------------------------------------

def stage_command(experiment: str, overrides: Sequence[str], run_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), f"+experiment={experiment}", "num_threads=1",
            *overrides, f"hydra.run.dir={run_dir}"]


def start_stage(name: str, cmd: list[str], run_dir: Path) -> tuple[subprocess.Popen, Any, float]:
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[demo] {name}: {' '.join(cmd[1:])}", flush=True)
    log = open(run_dir / "stdout.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return proc, log, time.perf_counter()


def finish_stage(name: str, started: tuple[subprocess.Popen, Any, float], run_dir: Path) -> Path:
    """Wait for a stage; its output is in run_dir/stdout.log. Returns the HF model dir."""
    proc, log, t0 = started
    code = proc.wait()
    log.close()
    if code != 0:
        tail = (run_dir / "stdout.log").read_text(errors="replace").strip().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"[demo] {name} failed (exit {code}); log: {run_dir / 'stdout.log'}")
    print(f"[demo] {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return run_dir / "hf_model"


def run_stage(name: str, cmd: list[str], run_dir: Path) -> Path:
    return finish_stage(name, start_stage(name, cmd, run_dir), run_dir)


def compose(overrides: Sequence[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=.", *overrides])


class _Recording:
    """A reward set that keeps every correctness value it hands out (in call order)."""

    def __init__(self, reward_set: Any):
        self.reward_set, self.correctness = reward_set, []

    def __call__(self, completions, rows, **kwargs):
        result = self.reward_set(completions, rows, **kwargs)
        self.correctness += list(result.correctness)
        return result


def heldout(model_dir: Path, overrides: Sequence[str], samples: int = 4, limit: int | None = None) -> HeldOut:
    """Held-out correctness on demo_grpo's rl_test split (format penalty off): greedy, and `samples`
    completions per prompt at the sampler's temperature."""
    from hydra.utils import instantiate

    from secreason.heldout import heldout_scores
    from secreason.models import load_causal_lm, load_tokenizer

    cfg = compose(["+experiment=demo_grpo", "format_penalty=none", *overrides])
    tok = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir)).eval()
    data = instantiate(cfg.data, tokenizer=tok, _convert_="partial")
    rows = data.test_rows()[:limit]
    kw = dict(max_tokens=int(cfg.sampler.max_tokens), think_tags=tuple(cfg.think_tags), seed=int(cfg.seed))
    greedy, sampled = _Recording(instantiate(cfg.rewards)), _Recording(instantiate(cfg.rewards))
    stats = heldout_scores(model, tok, rows, greedy, temperature=0.0, **kw)
    heldout_scores(model, tok, rows, sampled, temperature=float(cfg.sampler.temperature), samples=samples, **kw)
    return HeldOut(greedy.correctness, sampled.correctness, samples, float(stats.get("think_len_mean", math.nan)))


def split_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m secreason.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--sft", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for the SFT stage only (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N held-out prompts")
    parser.add_argument("--samples", type=int, default=4, help="sampled completions per held-out prompt")
    parser.add_argument("--out", type=Path, default=None, help="run dir (default logs/demo/<time>)")
    parser.add_argument("--serial", action="store_true", help="run the two GRPO arms one after the other")
    args, overrides = parser.parse_known_args(list(argv))
    unknown = [o for o in overrides if o.startswith("--")]
    if unknown:
        parser.error(f"unknown option {unknown[0]}")
    args.grpo = overrides
    # the seed is the demo's: SFT, both arms and the held-out scoring share it
    args.sft = [o for o in overrides if o.split("=", 1)[0] in ("seed", "+seed")] + args.sft
    return args


def main(argv: Sequence[str]) -> int:
    args = split_args(argv)
    os.environ.setdefault("SECREASON_CACHE", str(ROOT / ".cache"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the tiny model gains nothing from 2 threads
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = (args.out or ROOT / "logs" / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    t0 = time.perf_counter()
    sft = run_stage("SFT", stage_command("demo_sft", args.sft, out / "sft"), out / "sft")
    dirs = {arm: out / arm for arm in ARMS}
    cmds = {arm: stage_command(ARM_EXPERIMENT[arm], [f"model.path={sft}", *args.grpo], dirs[arm]) for arm in ARMS}
    models: dict[str, Path] = {}
    if args.serial:
        for arm in ARMS:
            models[arm] = run_stage(arm.upper(), cmds[arm], dirs[arm])
        before = heldout(sft, args.grpo, args.samples, args.limit)
    else:
        running = {arm: start_stage(arm.upper(), cmds[arm], dirs[arm]) for arm in ARMS}
        before = heldout(sft, args.grpo, args.samples, args.limit)  # scored while both arms train
        for arm in ARMS:
            models[arm] = finish_stage(arm.upper(), running[arm], dirs[arm])
    after = {arm: heldout(models[arm], args.grpo, args.samples, args.limit) for arm in ARMS}
    wall = time.perf_counter() - t0

    print(f"[demo] held-out prompts (digit triples never trained on), greedy and {args.samples} samples each:")
    print(format_table([("SFT (before)", before), ("GRPO", after["grpo"]),
                        ("control (shuffled)", after["control"])]))
    from secreason.plots import demo_curves

    png = demo_curves({"GRPO": dirs["grpo"] / "csv" / "metrics.csv",
                       "control (shuffled rewards)": dirs["control"] / "csv" / "metrics.csv"},
                      out / "demo_curves.png")
    print(f"[demo] curves: {png}")
    print(f"[demo] total {wall:.0f} s; runs in {out}")
    acc = {name: s.accuracy()[0] for name, s in (("before", before), *after.items())}
    print(f"[demo] greedy accuracy before={acc['before']:.3f} after={acc['grpo']:.3f} "
          f"control={acc['control']:.3f}")
    reward = {name: s.reward()[0] for name, s in (("before", before), *after.items())}
    print(f"reward before={reward['before']:.3f} after={reward['grpo']:.3f}")
    return 0 if reward["grpo"] > reward["before"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
