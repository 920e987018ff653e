"""`python train.py +experiment=grpo` as a user runs it: every loss_agg × format_penalty × advantage
combination in one Hydra multirun (issue 4, Must-show 2), and bad config values failing at start
with one line (Must-show 5)."""
from __future__ import annotations

import csv
import itertools
import math
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

LOSS_AGG = ["sample_mean", "token_mean", "seq_sum", "seq_sum_norm"]
FORMAT_PENALTY = ["none", "require_think", "think_quality"]
ADVANTAGE = ["group_norm", "group_mean", "rloo"]
POLICY_LOSS = ["clipped", "gspo", "cispo"]
# The tasks the quick SFT below partly learns: GRPO needs groups with mixed rewards to move at all
# (a random-init model scores 0 everywhere, so every group has zero variance and nothing changes).
TASKS = "data.synth.tasks=[math,mcqa]"
QUIET = ["trainer.enable_progress_bar=false", "num_threads=1"]


@pytest.fixture(autouse=True)
def _warm_cache(tiny_model_dir, synth_dir):
    """Build the tiny model and the synthetic set in-process once, not in the first subprocess."""


def ok(proc) -> None:
    assert proc.returncode == 0, (f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
                                  f"--- stderr\n{proc.stderr[-5000:]}")


# ------------------------------------------------------------------------------------ Must-show 5

