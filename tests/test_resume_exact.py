"""Exact resume in every case (issue 18): after each kind of checkpoint, a resumed run trains on the
data an uninterrupted run trains on next, with the same per-step metrics.

- A toy module records which items every step saw, for each save point Lightning has
  (on_train_batch_end mid-epoch and at an epoch's last batch, on_train_epoch_end, the end-of-fit
  save after a max_steps or max_epochs stop, validation), with automatic and manual optimization.
- GRPO on the tiny model (helpers of tests/test_grpo.py): continuing a run that stopped at
  max_steps; a kill -9 during a checkpoint save with $TMPDIR on another filesystem (the previous
  checkpoint still loads); a kill -9 at an epoch boundary. The killed runs are subprocesses: this
  file run as a script (`_child`).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from secreason.checkpoint_io import AtomicCheckpointIO
from secreason.data.resumable import ResumableDataModule, ResumableSampler

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHILD_TIMEOUT_S = 300

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------- a toy module and data

N_ITEMS, BATCH = 7, 2  # drop_last: 3 batches an epoch, item 7 left out


class ToyData(ResumableDataModule):
    def __init__(self, val: bool = False, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size, self.seed, self.val, self.num_workers = BATCH, 0, val, num_workers
        self.path, self.synth = None, None

    def train_dataloader(self):
        return DataLoader(list(range(N_ITEMS)), batch_size=BATCH, sampler=self.make_sampler(N_ITEMS), drop_last=True,
                          num_workers=self.num_workers)

    def val_dataloader(self):
        return DataLoader([0, 1], batch_size=2) if self.val else []


class Toy(L.LightningModule):
    """Records the items of every training batch; lr 0, so nothing but the data matters."""

    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.automatic_optimization = not manual
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.tolist())
        loss = self.lin(batch.float()[:, None]).sum()
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def stream(epochs: int = 6) -> list[list[int]]:
    """What an uninterrupted run trains on, step by step."""
    order = ResumableSampler(N_ITEMS, BATCH).order
    return [order(e)[i * BATCH:(i + 1) * BATCH] for e in range(epochs) for i in range(N_ITEMS // BATCH)]


def toy_fit(ckpt_dir: Path, checkpoint: dict | None = None, ckpt_path: str | None = None, manual: bool = False,
            val: bool = False, num_workers: int = 0, **limits) -> Toy:
    model = Toy(manual)
    callbacks = [ModelCheckpoint(dirpath=str(ckpt_dir), **checkpoint)] if checkpoint else []
    trainer = L.Trainer(accelerator="cpu", callbacks=callbacks, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(checkpoint), num_sanity_val_steps=0,
                        limit_val_batches=1.0 if val else 0, plugins=[AtomicCheckpointIO()],
                        **{"max_epochs": 10, "max_steps": -1, **limits})
    trainer.fit(model, datamodule=ToyData(val, num_workers), ckpt_path=ckpt_path)
    return model


LAST = dict(save_last=True, save_top_k=0, every_n_train_steps=50)  # conf/callbacks/default.yaml's triggers
SAVE_POINTS = {
    # name: (ModelCheckpoint arguments, how the first run stops)
    "every_batch": (dict(every_n_train_steps=1, save_top_k=-1, filename="{step}"), dict(max_steps=7)),
    "epoch_end": (dict(every_n_epochs=1, save_top_k=-1, filename="{epoch}", save_on_train_epoch_end=True),
                  dict(max_epochs=2)),
    "max_steps_mid_epoch": (LAST, dict(max_steps=2)),
    "max_steps_at_epoch_end": (LAST, dict(max_steps=3)),
    "max_epochs": (LAST, dict(max_epochs=1)),
    "validation_end": (dict(save_last=True, save_top_k=-1, filename="{epoch}", save_on_train_epoch_end=False),
                       dict(max_epochs=2)),
    "mid_epoch_validation": (dict(save_last=True, save_top_k=-1, filename="{step}", save_on_train_epoch_end=False),
                             dict(max_epochs=2, val_check_interval=2)),
}


def trained_before(ckpt: Path) -> int:
    """How many batches the checkpointed run had trained (Lightning's own count)."""
    state = torch.load(ckpt, weights_only=True)
    return state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
@pytest.mark.parametrize("save_point", sorted(SAVE_POINTS))
def test_every_save_point_resumes_where_training_stopped(tmp_path, save_point, manual):
    checkpoint, stop = SAVE_POINTS[save_point]
    val = "validation" in save_point
    first = toy_fit(tmp_path / "a", checkpoint, manual=manual, val=val, **stop)
    full = stream()
    assert first.seen == full[:len(first.seen)]
    ckpts = sorted((tmp_path / "a").glob("*.ckpt"))
    assert ckpts
    for ckpt in ckpts:
        done = trained_before(ckpt)
        resumed = toy_fit(tmp_path / ckpt.stem, LAST, ckpt_path=str(ckpt), manual=manual, val=val, max_steps=9)
        assert resumed.seen == full[done:9], f"{ckpt.name} (trained {done} batches)"


def test_a_max_steps_stop_stores_the_batch_it_stopped_at(tmp_path):
    """The issue's numbers: 2 of an epoch's 3 batches done, then max_steps. The epoch counter has
    moved on (Lightning counts the cut-short epoch as finished); the stored position has not."""
    toy_fit(tmp_path, LAST, max_steps=2)
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert state["epoch"] == 1  # Lightning's view
    assert state["ToyData"] == {"epoch": 0, "batches_done": 2}


def test_continuing_twice_after_max_steps_stops(tmp_path):
    """Stop at 2 (mid-epoch 0), continue to 4 (mid-epoch 1, stopped again), continue to 8."""
    full = stream()
    toy_fit(tmp_path / "a", LAST, max_steps=2)
    b = toy_fit(tmp_path / "b", LAST, ckpt_path=str(tmp_path / "a" / "last.ckpt"), max_steps=4)
    c = toy_fit(tmp_path / "c", LAST, ckpt_path=str(tmp_path / "b" / "last.ckpt"), max_steps=8)
    assert b.seen == full[2:4] and c.seen == full[4:8]


def test_resume_with_loader_workers(tmp_path):
    """With workers the loader draws its first indices inside Lightning's setup_data, before the
    fit loop has counted the epoch's batches."""
    full = stream()
    toy_fit(tmp_path / "a", LAST, max_steps=2, num_workers=1)
    b = toy_fit(tmp_path / "b", LAST, ckpt_path=str(tmp_path / "a" / "last.ckpt"), max_steps=6, num_workers=1)
    assert b.seen == full[2:6]


def test_an_old_checkpoint_with_a_moved_on_epoch_resumes_from_the_fit_loop_count(tmp_path, caplog):
    """A checkpoint of the earlier code stored {epoch: 1, batches_done: 2} after a max_steps stop
    at batch 2: the fit loop's count wins, with a warning."""
    toy_fit(tmp_path / "a", LAST, max_steps=2)
    state = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    state["ToyData"] = {"epoch": 1, "batches_done": 2}
    torch.save(state, tmp_path / "old.ckpt")
    b = toy_fit(tmp_path / "b", LAST, ckpt_path=str(tmp_path / "old.ckpt"), max_steps=5)
    assert b.seen == stream()[2:5]
    assert "differs from the 2 batches its fit loop trained" in caplog.text


# ------------------------------------------------------------------------- GRPO on the tiny model

STEPS = 5  # 8 prompts, 4 a batch: 2 batches an epoch; the uninterrupted run crosses two epoch boundaries


def grpo_fit(model_dir, rl_file, ckpt_dir: Path, max_steps: int, ckpt_path: str | None = None,
             checkpoint: dict | None = None, plugins=None, callbacks=()):
    """test_grpo's run with a constant lr (a max_steps=k run's cosine would end at k) and the
    trainer's checkpoint plugin; returns (model, Recorder)."""
    from secreason.callbacks.hf_sampler import HFSampler
    from secreason.models import load_causal_lm, load_tokenizer
    from test_grpo import MAX_TOKENS, FakeRewards, Recorder, datamodule, make_module, trainer

    L.seed_everything(0)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir))
    module = make_module(model, tokenizer, FakeRewards(), kl={"beta": 0.05, "estimator": "k3"})
    rec = Recorder()
    cbs = [HFSampler(max_tokens=MAX_TOKENS, seed=0), rec, *callbacks]
    if checkpoint is not None:
        cbs.append(ModelCheckpoint(dirpath=str(ckpt_dir), **checkpoint))
    tr = trainer(callbacks=cbs, max_steps=max_steps, enable_checkpointing=checkpoint is not None,
                 default_root_dir=str(ckpt_dir), plugins=[AtomicCheckpointIO()] if plugins is None else plugins)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file), ckpt_path=ckpt_path)
    return model, rec


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_steps(uninterrupted_steps: list[dict], resumed_steps: list[dict]) -> None:
    assert len(resumed_steps) == len(uninterrupted_steps)  # no step lost or repeated
    for a, b in zip(uninterrupted_steps, resumed_steps):
        assert a["step"] == b["step"]
        assert a["prompts"] == b["prompts"], a["step"]  # the same data
        assert a["rollout"].texts == b["rollout"].texts, a["step"]  # the same completions
        for key in ("train/reward/total", "train/loss", "train/kl"):
            assert a["metrics"][key] == pytest.approx(b["metrics"][key], abs=1e-6), (a["step"], key)


