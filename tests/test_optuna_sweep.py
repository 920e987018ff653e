"""Issue 19, Must-show 4: GRPO's sweep objective is a held-out reward, and `hparams_search=grpo_optuna`
searches lr and β with it.

- `GRPOModule.validation_step` scores the held-out `rl_test` prompts, never the training ones, and
  Lightning's validation loop logs their mean correctness as `val/reward/correctness`: the same
  number `secreason.heldout.heldout_scores` (the demo's before/after figure) gives for those rows.
- `python train.py -m +experiment=grpo hparams_search=grpo_optuna`, 2 trials of 4 steps: each trial
  returns its last validation's `val/reward/correctness` to Optuna, and the best trial's params
  are written to `optimization_results.yaml`.
"""
from __future__ import annotations

import csv
import math
import re

import lightning as L
import pytest
import yaml

pytestmark = pytest.mark.slow

TASKS = "data.synth.tasks=[math,mcqa]"  # what the quick SFT below partly learns: correctness is not 0
QUIET = ["trainer.enable_progress_bar=false", "num_threads=1"]


def ok(proc) -> None:
    assert proc.returncode == 0, (f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
                                  f"--- stderr\n{proc.stderr[-5000:]}")


@pytest.fixture(scope="module")
def sft_model(run_train, tiny_model_dir, synth_dir):
    """A tiny SFT checkpoint that is partly right on math + mcqa (40 steps of the demo SFT)."""
    proc = run_train("+experiment=demo_sft", "trainer.max_steps=40", *QUIET)
    ok(proc)
    return proc.run_dir / "hf_model"


def test_validation_scores_the_held_out_split_like_heldout_scores(compose_train, sft_model, tmp_path):
    from hydra.utils import instantiate

    from secreason.heldout import heldout_scores
    from secreason.run import build_model, build_module

    cfg = compose_train("+experiment=grpo", f"model.path={sft_model}", TASKS, "data.batch_size=6",
                        "sampler.max_tokens=24", output_dir=tmp_path)
    _, model, tokenizer = build_model(cfg)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, _convert_="partial")
    module = build_module(cfg, model, tokenizer)
    datamodule.setup("fit")
    held_out = [b for batch in datamodule.val_dataloader() for b in batch["rows"]]
    assert [r["prompt"] for r in held_out] == [r["prompt"] for r in datamodule.test_rows()]
    assert not {r["prompt"] for r in held_out} & {it["row"]["prompt"] for it in datamodule.train_items}

    # 20 rows in batches of 6, 6, 6, 2: Lightning's epoch mean must weight the batch of 2 by its size
    # to match the plain mean over the 20 rows (the same batches there: padding cannot differ).
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=4)
    datamodule.test_rows = lambda: datamodule.load(datamodule.test_split)[:20]  # the first 20 held-out rows
    logged = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    expected = heldout_scores(module.model, tokenizer, datamodule.test_rows(), module.reward_set, temperature=0.0,
                              max_tokens=24, batch_size=6, think_tags=tuple(cfg.think_tags))
    assert expected["n"] == 20
    assert 0 < expected["correctness"] < 1, expected  # partly right: a wrong weighting would show
    assert logged["val/reward/correctness"] == pytest.approx(expected["correctness"], abs=1e-6)
    assert logged["val/reward/total"] == pytest.approx(expected["total"], abs=1e-6)


def test_optimized_metric_from_the_validation_loop_needs_it_on(run_train):
    proc = run_train("+experiment=grpo", "optimized_metric=val/reward/correctness", "trainer.max_steps=1", "logger=csv",
                     *QUIET, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: optimized_metric=val/reward/correctness: logged by the validation loop, which "
        "trainer.limit_val_batches=0 switches off"]


def last_values(metrics_csv, key: str) -> list[float]:
    return [float(r[key]) for r in csv.DictReader(open(metrics_csv)) if r.get(key)]


def test_grpo_optuna_maximises_the_held_out_reward(run_train, sft_model, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train(
        "-m", "+experiment=grpo", "hparams_search=grpo_optuna", "hydra.sweeper.n_trials=2", f"model.path={sft_model}",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "data.val_batch_size=100", TASKS,
        "data.batch_size=8", "algorithm.num_generations=4", "sampler.max_tokens=24", "logger=csv",
        f"hydra.sweep.dir={sweep}", *QUIET)
    ok(proc)
    trials = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    assert [p.name for p in trials] == ["0", "1"]  # 2 trials ran
    returned, params = [], []
    for trial in trials:
        chosen = dict(o.split("=", 1) for o in yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text()))
        lr, beta = float(chosen["algorithm.optim.lr"]), float(chosen["algorithm.kl.beta"])
        assert 1e-6 <= lr <= 1e-3 and 0 <= beta <= 0.5, chosen
        params.append({"algorithm.optim.lr": lr, "algorithm.kl.beta": beta})
        # validated at steps 2 and 4 on all held-out prompts (the sweep config switches validation on,
        # which +experiment=grpo switches off); the trial returns the last validation
        val = last_values(trial / "csv" / "metrics.csv", "val/reward/correctness")
        assert len(val) == 2 and all(0 <= v <= 1 for v in val), val
        assert last_values(trial / "csv" / "metrics.csv", "train/loss"), "no GRPO step ran"
        objective = re.findall(r"optimized_metric val/reward/correctness = (\S+)", (trial / "train.log").read_text())
        assert len(objective) == 1, trial
        returned.append(float(objective[0]))
        assert returned[-1] == pytest.approx(val[-1], abs=1e-6)
    print(f"trials {params} returned {returned}")
    assert any(v > 0 for v in returned), returned  # the SFT model is partly right: the value carries information
    assert params[0] != params[1]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(returned))  # direction: maximize
    best = [p for p, v in zip(params, returned) if math.isclose(v, max(returned), abs_tol=1e-9)]
    assert any(results["best_params"] == pytest.approx(p) for p in best), (results, params, returned)
