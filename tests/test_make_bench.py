"""`make bench` on a fresh clone (issue 20): the recipe installs the bench extra (TRL) into the same venv,
then removes the PyPI torchvision/torchaudio/torchcodec exactly as `make venv` does, checks the imports,
and only then runs the benchmark. Read from `make -n -B` (a dry run that prints every command a fresh
venv would run), so nothing is installed."""
from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DROP = "pip uninstall -q -y torchvision torchaudio torchcodec"


@pytest.fixture(scope="module")
def bench_commands(tmp_path_factory) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("no `make` on this machine")
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    # Under `make test` this make is nested: without these it prints "make[1]: Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "-B", "bench", f"VENV={venv}"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True, env=env).stdout
    return [line.strip() for line in out.replace("\\\n", " ").splitlines() if line.strip()]


def index(commands: list[str], needle: str, start: int = 0) -> int:
    return next(i for i in range(start, len(commands)) if needle in commands[i])


def test_make_bench_installs_the_bench_extra_then_drops_the_torch_extras_then_runs(bench_commands):
    c = bench_commands
    venv_install = index(c, 'pip install -q -e ".[cpu,dev]"')
    assert DROP in c[venv_install + 1]  # make venv's own removal
    bench_install = index(c, 'pip install -q -e ".[cpu,dev,bench]"', venv_install + 1)
    assert DROP in c[bench_install + 1]
    check = index(c, "import torch, transformers, vllm, trl", bench_install + 1)
    run = index(c, "benchmarks/grpo_step.py", check + 1)
    assert run == len(c) - 1
    # every install is followed by the removal before anything imports or runs
    for i, line in enumerate(c):
        if "pip install" in line and "-e" in line:
            assert DROP in c[i + 1], line


def test_the_bench_extra_holds_trl():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.replace(" ", "").startswith("trl") for req in extras["bench"])
