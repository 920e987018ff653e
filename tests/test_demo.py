"""The learning demo (`make demo`, secreason.demo): its shuffled-reward control, its intervals and
table, its figure, and one short end-to-end run with tiny step counts."""
from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secreason.demo import HeldOut, flips, format_table, mean_interval, prompt_means, split_args, wilson_interval
from secreason.rewards.control import ShuffledRewards, ShuffledRewardSet, permutation, shuffle_result
from secreason.rewards.sets import RewardResult, RewardSet

REPO = Path(__file__).resolve().parents[1]


# ---- the shuffled-reward wrapper -------------------------------------------------------------------

def _result() -> RewardResult:
    return RewardResult(total=[1.0, -1.0, 0.0, 1.0], correctness=[1.0, 0.0, 0.0, 1.0],
                        format_penalty=[0.0, -1.0, 0.0, 0.0],
                        per_reward={"math": [1.0, 0.0, 0.0, 1.0], "mcqa": [None, None, None, None]},
                        penalised=[False, True, False, False], routed=[True, True, True, True],
                        penalty_reasons=[[], ["short_think"], [], []], stats={"math/timeouts": 0, "unrouted": 0},
                        reason_names=("short_think",))


def test_shuffle_result_applies_a_hand_computed_permutation_to_every_row_field():
    perm = [2, 0, 3, 1]  # row i takes the result of row perm[i]
    out = shuffle_result(_result(), perm)
    assert out.total == [0.0, 1.0, 1.0, -1.0]
    assert out.correctness == [0.0, 1.0, 1.0, 0.0]
    assert out.format_penalty == [0.0, 0.0, 0.0, -1.0]
    assert out.per_reward == {"math": [0.0, 1.0, 1.0, 0.0], "mcqa": [None, None, None, None]}
    assert out.penalised == [False, False, False, True]
    assert out.penalty_reasons == [[], [], [], ["short_think"]]
    assert out.stats == {"math/timeouts": 0, "unrouted": 0} and out.reason_names == ("short_think",)
    # the batch's logged numbers are the unshuffled batch's
    assert out.metrics() == _result().metrics()


def _count_math(completions, answer=None, **_):
    return [1.0 if isinstance(c, str) and c.endswith(f"Answer: {a}") else 0.0 for c, a in zip(completions, answer)]


