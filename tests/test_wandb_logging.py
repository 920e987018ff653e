"""wandb: `logger.wandb.offline` alone decides online/offline (wandb.init mocked: no network), and a
GRPO run's rollout table `rollout/samples` lands in an offline run's files."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from hydra.utils import instantiate

REPO = Path(__file__).resolve().parents[1]


class FakeRun:
    def __init__(self) -> None:
        self.logged: list = []

    def log(self, data, **kw):
        self.logged.append(data)


@pytest.mark.parametrize("offline,modes", [(False, {"online"}), (True, {"offline", "dryrun"})])
def test_offline_setting_decides_the_mode_wandb_gets(compose_train, monkeypatch, offline, modes):
    """A WANDB_MODE=offline left in the environment (train.py used to set it) does not keep an
    offline=false run offline: wandb.init gets mode=online and sees WANDB_MODE=online."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    seen: dict = {}

    def fake_init(**kwargs):
        seen.update(kwargs=kwargs, env=os.environ.get("WANDB_MODE"))
        return FakeRun()

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setattr(wandb, "run", None)
    cfg = compose_train(f"logger.wandb.offline={str(offline).lower()}")
    logger = instantiate(cfg.logger.wandb)
    assert isinstance(logger.experiment, FakeRun)
    assert seen["kwargs"]["mode"] == ("offline" if offline else "online")
    assert seen["env"] in modes
    assert seen["kwargs"]["project"] == "secreason"


def test_train_py_leaves_wandb_mode_to_the_logger(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    spec = importlib.util.spec_from_file_location("train_entry", REPO / "train.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert "WANDB_MODE" not in os.environ


@pytest.mark.slow
def test_rollout_table_is_in_the_offline_run_files(run_train, tiny_model_dir, synth_dir):
    proc = run_train("+experiment=grpo", "trainer.max_steps=2", "callbacks.rollout_table.log_rollouts_every_n_steps=1",
                     "data.batch_size=2", "algorithm.num_generations=2", "sampler.max_tokens=8",
                     "data.synth.tasks=[math,mcqa]", "callbacks.hf_export=null", "trainer.enable_progress_bar=false",
                     "num_threads=1", timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tables = sorted(Path(proc.run_dir).glob("wandb/offline-run-*/files/media/table/rollout/samples_*.table.json"))
    assert len(tables) == 2, sorted(str(p) for p in Path(proc.run_dir).rglob("*.json"))
    table = json.loads(tables[0].read_text())
    columns = table["columns"]
    for column in ("prompt", "completion", "reward/math", "reward/mcqa", "penalty_reasons", "advantage"):
        assert column in columns, columns
    assert len(table["data"]) == 4  # 2 prompts × 2 completions
    row = dict(zip(columns, table["data"][0]))
    assert row["task"] in ("math", "mcqa") and row["prompt"] and isinstance(row["advantage"], float)
