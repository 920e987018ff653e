"""Kill and resume on 2 ranks (issue 16): a 2-rank DDP GRPO run (the real prompt datamodule, the HF
sampler, last.ckpt after every step) is SIGKILLed on both ranks after its step-1 checkpoint; the
run resumed from that checkpoint trains steps 2-3 on the prompts, completions, loss, correctness
and KL of an uninterrupted 2-rank run, on every rank, and ends with its weights.

Lightning would wrap a plain sampler in its DistributedSamplerWrapper (reshuffled, sized from the
full length, blind to the position); the resumable sampler is a DistributedSampler itself, so each
rank keeps its disjoint shard and skips exactly the batches it trained (the pure parts below).

The 2-rank runs are this file run as a script by two processes (test_distributed's launcher, its
timeout: a hang fails instead of stalling).
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # run as a script: test_grpo's and test_distributed's helpers

from test_distributed import LAUNCH_TIMEOUT_S, WORLD, launch, strategy  # noqa: E402
from test_grpo import MAX_TOKENS, PROMPTS, FakeRewards, make_module  # noqa: E402

from secreason.data.resumable import ResumableSampler  # noqa: E402

STEPS, KILL_AFTER = 3, 1  # 8 prompts, 2 per rank a batch: 2 batches an epoch; the resumed run crosses into epoch 1
COMPARED = ("train/loss", "train/kl", "train/reward/correctness", "train/reward/total")


# ------------------------------------------------------------------------------------ the runs

class KillAfter(L.Callback):
    """SIGKILL this rank as the batch after step `step` starts (its checkpoint is written: every
    rank has passed the barrier after the save). First in the callback list: before the sampler."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            print(f"rank {trainer.global_rank}: killing after step {self.step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


class Steps(L.Callback):
    """Per batch on this rank: its prompts, its completions and the (global) logged metrics."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({"step": trainer.global_step, "prompts": [r["prompt"] for r in batch["rows"]],
                           "texts": batch["rollout"].texts,
                           "metrics": {k: float(trainer.callback_metrics[k]) for k in COMPARED}})


def grpo_run(spec: dict, case: dict, out: Path) -> dict:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from secreason.callbacks.hf_sampler import HFSampler
    from secreason.checkpoint_io import AtomicCheckpointIO
    from secreason.data.prompts import PromptDataModule
    from secreason.models import load_causal_lm, load_tokenizer

    L.seed_everything(0)
    tokenizer = load_tokenizer(spec["model_dir"])
    model = load_causal_lm(spec["model_dir"])
    module = make_module(model, tokenizer, FakeRewards(), kl={"beta": 0.05, "estimator": "k3"}, micro_batch_size=2)
    steps, ckpt_dir = Steps(), out / case["name"]
    callbacks = ([KillAfter(case["kill_after"])] if "kill_after" in case else []) + [
        HFSampler(max_tokens=MAX_TOKENS, seed=0), steps,
        ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0, every_n_train_steps=1)]
    trainer = L.Trainer(accelerator="cpu", devices=WORLD, strategy=strategy("ddp"), max_steps=STEPS, max_epochs=10,
                        callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(ckpt_dir),
                        plugins=[AtomicCheckpointIO()])
    dm = PromptDataModule(tokenizer, path=spec["rl_file"], split="train", batch_size=2, seed=0)
    trainer.fit(module, datamodule=dm, ckpt_path=case.get("ckpt_path"))
    return {"steps": steps.steps, "global_step": trainer.global_step,
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def worker(spec_path: str, out_dir: str) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(LAUNCH_TIMEOUT_S - 15)
    torch.set_num_threads(1)
    spec = torch.load(spec_path, weights_only=False)
    out, rank = Path(out_dir), int(os.environ["RANK"])
    for case in spec["cases"]:
        torch.save(grpo_run(spec, case, out), out / f"{case['name']}.rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def spec(tiny_model_dir, tmp_path_factory) -> dict:
    import json

    rl_file = tmp_path_factory.mktemp("dist_resume_rl") / "rl.jsonl"
    rl_file.write_text("".join(json.dumps({"task": t, "prompt": p, "answer": "x"}) + "\n" for t, p in PROMPTS))
    return {"model_dir": str(tiny_model_dir), "rl_file": str(rl_file)}


def test_two_rank_ddp_grpo_killed_after_a_checkpoint_resumes_exactly(spec, tmp_path):
    # One launch: the uninterrupted run, then the run that kills itself (both ranks) after step 1.
    first = launch(spec, [{"name": "full"}, {"name": "killed", "kill_after": KILL_AFTER}], tmp_path / "a",
                   script=__file__, killed=True)
    assert "killed" not in first  # it never finished
    last = tmp_path / "a" / "killed" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == KILL_AFTER
    assert state["PromptDataModule"] == {"epoch": 0, "batches_done": KILL_AFTER}
    resumed = launch(spec, [{"name": "resumed", "ckpt_path": str(last)}], tmp_path / "b", script=__file__)["resumed"]

    full = first["full"]
    for rank in range(WORLD):
        want, got = full[rank]["steps"][KILL_AFTER:], resumed[rank]["steps"]
        assert [s["step"] for s in got] == [s["step"] for s in want] == list(range(KILL_AFTER + 1, STEPS + 1))
        for a, b in zip(want, got):
            assert b["prompts"] == a["prompts"], (rank, a["step"])  # this rank's own shard, continued
            assert b["texts"] == a["texts"], (rank, a["step"])  # the same completions (seeds per rank and call)
            for key in COMPARED:
                assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=1e-6), (rank, a["step"], key)
        for k, v in full[rank]["weights"].items():
            torch.testing.assert_close(resumed[rank]["weights"][k], v, atol=1e-6, rtol=0, msg=k)
    # the ranks' shards are disjoint, and an epoch (2 steps) uses every prompt once
    epoch0 = [p for r in range(WORLD) for s in full[r]["steps"][:2] for p in s["prompts"]]
    assert sorted(epoch0) == sorted(p for _, p in PROMPTS)
    assert full[0]["steps"][0]["texts"] != full[1]["steps"][0]["texts"]


# ------------------------------------------------------------------------------------ pure parts

def test_sampler_is_a_distributed_sampler_lightning_leaves_alone():
    assert isinstance(ResumableSampler(8, 2), DistributedSampler)
    loader = DataLoader(list(range(8)), batch_size=2, sampler=ResumableSampler(8, 2, num_replicas=2, rank=1))
    assert len(loader) == 2  # sized from this rank's shard, not the 8 items


@pytest.mark.parametrize("num_items,world,drop_last", [(24, 2, False), (25, 3, False), (25, 3, True), (7, 4, False)])
def test_ranks_get_disjoint_shards_whose_batches_are_the_global_batches(num_items, world, drop_last):
    """Global batch b of an epoch (the ranks' b-th batches together) is stretch b of the 1-rank
    order with a world-times larger batch; the shards are disjoint unless padded."""
    batch = 2
    shards = [ResumableSampler(num_items, batch, seed=5, num_replicas=world, rank=r, drop_last=drop_last)
              for r in range(world)]
    order = ResumableSampler(num_items, batch, seed=5).order(3)
    parts = []
    for s in shards:
        s.set_epoch(3)
        parts.append(list(s))
        assert len(parts[-1]) == len(s)
    assert len({len(p) for p in parts}) == 1  # every rank as many batches: none waits at a collective
    used = sum(len(p) for p in parts)
    if drop_last:
        assert used == num_items - num_items % world and len({i for p in parts for i in p}) == used
    else:
        assert used == world * -(-num_items // world) and set(i for p in parts for i in p) == set(range(num_items))
    stretch = batch * world
    for b in range(len(parts[0]) // batch):
        together = sorted(i for p in parts for i in p[b * batch:(b + 1) * batch])
        assert together == sorted((order * 2)[b * stretch:(b + 1) * stretch]), b


def test_each_rank_resumes_after_the_batches_it_trained():
    """Position (epoch 1, 2 batches done): rank r skips 2 of its own batches, not 2 global ones."""
    for rank in range(2):
        s = ResumableSampler(20, 3, seed=1, num_replicas=2, rank=rank, position=lambda: (1, 2))
        assert list(s) == s.shard(1)[6:] and s.shard(1) == s.order(1)[rank::2]


if __name__ == "__main__":
    worker(*sys.argv[1:3])