def _batch(n: int = 8):
    rows = [{"task": "math", "prompt": f"What is {i}+1+1?", "answer": str(i + 2)} for i in range(n // 2)
            for _ in range(2)]
    completions = [f"<think> x.</think>Answer: {int(r['answer']) + (k % 3 == 0)}" for k, r in enumerate(rows)]
    return completions, rows


def test_shuffled_rewards_permute_the_inner_result_and_keep_the_batch_stats():
    inner = RewardSet({"math": {"fn": _count_math, "weight": 1.0, "tasks": ["math"]}})
    wrapped = ShuffledRewards(inner, seed=3)
    completions, rows = _batch()
    plain, shuffled = inner(completions, rows), wrapped(completions, rows)
    perm = wrapped.permutation_for(completions, rows)
    assert sorted(perm) == list(range(len(rows))) and perm != list(range(len(rows)))
    assert shuffled.total == [plain.total[j] for j in perm]
    assert shuffled.correctness == [plain.correctness[j] for j in perm]
    assert sorted(shuffled.total) == sorted(plain.total)
    assert shuffled.metrics()["train/reward/correctness"] == plain.metrics()["train/reward/correctness"]
    assert wrapped.tasks == inner.tasks == frozenset({"math"})
    # pure: the same batch gets the same permutation, another seed another one
    assert wrapped(completions, rows).total == shuffled.total
    assert ShuffledRewards(inner, seed=4).permutation_for(completions, rows) != perm
    assert permutation(8, 3, "k") == permutation(8, 3, "k") != permutation(8, 3, "l")


def test_shuffled_rewards_never_raise_on_odd_completions_and_rows():
    inner = RewardSet({"math": {"fn": _count_math, "weight": 1.0, "tasks": ["math"]}})
    wrapped = ShuffledRewards(inner, seed=0)
    odd = [None, {"content": 1}, "", "\udcff surrogate", 7]
    rows = [{"task": "math", "answer": "2"}, {"task": "math", "prompt": None, "answer": "2"},
            {"task": "math", "prompt": object(), "answer": "2"}, {"task": "math", "answer": None},
            {"task": "other", "prompt": "x", "answer": "2"}]
    out = wrapped(odd, rows, completion_ids=[[1]] * 5)
    assert len(out.total) == 5 and all(math.isfinite(v) for v in out.total)
    assert wrapped([], []).total == []


def test_demo_control_selects_the_wrapper_from_config(compose_train, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose_train("+experiment=demo_control", "seed=5", output_dir=tmp_path)
    grpo = compose_train("+experiment=demo_grpo", "seed=5", output_dir=tmp_path)
    assert cfg.task_name == "demo_control" and cfg.seed == grpo.seed == 5
    raw = lambda c, key: OmegaConf.to_container(c[key], resolve=False)  # noqa: E731
    for key in ("trainer", "algorithm", "data", "sampler", "format_penalty"):
        assert raw(cfg, key) == raw(grpo, key), key  # the same run as the GRPO arm ...
    control_rewards, grpo_rewards = raw(cfg, "rewards"), raw(grpo, "rewards")
    assert control_rewards.pop("_target_") == "secreason.rewards.control.ShuffledRewardSet"
    assert control_rewards.pop("seed") == "${seed}"
    grpo_rewards.pop("_target_")
    assert control_rewards == grpo_rewards  # ... with the same rewards, shuffled
    reward_set = instantiate(cfg.algorithm.module.reward_set)  # what GRPOModule gets
    assert isinstance(reward_set, ShuffledRewardSet) and reward_set.seed == 5
    assert reward_set.format_penalty is not None and "math" in reward_set.tasks


# ---- intervals and the table -----------------------------------------------------------------------

def test_wilson_interval_matches_hand_computation():
    # 8/10, z = 1.96: centre (0.8 + 1.96²/20)/(1 + 1.96²/10) = 0.71674,
    # half 1.96·√(0.8·0.2/10 + 1.96²/400)/(1 + 1.96²/10) = 0.22658
    low, high = wilson_interval(8, 10, z=1.96)
    assert low == pytest.approx(0.49016, abs=1e-5) and high == pytest.approx(0.94332, abs=1e-5)
    low, high = wilson_interval(0, 10, z=1.96)  # never below 0, unlike the normal interval:
    assert low == 0.0 and high == pytest.approx(0.38416 / 1.38416, abs=1e-6)  # (z²/n)/(1 + z²/n) = 0.27754
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mean_interval_and_prompt_means():
    mean, low, high = mean_interval([0.0, 1.0, 1.0, 0.0], z=1.96)  # s = √(1/3), half = 1.96·s/2
    assert (mean, low, high) == pytest.approx((0.5, 0.5 - 0.565803, 0.5 + 0.565803), abs=1e-6)
    assert mean_interval([]) == (0.0, 0.0, 0.0) and mean_interval([0.3]) == (0.3, 0.3, 0.3)
    assert prompt_means([1, 0, 1, 1, 0, 0, 0, 1], 4) == [0.75, 0.25]
    with pytest.raises(ValueError):
        prompt_means([1, 0, 1], 2)


def test_table_reports_n_intervals_deltas_and_flips_against_the_first_row():
    before = HeldOut(greedy=[1.0] * 8 + [0.0] * 2, sampled=[1, 0] * 10, samples=2, think_len=13.0)
    after = HeldOut(greedy=[0.0] + [1.0] * 9, sampled=[1, 1] * 10, samples=2, think_len=12.5)
    assert before.accuracy() == pytest.approx((0.8, *wilson_interval(8, 10)))
    assert before.reward() == (0.5, 0.5, 0.5)  # every prompt's mean is 0.5: no spread between prompts
    assert flips(before, after) == (2, 1)  # prompts 8 and 9 now right, prompt 0 now wrong
    lines = format_table([("SFT (before)", before), ("GRPO", after)]).splitlines()
    assert len(lines) == 3 and "Wilson" in lines[0]
    assert re.match(r"SFT \(before\)\s+10\s+0\.800 \[0\.490, 0\.943\]\s+\+0\.000\s+\+0/-0\s+"
                    r"0\.500 \[0\.500, 0\.500\]\s+\+0\.000\s+13\.0$", lines[1]), lines[1]
    # 9/10: Wilson [0.596, 0.982]
    assert re.match(r"GRPO\s+10\s+0\.900 \[0\.596, 0\.982\]\s+\+0\.100\s+\+2/-1\s+"
                    r"1\.000 \[1\.000, 1\.000\]\s+\+0\.500\s+12\.5$", lines[2]), lines[2]


def test_demo_arguments_split_between_stages():
    args = split_args(["sampler=vllm", "seed=2", "--sft", "trainer.max_steps=3", "--limit", "8"])
    assert args.grpo == ["sampler=vllm", "seed=2"]
    assert args.sft == ["seed=2", "trainer.max_steps=3"]
    assert args.limit == 8 and args.samples == 4 and not args.serial


def test_curves_png_from_metrics_csv(tmp_path):
    from secreason.plots import demo_curves, read_metric, rolling_mean

    runs = {}
    for name, slope in (("grpo", 0.01), ("control", 0.0)):
        path = tmp_path / name / "metrics.csv"
        path.parent.mkdir()
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "train/reward/correctness", "rollout/think_len_mean", "train/kl", "data/rows_read"])
            w.writerow(["", "", "", "", "100"])  # a setup row: no step, no metrics
            for step in range(30):
                w.writerow([step, 0.3 + slope * step, 13.0, 0.01 * step, ""])
        runs[name] = path
    assert read_metric(runs["grpo"], "train/kl")[0] == list(range(30))
    assert rolling_mean([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    png = demo_curves(runs, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- end to end -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_runs_end_to_end_with_tiny_step_counts(tmp_path, tiny_model_dir):
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "secreason.demo", "--sft", "trainer.max_steps=3", "--limit", "6", "--samples", "2",
         "--out", str(out), "trainer.max_steps=2", "data.batch_size=4", "algorithm.num_generations=2"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    print(f"demo smoke: {time.perf_counter() - t0:.0f} s")
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-3000:]  # 1: the reward did not rise
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"reward before=\d\.\d{3} after=\d\.\d{3}", lines[-1]), lines[-1]
    table = [line for line in lines if re.match(r"(SFT \(before\)|GRPO|control \(shuffled\))\s+6\s", line)]
    assert len(table) == 3, proc.stdout
    for arm in ("sft", "grpo", "control"):
        assert (out / arm / "hf_model" / "config.json").is_file(), arm
    overrides = (out / "control" / ".hydra" / "overrides.yaml").read_text()
    assert "+experiment=demo_control" in overrides and "trainer.max_steps=2" in overrides
    rows = list(csv.DictReader(open(out / "control" / "csv" / "metrics.csv")))
    assert sum(1 for r in rows if r.get("train/reward/correctness")) == 2
    assert (out / "demo_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert f"[demo] curves: {out / 'demo_curves.png'}" in proc.stdout
    assert not list(out.glob(".*.tmp")), "the PNG's temp file was left behind"
