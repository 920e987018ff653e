"""AtomicCheckpointIO (src/secreason/checkpoint_io.py): a checkpoint goes to a temp file beside the
target, then `os.replace`; nothing passes through $TMPDIR; a failed save leaves the old file; the
temp files of a killed save are removed at the next start; every trainer config uses it. Also the
vLLM engine's weight dump, which uses the same temp naming. The kill tests themselves (kill -9
during a save, with $TMPDIR on a tmpfs) are in tests/test_resume_exact.py.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from secreason.checkpoint_io import AtomicCheckpointIO, _host, own_temp_path, remove_stale_temps, stale_temps

CONF = Path(__file__).resolve().parents[1] / "conf"
TEMP_NAME = re.compile(r"^\.last\.ckpt\.[A-Za-z0-9-]+\.\d+\.[0-9a-f]{8}\.tmp$")


def checkpoint(value: float = 1.0) -> dict:
    return {"state_dict": {"w": torch.full((4, 4), value)}, "global_step": int(value)}


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60, check=True)
    return int(proc.stdout)


def temp_name(target: str, host: str, pid: int, suffix: str = ".tmp") -> str:
    return f".{target}.{host}.{pid}.0123abcd{suffix}"


def test_a_save_writes_a_temp_file_beside_the_target_then_replaces(tmp_path, monkeypatch):
    replaced = []
    real_replace = os.replace

    def spy_replace(src, dst):
        replaced.append((Path(src), Path(dst)))
        assert Path(src).stat().st_size > 0  # written (and fsynced) before the rename
        return real_replace(src, dst)

    def no_tmpdir(*args, **kwargs):
        raise AssertionError("a checkpoint save must not go through $TMPDIR")

    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(tempfile, "mkstemp", no_tmpdir)  # fsspec's transaction makes its temp file here
    target = tmp_path / "ckpts" / "last.ckpt"  # the directory does not exist yet
    AtomicCheckpointIO().save_checkpoint(checkpoint(1.0), target)
    AtomicCheckpointIO().save_checkpoint(checkpoint(2.0), target)  # over an existing checkpoint
    assert [dst for _, dst in replaced] == [target, target]
    for src, _ in replaced:
        assert src.parent == target.parent and TEMP_NAME.match(src.name), src
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
    loaded = AtomicCheckpointIO().load_checkpoint(target, weights_only=True)
    assert loaded["global_step"] == 2 and torch.equal(loaded["state_dict"]["w"], torch.full((4, 4), 2.0))


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint(1.0), target)
    with pytest.raises(Exception):
        io.save_checkpoint({"state_dict": {}, "not_picklable": lambda: None}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(target, weights_only=True)["global_step"] == 1


def test_the_file_mode_follows_the_umask_like_lightnings_writer(tmp_path):
    old = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint(checkpoint(), tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o644


def test_temp_files_of_a_killed_save_are_removed_at_the_next_start(tmp_path, dead_pid):
    """Only own_temp_path names of a gone process on this host: not a live process's, not another
    host's (a shared filesystem), not anything else."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    stale = ckpts / temp_name("last.ckpt", _host(), dead_pid)
    keep = [ckpts / temp_name("last.ckpt", _host(), os.getppid()),  # a live process (pytest's parent)
            ckpts / temp_name("last.ckpt", "otherhost", dead_pid),
            ckpts / ".last.ckpt.tmp", ckpts / "epoch=0-step=1.ckpt"]
    for p in [stale, *keep]:
        p.write_bytes(b"partial")
    assert stale_temps(ckpts) == [stale]
    AtomicCheckpointIO().save_checkpoint(checkpoint(), ckpts / "last.ckpt")  # the first write into the dir
    assert not stale.exists() and all(p.exists() for p in keep)

    # a resumed run writes elsewhere: the dir of the checkpoint it loads is cleaned
    stale.write_bytes(b"partial")
    AtomicCheckpointIO().load_checkpoint(ckpts / "last.ckpt", weights_only=True)
    assert not stale.exists() and all(p.exists() for p in keep)


def test_own_temp_paths_are_unique_and_say_who_made_them(tmp_path):
    a, b = own_temp_path(tmp_path / "last.ckpt"), own_temp_path(tmp_path / "last.ckpt")
    assert a != b and a.parent == tmp_path and TEMP_NAME.match(a.name)
    assert f".{os.getpid()}." in a.name and not a.exists()
    assert remove_stale_temps(tmp_path / "missing") == []


def test_remote_paths_keep_lightnings_writer():
    import fsspec

    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint(3.0), "memory://ckpts/last.ckpt")
    assert fsspec.filesystem("memory").exists("/ckpts/last.ckpt")
    assert io.load_checkpoint("memory://ckpts/last.ckpt", weights_only=True)["global_step"] == 3


TRAINERS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("name", TRAINERS)
def test_every_trainer_config_writes_checkpoints_atomically(compose_train, name):
    cfg = compose_train(f"trainer={name}")
    targets = [p.get("_target_") for p in cfg.trainer.get("plugins") or []]
    assert "secreason.checkpoint_io.AtomicCheckpointIO" in targets, (name, targets)


def test_the_cpu_trainer_is_built_with_the_plugin(compose_train):
    trainer = instantiate(compose_train("trainer=cpu").trainer, callbacks=[], logger=False)
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO


# ---- the vLLM engine's weight dump -------------------------------------------------------------

def test_the_weight_dump_goes_to_the_given_dir_or_the_temp_dir(tmp_path):
    from secreason.sampling.vllm_engine import weights_dump_parent

    assert weights_dump_parent(tmp_path) == tmp_path
    assert weights_dump_parent(None) == Path(tempfile.gettempdir())  # no Hydra app running here


@pytest.mark.vllm
def test_the_engine_loads_from_a_dump_in_weights_dir_removed_after(tiny_model, tokenizer, tmp_path, monkeypatch,
                                                                    dead_pid):
    """vllm.LLM is replaced by a stand-in that records what it was given: the dump is a fresh dir
    in `weights_dir`, holds the model, and is gone once the engine is built; a killed run's dump
    there is removed first."""
    import vllm

    from secreason.sampling.vllm_engine import VLLMGenerator

    seen = {}

    class FakeLLM:
        def __init__(self, model, **kwargs):
            path = Path(model)
            seen.update(path=path, files=sorted(p.name for p in path.iterdir()))

    stale = tmp_path / temp_name("policy", _host(), dead_pid, ".vllm-weights")
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    threads = torch.get_num_threads()
    generator = VLLMGenerator(max_tokens=4, weights_dir=str(tmp_path))
    try:
        generator.bind(tiny_model, tokenizer)
    finally:
        torch.set_num_threads(threads)
    assert seen["path"].parent == tmp_path and seen["path"].name.endswith(".vllm-weights")
    assert f".{os.getpid()}." in seen["path"].name
    assert "config.json" in seen["files"] and any(f.endswith(".safetensors") for f in seen["files"])
    assert not seen["path"].exists() and not stale.exists()
    assert list(tmp_path.iterdir()) == []
