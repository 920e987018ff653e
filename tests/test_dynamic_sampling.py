"""Dynamic sampling that refills (`algorithm.dynamic_sampling.max_rounds`, issue 20 Must-show 2): the
refill logic by hand, a GRPO batch with zero-variance groups refilled to full size on the tiny model,
and a run killed -9 during a refill that resumes exactly (this file run as a script is the child)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from secreason.data.resumable import ExtraPromptStream
from secreason.refill import concat_rollouts, refill_batch, take_groups, varied_groups
from secreason.rewards.sets import RewardResult
from secreason.rollout import Rollout

HERE = Path(__file__).resolve().parent
N_GEN, STEPS = 2, 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------ the logic

def fake_rollout(prompt_ids: list[list[int]], n: int, width: int = 3) -> Rollout:
    """Row i·n + j of prompt i: completion [10·p0 + j] * width (p0 = the prompt's first id), logprob -1."""
    rows = [(p, j) for p in prompt_ids for j in range(n)]
    pw = max(len(p) for p in prompt_ids)
    p_ids = torch.tensor([[0] * (pw - len(p)) + p for p, _ in rows])
    p_mask = torch.tensor([[0] * (pw - len(p)) + [1] * len(p) for p, _ in rows])
    c_ids = torch.tensor([[10 * p[0] + j] * width for p, j in rows])
    return Rollout(p_ids, p_mask, c_ids, torch.ones_like(c_ids), -torch.ones(c_ids.shape),
                   torch.arange(len(prompt_ids)).repeat_interleave(n), torch.zeros(len(rows), dtype=torch.bool),
                   [f"{p[0]}/{j}" for p, j in rows])


def test_varied_groups_by_hand():
    c = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.25])
    assert varied_groups(c, torch.arange(4).repeat_interleave(2), 4).tolist() == [True, False, False, True]


def test_concat_and_take_groups_repad_and_renumber():
    a, b = fake_rollout([[1], [2, 3]], 2, width=2), fake_rollout([[4, 5, 6]], 2, width=4)
    both = concat_rollouts([a, b])
    assert both.group_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert both.prompt_ids.shape == (6, 3) and both.completion_ids.shape == (6, 4)
    assert both.prompt_ids[0].tolist() == [0, 0, 1] and both.prompt_mask[0].tolist() == [0, 0, 1]
    assert both.completion_mask[0].tolist() == [1, 1, 0, 0] and both.sampler_logprobs[0].tolist() == [-1, -1, 0, 0]
    picked = take_groups(both, [2, 0])
    assert picked.group_index.tolist() == [0, 0, 1, 1]
    assert picked.texts == ["4/0", "4/1", "1/0", "1/1"]


def test_refill_batch_by_hand():
    """B = 3; prompts whose first id is odd score [1, 0] (varied), even ones [0, 0] (flat).
    Round 0: [1], [2], [4] → 1 varied; round 1 draws 2: [6], [3] → 2 varied; round 2 draws 1: [5] → 3."""
    stream = iter([[6], [3], [5], [7]])
    drawn = []

    def draw(k):
        ids = [next(stream) for _ in range(k)]
        drawn.append(len(ids))
        return ids, [{"p": p[0]} for p in ids]

    def correctness(r, rows):
        return torch.tensor([float(row["p"] % 2 == 1 and j == 0) for row in rows for j in range(N_GEN)])

    prompts = [[1], [2], [4]]
    done = refill_batch(prompts, [{"p": p[0]} for p in prompts], fake_rollout(prompts, N_GEN), N_GEN, 5,
                        correctness, draw, lambda ids, n: fake_rollout(ids, n))
    assert drawn == [2, 1] and done.rounds == 2 and done.extra_prompts == 3 and done.varied == 3
    assert done.prompt_ids == [[1], [3], [5]] and [r["p"] for r in done.rows] == [1, 3, 5]
    assert done.rollout.num_completions == 6 and done.rollout.texts[2] == "3/0"
    # the limit: one round only, then the batch is topped up with flat groups in draw order
    stream = iter([[6], [8], [5]])
    done = refill_batch(prompts, [{"p": p[0]} for p in prompts], fake_rollout(prompts, N_GEN), N_GEN, 1,
                        correctness, draw, lambda ids, n: fake_rollout(ids, n))
    assert done.rounds == 1 and done.varied == 1 and done.prompt_ids == [[1], [2], [4]]


