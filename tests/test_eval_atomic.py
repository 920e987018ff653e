"""Issue 18, "nothing half-written", eval side: items.jsonl and summary.json appear whole or not at all
(a temp file in the same directory, renamed on success). A failed eval leaves the previous
items.jsonl, or none, never an empty one. Fast: scoring a small response file, no model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from secreason.eval.files import atomic_open, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "eval"


def eval_py(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), f"hydra.run.dir={run_dir}", "wandb.enabled=false",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def leftovers(d: Path) -> list[str]:
    """Temp files of ours left in `d` (Hydra's own .hydra/ dir aside)."""
    return sorted(p.name for p in d.iterdir() if p.name != ".hydra" and (p.name.startswith(".") or p.suffix == ".tmp"))


def test_atomic_open_failure_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "items.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half of the new")
            assert target.read_text() == "old\n"  # nothing visible while writing
            raise RuntimeError("killed")
    assert target.read_text() == "old\n" and leftovers(tmp_path) == []


def test_atomic_open_failure_with_no_old_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "items.jsonl") as fh:
            fh.write("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_whole(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    write_text_atomic(target, '{"n": 1}\n')
    assert target.read_text() == '{"n": 1}\n' and leftovers(tmp_path) == []
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as a plain open() would make it


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_eval_leaves_no_empty_items_jsonl(tmp_path):
    proc = eval_py(tmp_path, "benchmark=ctibench_mcq", f"responses={FIX / 'mcq.jsonl'}", "response_column=nope")
    assert proc.returncode == 2, proc.stderr
    assert not (tmp_path / "items.jsonl").exists() and not (tmp_path / "summary.json").exists()
    assert leftovers(tmp_path) == []


def test_failed_eval_keeps_the_previous_outputs(tmp_path):
    ok = eval_py(tmp_path, "benchmark=ctibench_mcq", f"responses={FIX / 'mcq.jsonl'}", "response_column=response")
    assert ok.returncode == 0, ok.stderr[-2000:]
    items, summary = (tmp_path / "items.jsonl").read_text(), (tmp_path / "summary.json").read_text()
    assert len(items.splitlines()) == 14 and json.loads(summary)["n"] == 14
    assert json.loads(summary) == json.loads(ok.stdout.strip().splitlines()[-1])
    bad = eval_py(tmp_path, "benchmark=ctibench_mcq", f"responses={FIX / 'mcq.jsonl'}", "response_column=nope")
    assert bad.returncode == 2
    assert (tmp_path / "items.jsonl").read_text() == items and (tmp_path / "summary.json").read_text() == summary
    assert leftovers(tmp_path) == []