def assert_same_weights(wa: dict, model) -> None:
    wb = weights(model)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=0, msg=k)


@pytest.fixture(scope="module")
def grpo_setup(one_torch_thread, tiny_model_dir, tmp_path_factory):
    """The prompts file of test_grpo and an uninterrupted 5-step run: (rl_file, weights, steps).
    One torch thread, as in the children: the same float sums."""
    from test_grpo import PROMPTS

    rl_file = tmp_path_factory.mktemp("rl") / "rl.jsonl"
    rl_file.write_text("".join(json.dumps({"task": t, "prompt": p, "answer": "x"}) + "\n" for t, p in PROMPTS))
    model, rec = grpo_fit(tiny_model_dir, rl_file, tmp_path_factory.mktemp("grpo_full"), STEPS)
    return rl_file, weights(model), rec.steps


@pytest.mark.parametrize("stop_at", [1, 2, 3])  # 2 is an epoch's last batch
def test_grpo_continuing_a_max_steps_run(tiny_model_dir, grpo_setup, tmp_path, stop_at):
    """Train to max_steps=stop_at (the end-of-fit last.ckpt), then continue with max_steps=5: the
    continued steps are the uninterrupted run's (no data skipped), and so are the weights."""
    rl_file, w_full, steps_full = grpo_setup
    grpo_fit(tiny_model_dir, rl_file, tmp_path / "a", stop_at, checkpoint=LAST)
    last = tmp_path / "a" / "last.ckpt"
    model, rec = grpo_fit(tiny_model_dir, rl_file, tmp_path / "b", STEPS, ckpt_path=str(last), checkpoint=LAST)
    assert_same_steps(steps_full[stop_at:], rec.steps)
    assert_same_weights(w_full, model)
    assert torch.load(last, weights_only=True)["PromptDataModule"] == {"epoch": (stop_at - 1) // 2,
                                                                      "batches_done": (stop_at - 1) % 2 + 1}