def test_extra_prompt_stream_is_resumable():
    items = list(range(5))
    a = ExtraPromptStream(seed=3)
    first = a.draw(items, 7)
    assert sorted(first[:5]) == items  # an epoch of the stream is a permutation
    b = ExtraPromptStream(seed=3)
    b.load_state_dict(a.state_dict())
    assert b.draw(items, 6) == a.draw(items, 6)
    assert ExtraPromptStream(seed=3, rank=1).draw(items, 5) != first[:5]  # ranks draw differently


# ------------------------------------------------------------------------------------ on the tiny model

PROMPTS = [("flat" if i % 2 else "mixed", f"Question {i}: what is {i}+{i}?") for i in range(8)]


class ByAnswer:
    """Correctness by the row's `answer`: "mixed" rows score 1 for a group's first completion and 0 for
    the others (non-zero variance); "flat" rows score 0 (zero variance). Total = correctness."""

    def __call__(self, texts, rows, completion_ids=None):
        c = [float(row["answer"] == "mixed" and k % N_GEN == 0) for k, row in enumerate(rows)]
        n = len(texts)
        return RewardResult(total=c, correctness=c, format_penalty=[0.0] * n, per_reward={"by_answer": c},
                            penalised=[False] * n, routed=[True] * n)


@pytest.fixture(scope="module")
def rl_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("rl") / "rl.jsonl"
    f.write_text("".join(json.dumps({"task": "alpha", "prompt": p, "answer": a}) + "\n" for a, p in PROMPTS))
    return f


def refill_fit(model_dir, rl_file, ckpt_dir: Path, max_steps: int, max_rounds: int = 6,
               ckpt_path: str | None = None, checkpoint: dict | None = None, callbacks=()):
    """GRPO on the tiny model, 4 prompts a batch (half of the file flat), refilling; (model, Recorder)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from secreason.callbacks.hf_sampler import HFSampler
    from secreason.checkpoint_io import AtomicCheckpointIO
    from secreason.models import load_causal_lm, load_tokenizer
    from test_grpo import MAX_TOKENS, Recorder, datamodule, make_module, trainer

    L.seed_everything(0)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir))
    module = make_module(model, tokenizer, ByAnswer(), dynamic_sampling={"max_rounds": max_rounds})
    rec = Recorder()
    cbs = [*callbacks, HFSampler(max_tokens=MAX_TOKENS, seed=0), rec]  # a killer's batch start runs first
    if checkpoint is not None:
        cbs.append(ModelCheckpoint(dirpath=str(ckpt_dir), **checkpoint))
    tr = trainer(callbacks=cbs, max_steps=max_steps, enable_checkpointing=checkpoint is not None,
                 default_root_dir=str(ckpt_dir), plugins=[AtomicCheckpointIO()])
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file), ckpt_path=ckpt_path)
    return model, rec


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, rl_file, tmp_path_factory):
    model, rec = refill_fit(tiny_model_dir, rl_file, tmp_path_factory.mktemp("full"), STEPS)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, rec.steps


def test_a_batch_with_zero_variance_groups_is_refilled_to_full_size(uninterrupted):
    """Half of the 8 prompts are flat (zero correctness variance); each step trains on 4 groups, all
    with non-zero variance: a batch that had flat ones was refilled (rollout/refill_rounds ≥ 1)."""
    _, steps = uninterrupted
    assert len(steps) == STEPS
    assert sum(s["metrics"]["rollout/refill_rounds"] >= 1 for s in steps) >= 2
    for s in steps:
        r = s["rollout"]
        assert len(s["prompts"]) == 4 and r.num_completions == 4 * N_GEN  # full size
        answers = {p: a for a, p in PROMPTS}
        assert [answers[p] for p in s["prompts"]] == ["mixed"] * 4  # every group varies
        assert s["metrics"]["rollout/refill_varied_frac"] == 1.0
        assert s["metrics"]["rollout/zero_std_frac"] == 0.0
        assert sorted(r.group_index.tolist()) == sorted(list(range(4)) * N_GEN)


def test_without_refill_the_flat_groups_stay(tiny_model_dir, rl_file, tmp_path):
    _, rec = refill_fit(tiny_model_dir, rl_file, tmp_path, 1, max_rounds=0)
    assert rec.steps[0]["metrics"]["rollout/zero_std_frac"] == 0.5
    assert "rollout/refill_rounds" not in rec.steps[0]["metrics"]


def test_a_run_killed_during_a_refill_resumes_exactly(tiny_model_dir, rl_file, uninterrupted, tmp_path):
    """Checkpoints after every step; the child is killed -9 inside the refill of the first step k ≥ 1
    that refills (just after it drew extra prompts). Resuming from last.ckpt (after step k) trains
    steps k+1… on the uninterrupted run's prompts, completions and losses, to its weights."""
    w_full, steps_full = uninterrupted
    kill = next(i for i, s in enumerate(steps_full) if i >= 1 and s["metrics"]["rollout/refill_rounds"] >= 1)
    ckpt_dir = tmp_path / "ckpt"
    spec = {"model_dir": str(tiny_model_dir), "rl_file": str(rl_file), "ckpt_dir": str(ckpt_dir), "kill_step": kill}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), json.dumps(spec)], cwd=HERE.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert f"killing during the refill of step {kill}" in proc.stdout
    last = ckpt_dir / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == kill
    (sampler_state,) = [v for k, v in state["callbacks"].items() if "HFSampler" in k]
    drawn_before = sum(s["metrics"]["rollout/refill_prompts"] for s in steps_full[:kill])
    assert sampler_state["extra_prompts"]["drawn"] == drawn_before
    model, rec = refill_fit(tiny_model_dir, rl_file, tmp_path / "b", STEPS, ckpt_path=str(last), checkpoint=LAST)
    assert len(rec.steps) == STEPS - kill
    for a, b in zip(steps_full[kill:], rec.steps):
        assert a["prompts"] == b["prompts"] and a["rollout"].texts == b["rollout"].texts, a["step"]
        for key in ("train/loss", "rollout/refill_rounds", "rollout/refill_prompts"):
            assert a["metrics"][key] == pytest.approx(b["metrics"][key], abs=1e-6), (a["step"], key)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, w_full[k], atol=1e-6, rtol=0, msg=k)


