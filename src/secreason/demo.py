"""make demo: SFT then GRPO on the synthetic verifiable tasks with the tiny offline model.

    python -m secreason.demo [GRPO overrides, e.g. sampler=vllm]

Prints `reward before=… after=…`: the held-out (rl_test, never trained on) mean correctness
reward after SFT and after GRPO, over 4 samples per prompt at the training temperature (the
policy's expected reward); greedy accuracy is printed beside it. Each stage is an ordinary `python train.py` run whose
logs and HF checkpoint land under logs/demo/<time>/.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_stage(name: str, overrides: list[str], run_dir: Path) -> Path:
    """Run train.py with `overrides`; its output goes to run_dir/stdout.log. Returns the HF model dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    print(f"[demo] {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    with open(run_dir / "stdout.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = (run_dir / "stdout.log").read_text().strip().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"[demo] {name} failed (exit {proc.returncode}); log: {run_dir / 'stdout.log'}")
    print(f"[demo] {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return run_dir / "hf_model"


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=.", *overrides])


def heldout(model_dir: Path, overrides: list[str]) -> dict[str, dict[str, float]]:
    """Held-out correctness on the GRPO config's rl_test split (format penalty off): sampled at
    the sampler's temperature (4 per prompt) and greedy."""
    from hydra.utils import instantiate

    from secreason.heldout import heldout_scores
    from secreason.models import load_causal_lm, load_tokenizer

    cfg = compose(["+experiment=demo_grpo", "format_penalty=none", *overrides])
    tok = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir)).eval()
    data = instantiate(cfg.data, tokenizer=tok, _convert_="partial")
    rows, rewards = data.test_rows(), instantiate(cfg.rewards)  # with the format_penalty group's penalty
    kw = dict(max_tokens=int(cfg.sampler.max_tokens), think_tags=tuple(cfg.think_tags), seed=int(cfg.seed))
    return {"sampled": heldout_scores(model, tok, rows, rewards, temperature=float(cfg.sampler.temperature),
                                      samples=4, **kw),
            "greedy": heldout_scores(model, tok, rows, rewards, temperature=0.0, **kw)}


def brief(scores: dict[str, dict[str, float]]) -> str:
    keys = ("correctness", "think_len_mean", "think_near_empty_frac", "completion_len_mean")
    return "; ".join(f"{mode}: " + ", ".join(f"{k}={s[k]:.3f}" for k in keys) for mode, s in scores.items())


def main(argv: list[str]) -> int:
    import torch

    os.environ.setdefault("SECREASON_CACHE", str(ROOT / ".cache"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the tiny model gains nothing from 2 threads
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = ROOT / "logs" / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    t0 = time.perf_counter()
    sft = run_stage("SFT", ["+experiment=demo_sft", "num_threads=1"], out / "sft")
    before = heldout(sft, [])
    print(f"[demo] held-out after SFT: {brief(before)}", flush=True)
    grpo = run_stage("GRPO", ["+experiment=demo_grpo", f"model.path={sft}", "num_threads=1", *argv], out / "grpo")
    after = heldout(grpo, [])
    print(f"[demo] held-out after GRPO: {brief(after)}", flush=True)
    print(f"[demo] total {time.perf_counter() - t0:.0f} s; runs in {out}")
    print(f"[demo] greedy accuracy before={before['greedy']['correctness']:.3f} "
          f"after={after['greedy']['correctness']:.3f}")
    print(f"reward before={before['sampled']['correctness']:.3f} after={after['sampled']['correctness']:.3f}")
    return 0 if after["sampled"]["correctness"] > before["sampled"]["correctness"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