# ---- killed runs: subprocesses ----------------------------------------------------------------

def run_child(spec: dict, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), json.dumps(spec)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)


def assert_killed(proc) -> None:
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture
def other_fs_tmpdir(tmp_path):
    """A $TMPDIR on another filesystem than tmp_path: /dev/shm (a tmpfs)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no writable /dev/shm on another filesystem than the test's tmp dir")
    path = shm / f"secreason-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_grpo_kill_during_a_checkpoint_save(tiny_model_dir, grpo_setup, tmp_path, other_fs_tmpdir):
    """A run saving last.ckpt after every step, with the trainer plugins of conf/trainer/cpu.yaml
    and $TMPDIR on a tmpfs, is killed -9 halfway through writing its step-2 checkpoint (the kill
    comes wherever the checkpoint's bytes are being written: our temp file, or Lightning's copy
    out of $TMPDIR). last.ckpt is still the whole step-1 checkpoint, nothing checkpoint-sized is
    left in $TMPDIR, and resuming from it gives the uninterrupted run's steps 2-5; the temp file of
    the killed save is removed when the resumed run starts."""
    rl_file, w_full, steps_full = grpo_setup
    ckpt_dir = tmp_path / "ckpt"
    proc = run_child({"model_dir": str(tiny_model_dir), "rl_file": str(rl_file), "ckpt_dir": str(ckpt_dir),
                      "max_steps": STEPS, "checkpoint": dict(save_last=True, save_top_k=0, every_n_train_steps=1),
                      "kill": "during_save", "save": 2},
                     env={"TMPDIR": str(other_fs_tmpdir)})
    assert_killed(proc)
    assert "killing during save 2" in proc.stdout
    last = ckpt_dir / "last.ckpt"
    from secreason.checkpoints import resume_path

    assert resume_path(last) == str(last)  # loads weights-only, one line if not
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 1 and state["PromptDataModule"] == {"epoch": 0, "batches_done": 1}
    orphans = [p for p in other_fs_tmpdir.rglob("*") if p.is_file() and p.stat().st_size > 100_000]
    assert not orphans, orphans
    leftovers = [p.name for p in ckpt_dir.iterdir() if p.name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.ckpt.") and leftovers[0].endswith(".tmp"), leftovers

    model, rec = grpo_fit(tiny_model_dir, rl_file, tmp_path / "b", STEPS, ckpt_path=str(last), checkpoint=LAST)
    assert_same_steps(steps_full[1:], rec.steps)
    assert_same_weights(w_full, model)
    assert [p.name for p in ckpt_dir.iterdir()] == ["last.ckpt"]  # the killed save's temp file is gone


@pytest.mark.parametrize("boundary_save", ["epoch_end", "last_batch"])
def test_grpo_kill_at_an_epoch_boundary(tiny_model_dir, grpo_setup, tmp_path, boundary_save):
    """A run is killed -9 as epoch 1 starts, after the checkpoint of epoch 0's end: written by
    on_train_epoch_end (every_n_epochs=1) or by on_train_batch_end of the epoch's last batch
    (every_n_train_steps=2). Resuming from last.ckpt gives the uninterrupted run's steps 3-5."""
    rl_file, w_full, steps_full = grpo_setup
    checkpoint = (dict(every_n_epochs=1, save_on_train_epoch_end=True, save_last=True, save_top_k=-1)
                  if boundary_save == "epoch_end" else dict(every_n_train_steps=2, save_last=True, save_top_k=-1))
    ckpt_dir = tmp_path / "ckpt"
    proc = run_child({"model_dir": str(tiny_model_dir), "rl_file": str(rl_file), "ckpt_dir": str(ckpt_dir),
                      "max_steps": STEPS, "checkpoint": checkpoint, "kill": "epoch_start", "epoch": 1})
    assert_killed(proc)
    assert "killing at the start of epoch 1" in proc.stdout
    last = ckpt_dir / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 2 and state["PromptDataModule"] == {"epoch": 0, "batches_done": 2}
    model, rec = grpo_fit(tiny_model_dir, rl_file, tmp_path / "b", STEPS, ckpt_path=str(last), checkpoint=LAST)
    assert_same_steps(steps_full[2:], rec.steps)
    assert_same_weights(w_full, model)


