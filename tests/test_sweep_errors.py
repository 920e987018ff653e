"""A bad sweep arm fails alone (issue 15, Must-show 3): `python train.py -m +experiment=grpo
trainer.max_steps=2 algorithm.kl.beta=0.02,-1` runs the good arm to the end, reports the bad arm
(beta=-1: a ConfigError when GRPOModule is built) in one line, and exits 2 after a summary naming it.
The unit side (which errors are one line, the summary) is tests/test_cli_errors.py."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

QUIET = ["trainer.enable_progress_bar=false", "num_threads=1", "logger=csv"]
BAD_LINE = "algorithm.kl.beta=-1.0: must be ≥ 0"


@pytest.fixture(autouse=True)
def _warm_cache(tiny_model_dir, synth_dir):
    """Build the tiny model and the synthetic set in-process once, not in the subprocess."""


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(("error: ", "  #"))]


def sweep(run_train, tmp_path, *overrides: str):
    sweep_dir = tmp_path / "sweep"
    proc = run_train("-m", "+experiment=grpo", *overrides, *QUIET, f"hydra.sweep.dir={sweep_dir}", timeout=300)
    out = f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 2, out
    assert "Traceback" not in proc.stderr + proc.stdout, out
    return proc, sweep_dir, out


def test_must_show_3_a_bad_arm_fails_alone_and_the_sweep_exits_2(run_train, tmp_path):
    proc, sweep_dir, out = sweep(run_train, tmp_path, "trainer.max_steps=2", "algorithm.kl.beta=0.02,-1")
    arm = "#1 (+experiment=grpo trainer.max_steps=2 algorithm.kl.beta=-1"
    lines = error_lines(proc)
    assert len(lines) == 3, out
    assert lines[0].startswith(f"error: sweep arm {arm}") and lines[0].endswith(f"): {BAD_LINE}"), lines
    assert lines[1] == "error: 1 of 2 sweep arms failed:", lines
    assert lines[2].startswith(f"  {arm}") and lines[2].endswith(f"): {BAD_LINE}"), lines
    # the good arm ran to the end; the bad one failed when its module was built, before training
    assert (sweep_dir / "0" / "hf_model" / "model.safetensors").is_file(), out
    assert proc.stdout.count("hf_checkpoint: ") == 1, out
    assert not (sweep_dir / "1" / "hf_model").exists() and not (sweep_dir / "1" / "checkpoints").exists()


def test_the_arms_after_a_bad_one_still_run(run_train, tmp_path):
    proc, sweep_dir, out = sweep(run_train, tmp_path, "trainer.max_steps=1", "algorithm.kl.beta=-1,0.02")
    summary = error_lines(proc)[1:]
    assert summary[0] == "error: 1 of 2 sweep arms failed:" and len(summary) == 2, out
    assert summary[1].startswith("  #0 (+experiment=grpo trainer.max_steps=1 algorithm.kl.beta=-1 "), out
    assert summary[1].endswith(f"): {BAD_LINE}"), out
    assert (sweep_dir / "1" / "hf_model" / "model.safetensors").is_file(), out


def test_an_optuna_sweep_whose_every_trial_fails_ends_in_lines_and_exit_2(run_train, tmp_path):
    # Optuna's sweeper asks the study for its best trial after the arms; with none completed, that
    # raised "No trials are completed yet." as a traceback after our summary.
    absent = tmp_path / "absent"
    proc, sweep_dir, out = sweep(run_train, tmp_path, "hparams_search=grpo_optuna", "hydra.sweeper.n_trials=2",
                                 f"model.path={absent}")
    summary = error_lines(proc)[2:]
    assert summary[0] == "error: 2 of 2 sweep arms failed:" and len(summary) == 4, out
    assert all(line.startswith("  #") and str(absent) in line for line in summary[1:3]), out
    assert summary[3] == ("error: no sweep arm returned a result, so the sweeper has none: "
                          "ValueError: No trials are completed yet."), out
    assert not (sweep_dir / "optimization_results.yaml").exists()
