"""One-step off-policy rollouts (`algorithm.async_rollouts=1`, issue 20 Must-show 3) on the tiny model:
each batch after the first trains on rollouts generated from the weights one optimizer step old,
logged as rollout/staleness, with the truncated IS weights correcting; the run equals a synchronous
run whose sampler is handed the previous step's weights, and a run continued from a checkpoint
equals the uninterrupted one."""
from __future__ import annotations

import copy

import pytest
import torch

from secreason.callbacks.hf_sampler import HFSampler
from secreason.errors import ConfigError
from secreason.modules.grpo import GRPOModule
from test_grpo import MAX_TOKENS, FakeRewards, Recorder, datamodule, make_module, rl_file, trainer  # noqa: F401

STEPS = 4  # 8 prompts, 4 a batch: the job of step 1 is for the next epoch's first batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PreviousWeightsSampler(HFSampler):
    """The synchronous reference: batch t's rollouts come from the weights batch t-1 started from
    (batch 0 from the live policy), generated in line, no thread."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.previous: dict | None = None
        self.frozen = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        current = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        if self.previous is None:
            # Batch 0 from the live policy, as the async run generates it in line: torch's matmul takes
            # another kernel for lm_head's last-position slice when the weight requires grad, so a
            # frozen copy's logprobs differ in the last bits (~5e-7), which Adam at lr 1e-2 amplifies.
            batch["rollout"] = self.generate(batch["prompt_ids"], pl_module.num_generations)
            self.previous = current
            return
        if self.frozen is None:
            self.frozen = copy.deepcopy(pl_module.model).requires_grad_(False)
        self.frozen.load_state_dict(self.previous)
        self.model, live = self.frozen, self.model
        try:
            batch["rollout"] = self.generate(batch["prompt_ids"], pl_module.num_generations)
        finally:
            self.model = live
        self.previous = current


def fit(model_dir, rl_file, sampler, async_rollouts: int, max_steps: int = STEPS, tmp=None, ckpt_path=None):  # noqa: F811
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from secreason.models import load_causal_lm, load_tokenizer

    L.seed_everything(0)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir))
    module = make_module(model, tokenizer, FakeRewards(), async_rollouts=async_rollouts, is_cap=2.0,
                         optim={"name": "adamw", "lr": 1e-2})
    rec = Recorder()
    cbs = [sampler, rec]
    if tmp is not None:
        cbs.append(ModelCheckpoint(dirpath=str(tmp), save_last=True, save_top_k=0, every_n_train_steps=50))
    tr = trainer(callbacks=cbs, max_steps=max_steps, enable_checkpointing=tmp is not None,
                 default_root_dir=str(tmp) if tmp is not None else None)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file), ckpt_path=ckpt_path)
    return model, rec.steps


@pytest.fixture(scope="module")
def async_run(tiny_model_dir, rl_file):  # noqa: F811
    model, steps = fit(tiny_model_dir, rl_file, HFSampler(max_tokens=MAX_TOKENS, seed=0), async_rollouts=1)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, steps


def assert_same(steps_a, steps_b, weights_a, model_b, keys=("train/loss", "train/reward/total", "train/kl",
                                                             "train/is_weight_mean")):
    assert len(steps_a) == len(steps_b)
    for a, b in zip(steps_a, steps_b):
        assert a["prompts"] == b["prompts"] and a["rollout"].texts == b["rollout"].texts, a["step"]
        torch.testing.assert_close(a["rollout"].sampler_logprobs, b["rollout"].sampler_logprobs, atol=1e-6, rtol=0)
        for key in keys:
            assert a["metrics"][key] == pytest.approx(b["metrics"][key], abs=1e-6), (a["step"], key)
    for k, v in model_b.state_dict().items():
        torch.testing.assert_close(v, weights_a[k], atol=1e-6, rtol=0, msg=k)


def test_async_trains_on_rollouts_one_step_stale(async_run):
    _, steps = async_run
    assert [s["metrics"]["rollout/staleness"] for s in steps] == [0.0, 1.0, 1.0, 1.0]
    # The TIS weight π_current/π_sampler is no longer 1 once the rollouts are stale (capped at 2).
    assert steps[0]["metrics"]["train/is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert all(abs(s["metrics"]["train/is_weight_mean"] - 1.0) > 1e-3 for s in steps[1:])
    assert all(s["metrics"]["rollout/ahead_generate_s"] > 0 for s in steps[1:])


def test_async_equals_a_sync_run_handed_the_previous_weights(tiny_model_dir, rl_file, async_run):  # noqa: F811
    weights, steps = async_run
    model, ref_steps = fit(tiny_model_dir, rl_file, PreviousWeightsSampler(max_tokens=MAX_TOKENS, seed=0),
                           async_rollouts=0)
    assert_same(steps, ref_steps, weights, model, keys=("train/loss", "train/reward/total", "train/kl",
                                                        "train/is_weight_mean", "rollout/logprob_diff_mean"))


def test_on_policy_differs(tiny_model_dir, rl_file, async_run):  # noqa: F811
    """The comparison above can fail: an on-policy run samples other completions from step 1 on."""
    _, steps = async_run
    _, sync_steps = fit(tiny_model_dir, rl_file, HFSampler(max_tokens=MAX_TOKENS, seed=0), async_rollouts=0)
    assert steps[0]["rollout"].texts == sync_steps[0]["rollout"].texts
    assert steps[1]["rollout"].texts != sync_steps[1]["rollout"].texts
    assert [s["metrics"]["rollout/staleness"] for s in sync_steps] == [0.0] * STEPS


def test_async_resume_is_exact(tiny_model_dir, rl_file, async_run, tmp_path):  # noqa: F811
    """Stop at max_steps=2 (the job for batch 2 is in flight: the checkpoint waits for it and keeps
    its rollout), continue to 4: steps 2-3 and the weights are the uninterrupted async run's."""
    weights, steps = async_run
    fit(tiny_model_dir, rl_file, HFSampler(max_tokens=MAX_TOKENS, seed=0), async_rollouts=1, max_steps=2,
        tmp=tmp_path / "a")
    state = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    (sampler_state,) = [v for k, v in state["callbacks"].items() if "HFSampler" in k]
    assert sampler_state["rollout_ahead"]["index"] == 2 and sampler_state["rollout_ahead"]["made_at_step"] == 1
    model, resumed = fit(tiny_model_dir, rl_file, HFSampler(max_tokens=MAX_TOKENS, seed=0), async_rollouts=1,
                         tmp=tmp_path / "b", ckpt_path=str(tmp_path / "a" / "last.ckpt"))
    assert [s["metrics"]["rollout/staleness"] for s in resumed] == [1.0, 1.0]
    assert_same(steps[2:], resumed, weights, model)


