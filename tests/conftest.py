"""Shared fixtures for the whole suite. Keep these names stable: other test files use them.

Session-wide environment
    SECREASON_CACHE is pointed at one temporary dir for the whole session (set in os.environ, so
    in-process Hydra composition and `run_train` subprocesses see it), so the tiny model and the
    synthetic data set are built once per session (~10 s), never into the repo's .cache.
    Set SECREASON_TEST_CACHE=DIR to reuse a persistent cache across sessions (faster local loops).
    WANDB_MODE=offline and WANDB_SILENT=true are set too; SECREASON_TRACEBACK is removed so the
    one-line error behaviour of train.py is what tests see.

Constants
    REPO      the repository root (Path).
    CONF_DIR  REPO / "conf".

Fixtures (session scope unless noted)
    secreason_cache   Path of the session's SECREASON_CACHE dir.
    tiny_model_dir    Path of the tiny offline HF model dir (`secreason.tiny.ensure_tiny`), the same
                      dir `model=tiny` resolves to through `paths.cache_dir`.
    tokenizer         the tiny tokenizer, loaded with `secreason.models.load_tokenizer` (shared: do not
                      mutate it).
    tiny_model        (function scope) a fresh `load_causal_lm(tiny_model_dir)`, yours to train/mutate.
    benchmark_data_dir  Path of the benchmark data folder (ctibench/, seceval/, ...): $SECREASON_DATA_DIR,
                      the same variable `paths.data_dir` reads. Tests that need the data skip with the
                      reason when it is unset or holds no ctibench/ (a clone has no data; .ci/run sets
                      the variable to the shared/data beside the clone). Function-level marker:
                      `pytest.mark.usefixtures("benchmark_data_dir")`.
    synth_dir         Path of the default synthetic data set (`ensure_synth` with conf/data/synth.yaml's
                      settings, so `train.py` runs in the same session reuse it): sft.jsonl,
                      rl_train.jsonl, rl_test.jsonl.
    compose_train     compose_train(*overrides, return_hydra_config=False, output_dir=None) -> DictConfig:
                      `conf/train.yaml` composed with the Hydra compose API, with paths.root_dir=REPO and
                      paths.output_dir=<a fresh tmp dir> (compose mode has no hydra runtime dirs).
    run_train         run_train(*overrides, run_dir=None, env=None, timeout=600) -> CompletedProcess:
                      runs `sys.executable train.py *overrides hydra.run.dir=<run_dir>` in REPO (text
                      mode, stdout/stderr captured, never raises on a non-zero exit). run_dir defaults
                      to a fresh tmp dir; the result has an extra attribute `.run_dir` (Path), where
                      hf_model/, checkpoints/, csv/ and wandb/ end up. `env` entries are added to the
                      environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


@pytest.fixture(scope="session")
def secreason_cache(tmp_path_factory) -> Path:
    persistent = os.environ.get("SECREASON_TEST_CACHE")
    path = Path(persistent) if persistent else tmp_path_factory.mktemp("secreason_cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def _session_env(secreason_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SECREASON_CACHE", str(secreason_cache))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("SECREASON_TRACEBACK", raising=False)
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """2 shared cores: more than one OpenMP thread per process makes generation ~10x slower.
    Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_model_dir(secreason_cache) -> Path:
    from secreason.tiny import ensure_tiny

    return Path(ensure_tiny(secreason_cache))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from secreason.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def tiny_model(tiny_model_dir):
    from secreason.models import load_causal_lm

    return load_causal_lm(str(tiny_model_dir))


@pytest.fixture(scope="session")
def benchmark_data_dir() -> Path:
    env = os.environ.get("SECREASON_DATA_DIR")
    if not env:
        pytest.skip("no benchmark data: SECREASON_DATA_DIR is unset (.ci/run sets it to ../shared/data)")
    path = Path(env).expanduser()
    if not (path / "ctibench").is_dir():
        pytest.skip(f"no benchmark data: SECREASON_DATA_DIR={env} has no ctibench/")
    return path


@pytest.fixture(scope="session")
def synth_dir(secreason_cache) -> Path:
    from secreason.data.synth_cache import ensure_synth

    return Path(ensure_synth(str(secreason_cache)))


@pytest.fixture(scope="session")
def compose_train(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    def _compose(*overrides: str, return_hydra_config: bool = False, output_dir: str | Path | None = None):
        out = Path(output_dir) if output_dir else tmp_path_factory.mktemp("out")
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={out}", *overrides],
                           return_hydra_config=return_hydra_config)

    return _compose


@pytest.fixture(scope="session")
def run_train(tmp_path_factory, secreason_cache):
    def _run(*overrides: str, run_dir: str | Path | None = None, env: dict | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
        run_dir = Path(run_dir) if run_dir else tmp_path_factory.mktemp("run")
        full_env = {k: v for k, v in os.environ.items() if k != "SECREASON_TRACEBACK"}
        full_env.update(SECREASON_CACHE=str(secreason_cache), WANDB_MODE="offline", WANDB_SILENT="true")
        full_env.update(env or {})
        proc = subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"],
                              cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
        proc.run_dir = run_dir
        return proc

    return _run