# ---- the child: a GRPO run that kills itself ---------------------------------------------------

class _KillAtEpochStart(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            print(f"killing at the start of epoch {self.epoch}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


class _KillDuringSave(L.Callback):
    """On checkpoint save number `save`, kill the process halfway through writing the checkpoint's
    bytes to a file, whichever writer does it: `torch.save` into a file (AtomicCheckpointIO) or
    the copy of a finished temp file (Lightning's fsspec transaction, `shutil.move` across
    filesystems: `os.sendfile`, else `shutil.copyfileobj`)."""

    def __init__(self, save: int) -> None:
        self.save, self.saves = save, 0
        real_save, real_sendfile, real_copyfileobj = torch.save, os.sendfile, shutil.copyfileobj

        def armed() -> bool:
            return self.saves == self.save

        def die(what: str) -> None:
            print(f"killing during save {self.save} ({what})", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        def save(obj, f, *args, **kwargs):
            if armed() and not isinstance(f, io.BytesIO) and hasattr(f, "write"):
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                data = buf.getvalue()
                f.write(data[:len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                die(f"torch.save, {len(data) // 2} of {len(data)} bytes written")
            return real_save(obj, f, *args, **kwargs)

        def sendfile(out_fd, in_fd, offset, count):
            if armed():
                size = os.fstat(in_fd).st_size
                sent = real_sendfile(out_fd, in_fd, offset, max(1, size // 2))
                os.fsync(out_fd)
                die(f"os.sendfile, {sent} of {size} bytes copied")
            return real_sendfile(out_fd, in_fd, offset, count)

        def copyfileobj(fsrc, fdst, length=0):
            if armed():
                data = fsrc.read()
                fdst.write(data[:len(data) // 2])
                fdst.flush()
                die(f"shutil.copyfileobj, {len(data) // 2} of {len(data)} bytes copied")
            return real_copyfileobj(fsrc, fdst, length)

        torch.save, os.sendfile, shutil.copyfileobj = save, sendfile, copyfileobj

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:  # just before the write
        self.saves += 1


def _child(spec: dict) -> None:
    """A GRPO run as `grpo_fit`, with the trainer plugins of conf/trainer/cpu.yaml, that kills itself."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    torch.set_num_threads(1)
    plugins = [instantiate(p) for p in OmegaConf.load(REPO / "conf" / "trainer" / "cpu.yaml").get("plugins") or []]
    print("checkpoint plugins:", [type(p).__name__ for p in plugins], "TMPDIR:", tempfile.gettempdir(), flush=True)
    killer = _KillDuringSave(spec["save"]) if spec["kill"] == "during_save" else _KillAtEpochStart(spec["epoch"])
    grpo_fit(spec["model_dir"], spec["rl_file"], Path(spec["ckpt_dir"]), spec["max_steps"],
             checkpoint=spec["checkpoint"], plugins=plugins, callbacks=[killer])
    print("finished without being killed", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))  # test_grpo's helpers
    _child(json.loads(sys.argv[1]))