@pytest.mark.parametrize("given,line", [
    ({"async_rollouts": 2}, "algorithm.async_rollouts=2: must be 0 (on-policy) or 1 (one step off-policy)"),
    ({"async_rollouts": 1, "dynamic_sampling": {"max_rounds": 2}}, "algorithm.async_rollouts=1: cannot be combined"),
    ({"dynamic_sampling": {"max_rounds": -1}}, "algorithm.dynamic_sampling.max_rounds=-1: must be ≥ 0"),
])
def test_bad_settings_name_the_key(given, line):
    with pytest.raises(ConfigError) as e:
        GRPOModule.check_settings(**given)
    assert str(e.value).startswith(line)


@pytest.mark.slow
@pytest.mark.vllm
def test_train_py_with_vllm_runs_one_step_ahead(run_train):
    """`train.py sampler=vllm algorithm.async_rollouts=1`: the engine generates the next batch in the
    job thread while the step trains; the sync after the step waits for it, and its probe check
    still holds (the engine got exactly the policy's weights)."""
    import csv

    proc = run_train("+experiment=grpo", "sampler=vllm", "algorithm.async_rollouts=1", "algorithm.is_cap=2.0",
                     "trainer.max_steps=4", "data.batch_size=4", "algorithm.num_generations=2", "sampler.max_tokens=16",
                     "logger=csv", "trainer.enable_progress_bar=false", "num_threads=1",
                     env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in csv.DictReader(open(proc.run_dir / "csv" / "metrics.csv")) if r.get("rollout/staleness")]
    assert [float(r["rollout/staleness"]) for r in rows] == [0.0, 1.0, 1.0, 1.0]
    assert all(float(r["rollout/sync_check_diff"]) < 1e-3 for r in rows)
    assert all(float(r["rollout/ahead_generate_s"]) > 0 for r in rows[1:])


def test_training_thread_takes_the_job_cores_back_as_soon_as_the_job_is_done():
    """While the job runs the cores are split (training 1 of 2); once it has finished, the next
    backward hook gives the training thread both back, not only the step's end."""
    import threading

    sampler = HFSampler(max_tokens=MAX_TOKENS, seed=0)
    release, seen = threading.Event(), {}

    def generate(prompt_ids):
        seen["job_threads"] = torch.get_num_threads()
        assert release.wait(30)
        return "the rollout"

    torch.set_num_threads(2)  # the fixture puts the test's count back
    sampler.ahead.start(generate, [[1, 2]], index=1, step=0)
    assert torch.get_num_threads() == 1
    sampler.on_before_backward(None, None, None)
    assert torch.get_num_threads() == 1  # the job still runs
    release.set()
    sampler.ahead._thread.join(30)
    assert seen["job_threads"] == 1
    sampler.on_after_backward(None, None)
    assert torch.get_num_threads() == 2
    assert sampler.ahead.take(1, [[1, 2]]) == ("the rollout", 0)
    assert torch.get_num_threads() == 2