LAST = dict(save_last=True, save_top_k=0, every_n_train_steps=1)


def _child(spec: dict) -> None:
    """refill_fit with a checkpoint after every step, killed -9 in the middle of step `kill_step`'s refill."""
    import lightning as L

    class KillInRefill(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step != spec["kill_step"]:
                return
            real = ExtraPromptStream.draw

            def draw(stream, items, k):
                out = real(stream, items, k)
                print(f"killing during the refill of step {spec['kill_step']} ({stream.drawn} drawn)", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
                return out

            ExtraPromptStream.draw = draw

    torch.set_num_threads(1)
    refill_fit(spec["model_dir"], spec["rl_file"], Path(spec["ckpt_dir"]), STEPS, checkpoint=LAST,
               callbacks=[KillInRefill()])
    print("finished without being killed", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))  # test_grpo's helpers
    _child(json.loads(sys.argv[1]))


@pytest.mark.parametrize("attr,key", [("refill_max_rounds", "algorithm.dynamic_sampling.max_rounds"),
                                      ("async_rollouts", "algorithm.async_rollouts")])
def test_refill_and_async_are_refused_under_fsdp(attr, key, tiny_model, tokenizer):
    """FSDP ranks generate in lockstep (each forward gathers parameters): a rank refilling alone would hang."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from secreason.callbacks.sampler import SamplerCallback
    from secreason.errors import ConfigError

    trainer = SimpleNamespace(global_rank=0, datamodule=None, strategy=FSDPStrategy())
    module = SimpleNamespace(model=tiny_model, tokenizer=tokenizer, refill_max_rounds=0, async_rollouts=0)
    SamplerCallback().setup(trainer, module, "fit")  # neither: fine
    setattr(module, attr, 1)
    with pytest.raises(ConfigError, match=f"^{key}=1: not supported under trainer=fsdp"):
        SamplerCallback().setup(trainer, module, "fit")
