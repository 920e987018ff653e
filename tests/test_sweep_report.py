"""secreason.sweep_report (the open-question-2 table and figure) on hand-made sweep dirs, and, end to
end, benchmarks/open_question_2.sh at 2 steps followed by both notebooks executed headless (nbclient)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from secreason import sweep_report as sr
from secreason.errors import MissingPathError

REPO = Path(__file__).resolve().parents[1]
NE, TL, CO = sr.METRICS["near_empty"], sr.METRICS["think_len"], sr.METRICS["correctness"]


def write_run(job: Path, overrides: list[str], rows: list[tuple[float, float, float]], sft: bool = False):
    """A Hydra job dir: .hydra/overrides.yaml and a CSVLogger-like csv/metrics.csv (one row per step
    with the rollout metrics, plus a row of another metric alone, as Lightning writes them)."""
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "csv").mkdir()
    cols = ["epoch", "step", "train/loss"] if sft else ["epoch", "step", NE, TL, CO, "train/kl"]
    with open(job / "csv" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for step, (ne, tl, co) in enumerate(rows):
            w.writerow({"epoch": 0, "step": step, "train/loss": 1.0} if sft else
                       {"epoch": 0, "step": step, NE: ne, TL: tl, CO: co})
            if not sft:
                w.writerow({"epoch": 0, "step": step, "train/kl": 0.1})


COLLAPSING = [(0.2, 12.0, 0.5)] * 4 + [(0.9, 1.0, 0.9)] * 6   # trailing-5 mean first > 0.5 at step 6
HOLDING = [(0.2, 12.0, 0.5)] * 4 + [(0.1, 10.0, 0.7)] * 6
SPIKE = [(0.2, 12.0, 0.5)] * 3 + [(1.0, 12.0, 0.5)] + [(0.2, 12.0, 0.6)] * 6  # one noisy step only


@pytest.fixture
def sweep(tmp_path):
    """Two multiruns as the wrapper writes them: arm A (3 seeds: 2 collapse, 1 holds; jobs 0..2 in
    seed order 2, 0, 10 to check the sort), arm B (2 seeds, holding), an SFT run to skip."""
    base = ["+experiment=hack_grpo", "model.path=/x/sft/hf_model", "num_threads=1", "trainer.max_steps=10"]
    a = ["loss_agg=sample_mean", "format_penalty=none"]
    write_run(tmp_path / "p" / "0", [*base, "seed=2", *a], COLLAPSING)
    write_run(tmp_path / "p" / "1", [*base, "seed=0", *a], HOLDING)
    write_run(tmp_path / "p" / "10", [*base, "seed=10", *a], COLLAPSING)
    write_run(tmp_path / "kl" / "0", [*base, "seed=0", *a, "algorithm.kl.beta=0.2"], HOLDING)
    write_run(tmp_path / "kl" / "1", [*base, "seed=1", *a, "algorithm.kl.beta=0.2"], SPIKE)
    write_run(tmp_path / "sft", ["+experiment=hack_sft", "seed=0"], HOLDING, sft=True)
    return tmp_path


def test_runs_group_into_arms_by_their_overrides_less_seed_and_paths(sweep):
    arms = sr.collect(sweep)
    assert [a.name for a in arms] == ["algorithm.kl.beta=0.2 format_penalty=none loss_agg=sample_mean",
                                      "format_penalty=none loss_agg=sample_mean"]
    kl, plain = arms
    assert [r.seed for r in plain.runs] == ["0", "2", "10"]
    assert [r.collapsed for r in plain.runs] == [False, True, True]
    assert plain.collapse_rate == pytest.approx(2 / 3) and kl.collapse_rate == 0.0
    assert [r.collapse_step() for r in plain.runs] == [None, 6, 6]
    assert kl.runs[1].collapse_step() is None  # one step at 1.0 lifts the trailing mean to 0.4 at most
    run = plain.runs[1]
    assert run.end("think_len") == pytest.approx(1.0) and run.curves["think_len"][0] == 12.0
    assert run.steps == list(range(10))  # the train/kl-only rows are not steps of their own


def test_the_table_has_one_row_per_arm_with_each_seed_shown(sweep):
    text = sr.table(sr.collect(sweep))
    lines = text.splitlines()
    assert len(lines) == 4
    plain = lines[3]
    assert plain.startswith("| `format_penalty=none loss_agg=sample_mean` | 0 / 2 / 10 | 2/3 (67%) |")
    # near-empty end: 0.1, 0.9, 0.9 → mean 0.63; think length start 12 → end mean (10+1+1)/3 = 4.0
    assert "| 0.63 (0.10 / 0.90 / 0.90) |" in plain
    assert "| 12.0 → 4.0 (10.0 / 1.0 / 1.0) |" in plain
    assert plain.endswith("| – / 6 / 6 |")
    assert lines[2].split(" | ")[2] == "0/2 (0%)"


def test_report_writes_the_table_and_the_png_atomically(sweep, tmp_path):
    md, png, text = sr.report(sweep, png=tmp_path / "figs" / "sweep.png")
    assert md == sweep / "sweep_report.md" and md.read_text() == text + "\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "figs").iterdir() if p.name != "sweep.png"]  # no temp file left


def test_bad_sweep_dirs_give_one_clear_line(tmp_path, capsys):
    with pytest.raises(MissingPathError, match="no such sweep directory"):
        sr.collect(tmp_path / "nope")
    write_run(tmp_path / "sft", ["seed=0"], HOLDING, sft=True)
    assert sr.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path}: no run with {NE} in */csv/metrics.csv beside a .hydra/overrides.yaml "
                   f"(is it a GRPO sweep's directory?)"]


@pytest.mark.slow
def test_a_two_step_sweep_then_both_notebooks_write_their_pngs(tmp_path, tiny_model_dir):
    """The wrapper at 2 steps, 1 seed (its 5 arms, 3 multiruns side by side), its report, then both
    notebooks executed headless with their directories given as absolute paths in the environment."""
    import nbformat
    from nbclient import NotebookClient

    out, figs = tmp_path / "sweep", tmp_path / "figs"
    env = {**os.environ, "PYTHON": sys.executable, "SEEDS": "0", "STEPS": "2", "SFT_STEPS": "2"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "open_question_2.sh"), str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    arms = sr.collect(out)
    assert len(arms) == 5 and all(len(a.runs) == 1 and len(a.runs[0].steps) == 2 for a in arms)
    assert (out / "sweep_report.md").read_text().count("\n") == 2 + 5 and (out / "sweep_report.png").is_file()

    nb_env = {"SECREASON_RUNS_DIR": str(out), "SECREASON_SWEEP_DIR": str(out), "SECREASON_FIGURES_DIR": str(figs)}
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits the environment
        for k, v in nb_env.items():
            mp.setenv(k, v)
        for name in ("training_curves", "sweep_compare"):
            nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
            NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
            assert (figs / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert sorted(p.name for p in figs.iterdir()) == ["sweep_compare.png", "training_curves.png"]