BAD = [
    ("algorithm.kl.beta=-1", "algorithm.kl.beta"),
    ("algorithm.num_generations=1", "algorithm.num_generations"),
    ("loss_agg=nope", "loss_agg"),
    ("algorithm.clip_eps_low=1.5", "algorithm.clip_eps_low"),
    ("trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[k for _, k in BAD])
def test_bad_value_fails_at_start_with_one_line(run_train, override, key):
    proc = run_train("+experiment=grpo", override, "logger=csv", *QUIET, timeout=120)
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # one line, not Hydra's search path nor a traceback
    assert lines[0].startswith(f"error: {key}="), lines[0]
    assert "Traceback" not in proc.stdout
    # at start: nothing was trained or written
    assert not (proc.run_dir / "hf_model").exists() and not (proc.run_dir / "checkpoints").exists()
    assert "Trainer.fit" not in proc.stdout


def test_unknown_group_option_in_a_sweep_is_one_line(run_train):
    proc = run_train("-m", "+experiment=grpo", "loss_agg=sample_mean,nope", "advantage=rloo")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: loss_agg='nope' unknown; choose one of: "
                                   "sample_mean, seq_sum, seq_sum_norm, token_mean")


# ------------------------------------------------------------------------------------ Must-show 2

@pytest.fixture(scope="module")
def sft_model(run_train):
    """A tiny SFT checkpoint that is partly right on math + mcqa (60 steps of the demo SFT, ~30 s)."""
    proc = run_train("+experiment=demo_sft", "trainer.max_steps=60", *QUIET)
    ok(proc)
    return proc.run_dir / "hf_model"


def test_every_combination_runs_in_one_multirun_and_moves_the_policy(run_train, sft_model, tmp_path):
    sweep = tmp_path / "sweep"
    t0 = time.perf_counter()
    proc = run_train(
        "-m", "+experiment=grpo", "trainer.max_steps=3", f"model.path={sft_model}",
        f"loss_agg={','.join(LOSS_AGG)}", f"format_penalty={','.join(FORMAT_PENALTY)}",
        f"advantage={','.join(ADVANTAGE)}", "logger=csv", "data.batch_size=8", "algorithm.num_generations=4",
        "sampler.max_tokens=24", TASKS, f"hydra.sweep.dir={sweep}", *QUIET)
    wall = time.perf_counter() - t0
    print(f"GRPO multirun: 36 jobs in {wall:.0f} s")
    ok(proc)
    assert "Traceback" not in proc.stderr
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    assert len(jobs) == 36
    assert proc.stdout.count("hf_checkpoint: ") == 36
    start = load_file(sft_model / "model.safetensors")
    combos = set()
    for job in jobs:
        chosen = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        combos.add((chosen["loss_agg"], chosen["format_penalty"], chosen["advantage"]))
        weights = load_file(job / "hf_model" / "model.safetensors")
        assert weights.keys() == start.keys()
        change = max((weights[k] - start[k]).abs().max().item() for k in start)
        assert change > 0, f"job {job.name} {chosen}: the policy did not move"
        assert all(torch.isfinite(w).all() for w in weights.values()), job.name
        rows = [r for r in csv.DictReader(open(job / "csv" / "metrics.csv")) if r.get("train/loss")]
        assert len(rows) == 3, job.name
        for r in rows:
            for key in ("train/loss", "train/kl", "train/reward/total", "rollout/zero_std_frac"):
                assert math.isfinite(float(r[key])), (job.name, key)
    assert combos == set(itertools.product(LOSS_AGG, FORMAT_PENALTY, ADVANTAGE))


def test_every_policy_loss_runs_in_one_multirun_and_moves_the_policy(run_train, sft_model, tmp_path):
    """Issue 20, Must-show 1: the multirun above with policy_loss as a swept group, over
    policy_loss × loss_agg × advantage (36 jobs; tests/test_policy_loss.py checks the full 108-job list)."""
    sweep = tmp_path / "sweep"
    proc = run_train(
        "-m", "+experiment=grpo", "trainer.max_steps=2", f"model.path={sft_model}",
        f"policy_loss={','.join(POLICY_LOSS)}", f"loss_agg={','.join(LOSS_AGG)}", f"advantage={','.join(ADVANTAGE)}",
        "format_penalty=none", "logger=csv", "data.batch_size=8", "algorithm.num_generations=4",
        "sampler.max_tokens=24", TASKS, f"hydra.sweep.dir={sweep}", *QUIET)
    ok(proc)
    jobs = [p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()]
    assert len(jobs) == 36
    start = load_file(sft_model / "model.safetensors")
    combos = set()
    for job in jobs:
        chosen = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        combos.add((chosen["policy_loss"], chosen["loss_agg"], chosen["advantage"]))
        weights = load_file(job / "hf_model" / "model.safetensors")
        assert max((weights[k] - start[k]).abs().max().item() for k in start) > 0, (job.name, chosen)
        rows = [r for r in csv.DictReader(open(job / "csv" / "metrics.csv")) if r.get("train/loss")]
        assert len(rows) == 2 and all(math.isfinite(float(r["train/loss"])) for r in rows), job.name
    assert combos == set(itertools.product(POLICY_LOSS, LOSS_AGG, ADVANTAGE))


# ------------------------------------------------------------------------------------ issue 15, Must-show 5

def test_a_grpo_run_logs_penalty_reasons_reward_stats_and_group_std_to_csv_and_wandb(run_train):
    """The real configs (rewards=cyber, format_penalty=think_quality, logger=default: CSV + wandb
    offline): every reason the penalty can give, each reward's counters and the group std are logged."""
    from secreason.rewards.format_penalty import ThinkQuality

    proc = run_train("+experiment=grpo", "trainer.max_steps=2", "data.batch_size=4", "algorithm.num_generations=2",
                     "sampler.max_tokens=16", *QUIET)
    ok(proc)
    expected = ({f"train/penalty/{reason}" for reason in ThinkQuality.REASONS} | {"train/reward/std"}
                | {f"train/reward_stats/{name}/{stat}" for name in ("mcqa", "cwe", "cvss", "attack", "math",
                                                                     "format_penalty")
                   for stat in ("timeouts", "errors")} | {"train/reward_stats/unrouted"})
    rows = [r for r in csv.DictReader(open(proc.run_dir / "csv" / "metrics.csv")) if r.get("train/loss")]
    assert len(rows) == 2
    for key in expected:
        values = [r.get(key) for r in rows]
        assert all(v not in (None, "") and math.isfinite(float(v)) for v in values), (key, values)
    # wandb's offline run file is a log of protobuf records, whose history items carry each key as
    # plain UTF-8: every key is there, written by the same logging call as the CSV's.
    (run_file,) = (proc.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = run_file.read_bytes()
    missing = sorted(key for key in expected if key.encode() not in data)
    assert not missing, missing
