"""The GRPO module in process on the tiny model: overlong handling, logged metrics, sampler/trainer
logprob parity, zero-variance batches, μ > 1, LoRA reference, gradient accumulation and resume.

Rewards here come from hand-made reward sets (the RewardSet result namespace without any parsing),
so every number a test checks is known. The pure GRPO math is in tests/test_algos.py.
"""
from __future__ import annotations

import copy
import csv
import json
import math
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from secreason.callbacks.hf_sampler import HFSampler
from secreason.callbacks.sampler import SamplerCallback
from secreason.sampling.base import completions_to_rollout
from secreason.algos import LOSS_AGG, KL_ESTIMATORS
from secreason.data.chat import encode_prompt
from secreason.data.prompts import PromptDataModule
from secreason.models import load_causal_lm
from secreason.modules.grpo import GRPOModule, overlong_adjust
from secreason.modules.logprobs import completion_logprobs
from secreason.modules.rollout_stats import rollout_metrics
from secreason.rewards.sets import RewardResult, RewardSet
from secreason.rollout import Rollout

MAX_TOKENS = 12
N_GEN = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------ helpers

PROMPTS = [
    ("alpha", "Which option is CWE-79? A) XSS B) SQLi C) CSRF D) SSRF"),
    ("beta", "What is 2+3+4?"),
    ("alpha", "Which ATT&CK technique: Search Closed Sources?"),
    ("beta", "Give the CVSS vector for a local, low complexity bug with no privileges needed."),
    ("alpha", "What is 7+1+1?"),
    ("beta", "Which option is CWE-125?"),
    ("alpha", "Name the technique T1046."),
    ("beta", "What is 9+9+9?"),
]


def text_score(text: str) -> float:
    """A deterministic pseudo-reward in {0, 1/6, …, 1}: random-model texts almost always differ."""
    return (sum(map(ord, text)) % 7) / 6


class Scored:
    """A reward from a plain per-text function, with the `stats` Counter every reward keeps."""

    def __init__(self, fn) -> None:
        self.fn, self.stats = fn, Counter()

    def __call__(self, texts, **columns):
        return [self.fn(t) for t in texts]


class ShortPenalty:
    """−0.5 for a text under 30 characters, with the reason "too_short" (the `assess` protocol)."""

    penalty, REASONS = -0.5, ("too_short",)

    def assess(self, completions, prompts=None):
        return [["too_short"] if len(t) < 30 else [] for t in completions]


class FakeRewards:
    """A RewardSet over rewards without parsing, routed by task:

    'chars'  (task alpha) = text_score(text)            'parity' (task beta) = len(text) % 2
    format penalty −0.5 when the text has fewer than 30 characters (ShortPenalty).
    `constant` / `totals` replace everything with those totals (zero-variance groups). Every result is kept.
    """

    def __init__(self, constant: float | None = None, totals: list[float] | None = None) -> None:
        self.constant, self.totals, self.results = constant, totals, []
        self.reward_set = RewardSet({
            "chars": {"fn": Scored(text_score), "tasks": ["alpha"]},
            "parity": {"fn": Scored(lambda t: float(len(t) % 2)), "tasks": ["beta"]},
        }, format_penalty=ShortPenalty())

    def __call__(self, texts, rows, completion_ids=None):
        n = len(texts)
        if self.constant is not None or self.totals is not None:
            total = [float(self.constant)] * n if self.constant is not None else list(self.totals)
            res = RewardResult(total=total, correctness=total, format_penalty=[0.0] * n,
                               per_reward={"const": total}, penalised=[False] * n, routed=[True] * n)
        else:
            res = self.reward_set(texts, rows, completion_ids=completion_ids)
        self.results.append(res)
        return res


class Recorder(L.Callback):
    """What each training batch saw: prompts, rollout and the logged metrics."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({"step": trainer.global_step, "prompts": [r["prompt"] for r in batch["rows"]],
                           "rollout": batch["rollout"],
                           "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}})


class FixedSampler(SamplerCallback):
    """Returns the same rollout every call (module-level tests on a known rollout)."""

    def __init__(self, rollout: Rollout) -> None:
        super().__init__(max_tokens=MAX_TOKENS)
        self.rollout = rollout

    def generate(self, prompt_ids, n):
        self.calls += 1
        return self.rollout

    def sync_weights(self, model):
        pass


@pytest.fixture(scope="module")
def rl_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("rl") / "rl.jsonl"
    f.write_text("".join(json.dumps({"task": t, "prompt": p, "answer": "x"}) + "\n" for t, p in PROMPTS))
    return f


def datamodule(tokenizer, rl_file, batch_size: int = 4) -> PromptDataModule:
    return PromptDataModule(tokenizer, path=str(rl_file), split="train", batch_size=batch_size, seed=0)


def perturbed(model, scale: float = 0.05, seed: int = 1):
    """A frozen copy of `model` with noise on every weight: a reference the policy is not equal to."""
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return ref


def make_module(model, tokenizer, rewards, ref="copy", **kw) -> GRPOModule:
    if ref == "copy":
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    args = dict(num_generations=N_GEN, micro_batch_size=4, max_completion_length=MAX_TOKENS, temperature=1.0,
                kl={"beta": 0.02, "estimator": "k3"}, optim={"name": "adamw", "lr": 1e-3},
                scheduler={"name": "constant"})
    args.update(kw)
    return GRPOModule(model=model, tokenizer=tokenizer, reward_set=rewards, ref_model=ref, **args)


def trainer(tmp_path=None, callbacks=(), **kw) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, max_epochs=10, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, logger=False, num_sanity_val_steps=0, limit_val_batches=0,
                log_every_n_steps=1)
    if tmp_path is not None:
        args["logger"] = CSVLogger(str(tmp_path), name="csv", version="")
    args.update(kw)
    return L.Trainer(callbacks=list(callbacks), **args)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_change(before: dict, model) -> float:
    return max((model.state_dict()[k] - v).abs().max().item() for k, v in before.items())


def rollout_logprobs(model, r: Rollout, temperature: float) -> torch.Tensor:
    with torch.no_grad():
        return completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                   temperature)[0]


# ------------------------------------------------------------------------------------ overlong

def test_overlong_adjust_by_hand():
    rewards = torch.tensor([1.0, 1.0, 0.5])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])  # lengths 4, 2, 3
    truncated = torch.tensor([True, False, False])
    r, m = overlong_adjust(rewards, mask, truncated, "none", max_len=4, buffer=2)
    assert torch.equal(r, rewards) and torch.equal(m, mask)
    # mask: the truncated row leaves the loss, rewards untouched
    r, m = overlong_adjust(rewards, mask, truncated, "mask", max_len=4, buffer=2)
    assert torch.equal(r, rewards)
    assert m.tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
    # soft_penalty, max_len 4, buffer 2: the penalty zone starts after 4 − 2 = 2 tokens.
    #   len 4: over (4−2)/2 = 1 → 1 − 1·1 = 0;  len 2: over 0 → 1;  len 3: (3−2)/2 = 0.5 → 0.5 − 0.5 = 0
    r, m = overlong_adjust(rewards, mask, truncated, "soft_penalty", max_len=4, buffer=2, penalty=1.0)
    torch.testing.assert_close(r, torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(m, mask)
    # penalty 0.4: 1 − 0.4 = 0.6; 1; 0.5 − 0.4·0.5 = 0.3
    r, _ = overlong_adjust(rewards, mask, truncated, "soft_penalty", max_len=4, buffer=2, penalty=0.4)
    torch.testing.assert_close(r, torch.tensor([0.6, 1.0, 0.3]))
    # buffer 1: only a full-length row is penalised, by the whole penalty: (4−3)/1 = 1
    r, _ = overlong_adjust(rewards, mask, truncated, "soft_penalty", max_len=4, buffer=1, penalty=1.0)
    torch.testing.assert_close(r, torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="algorithm.overlong.mode"):
        overlong_adjust(rewards, mask, truncated, "drop", max_len=4)


def test_rollout_metrics_by_hand():
    class WordTokenizer:  # one token per whitespace-separated word
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    texts = ["<think>a b c d</think>x", "<think></think>y", "no think at all", "<think>open only"]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    r = Rollout(torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1, dtype=torch.long),
                torch.zeros(4, 5, dtype=torch.long), mask, torch.zeros(4, 5), torch.tensor([0, 0, 1, 1]),
                torch.tensor([True, False, False, False]), texts)
    m = rollout_metrics(r, WordTokenizer(), ("<think>", "</think>"))
    assert m["rollout/completion_len_mean"] == pytest.approx((5 + 3 + 2 + 1) / 4)
    assert m["rollout/completion_len_max"] == 5
    assert m["rollout/truncated_frac"] == pytest.approx(0.25)
    # closed thinks: 4 tokens and 0 tokens → mean 2; 2 of 4 closed
    assert m["rollout/think_len_mean"] == pytest.approx(2.0)
    assert m["rollout/think_closed_frac"] == pytest.approx(0.5)
    # near-empty: the empty think and the two unclosed ones (≤ 2 tokens or not closed) → 3/4
    assert m["rollout/think_near_empty_frac"] == pytest.approx(0.75)


# ------------------------------------------------------------------------------------ a real run

LOGGED = ["train/loss", "train/reward/chars", "train/reward/parity", "train/reward/total",
          "train/reward/correctness", "train/kl", "train/clip_frac", "train/entropy",
          "rollout/completion_len_mean", "rollout/think_len_mean", "rollout/think_near_empty_frac",
          "rollout/zero_std_frac", "rollout/logprob_diff_max", "train/format_penalty_rate", "rollout/kept_frac",
          "train/reward/std", "train/penalty/too_short", "train/reward_stats/chars/timeouts",
          "train/reward_stats/parity/errors", "train/reward_stats/unrouted"]


def test_three_steps_change_weights_and_log_every_metric(tiny_model, tokenizer, rl_file, tmp_path):
    rewards = FakeRewards()
    module = make_module(tiny_model, tokenizer, rewards)
    sampler, rec = HFSampler(temperature=1.0, max_tokens=MAX_TOKENS, seed=0), Recorder()
    before = weights(tiny_model)
    tr = trainer(tmp_path, callbacks=[sampler, rec], max_steps=3)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file))
    assert tr.global_step == 3 and sampler.calls == 3
    assert max_change(before, tiny_model) > 1e-5

    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    logged = [r for r in rows if r.get("train/loss")]
    assert len(logged) == 3
    for key in LOGGED:
        values = [float(r[key]) for r in logged if r.get(key)]
        assert len(values) == 3 and all(math.isfinite(v) for v in values), key
    assert len(rewards.results) == 3
    for row, res, step in zip(logged, rewards.results, rec.steps):
        # reward metrics are batch means; a routed reward is averaged over its own rows only
        routed = lambda vals: [v for v in vals if v is not None]  # noqa: E731
        assert float(row["train/reward/total"]) == pytest.approx(sum(res.total) / len(res.total), abs=1e-6)
        for name in ("chars", "parity"):
            vals = routed(res.per_reward[name])
            assert float(row[f"train/reward/{name}"]) == pytest.approx(sum(vals) / len(vals), abs=1e-6)
        assert float(row["train/format_penalty_rate"]) == pytest.approx(sum(res.penalised) / len(res.penalised))
        assert float(row["train/penalty/too_short"]) == pytest.approx(sum(res.penalised) / len(res.penalised))
        group_std = torch.tensor(res.total).view(-1, N_GEN).std(dim=1)  # rows are grouped n by n, unbiased
        assert float(row["train/reward/std"]) == pytest.approx(group_std.mean().item(), abs=1e-6)
        assert float(row["train/reward_stats/chars/timeouts"]) == 0 and float(row["train/reward_stats/unrouted"]) == 0
        r = step["rollout"]
        assert float(row["rollout/completion_len_mean"]) == pytest.approx(r.completion_lengths.float().mean().item())
        # fp32, same weights: the sampler's logprobs are the trainer's (peer-bugs §4)
        assert 0 <= float(row["rollout/logprob_diff_max"]) < 1e-4
        assert 0 <= float(row["train/clip_frac"]) <= 1 and float(row["train/entropy"]) > 0
        assert 0 <= float(row["rollout/think_near_empty_frac"]) <= 1
    # the first step's KL is exactly 0: the reference is the starting policy
    assert float(logged[0]["train/kl"]) == pytest.approx(0.0, abs=1e-7)
    assert float(logged[-1]["train/kl"]) > 0


# ------------------------------------------------------------------------------------ logprob parity

@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("batch_size", [None, 1])
def test_sampler_logprobs_equal_trainer_logprobs(tiny_model, tokenizer, temperature, batch_size):
    """Processed-distribution logprobs (peer-bugs §4): what the sampler reports for each sampled
    token is log softmax(logits / T), the same number `completion_logprobs` gives the trainer,
    with prompts of different lengths (left padding) and in chunks or not."""
    prompts = [encode_prompt(tokenizer, p) for _, p in PROMPTS[:4]]
    assert len({len(p) for p in prompts}) > 1  # padding is exercised
    sampler = HFSampler(temperature=temperature, max_tokens=MAX_TOKENS, seed=5, batch_size=batch_size)
    r = sampler.bind(tiny_model, tokenizer).generate(prompts, 3)
    trainer_lp = rollout_logprobs(tiny_model, r, temperature)
    m = r.completion_mask.bool()
    assert m.sum() > 20
    torch.testing.assert_close(trainer_lp[m], r.sampler_logprobs[m], atol=1e-4, rtol=0)
    assert torch.all(r.sampler_logprobs[~m] == 0)
    if temperature != 1.0:  # the check is sensitive: T=1 logprobs are not those of T=0.7
        assert (rollout_logprobs(tiny_model, r, 1.0)[m] - r.sampler_logprobs[m]).abs().max() > 1e-2


# ------------------------------------------------------------------------------------ zero variance

def test_zero_variance_batch_trains_on_kl_only(tiny_model, tokenizer, rl_file, monkeypatch):
    """Constant reward → every group has std 0 → advantage 0 (never NaN) and the loss is β·KL.

    With token_mean aggregation and one micro-batch the loss is β · Σ k3 / tokens, computed here
    independently from the recorded rollout, the starting policy and the reference."""
    advantages: list[torch.Tensor] = []
    beta = 0.1
    start = copy.deepcopy(tiny_model)
    ref = perturbed(tiny_model)
    module = make_module(tiny_model, tokenizer, FakeRewards(constant=1.0), ref=ref, loss_agg="token_mean",
                         micro_batch_size=64, kl={"beta": beta, "estimator": "k3"})
    real = module.policy_loss

    def spy(logp, old_logp, adv, *args, **kwargs):
        advantages.append(adv.clone())
        return real(logp, old_logp, adv, *args, **kwargs)

    monkeypatch.setattr(module, "policy_loss", spy)
    rec = Recorder()
    tr = trainer(callbacks=[HFSampler(max_tokens=MAX_TOKENS, seed=0), rec], max_steps=1)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file))
    m = rec.steps[0]["metrics"]
    assert all(math.isfinite(v) for v in m.values()), m
    assert len(advantages) == 1 and torch.equal(advantages[0], torch.zeros(len(PROMPTS[:4]) * N_GEN))
    assert m["rollout/zero_std_frac"] == 1.0 and m["rollout/kept_frac"] == 1.0
    assert m["train/clip_frac"] == 0.0
    r = rec.steps[0]["rollout"]
    mask = r.completion_mask.float()
    kl = KL_ESTIMATORS.get("k3")(rollout_logprobs(start, r, 1.0), rollout_logprobs(ref, r, 1.0))
    expected_kl = (kl * mask).sum() / mask.sum()
    assert expected_kl > 1e-3
    assert m["train/kl"] == pytest.approx(expected_kl.item(), rel=1e-4)
    assert m["train/loss"] == pytest.approx(beta * expected_kl.item(), rel=1e-4)
    assert max_change(weights(start), tiny_model) > 0  # the KL gradient alone moved the policy


def test_zero_variance_without_kl_leaves_weights_exactly(tiny_model, tokenizer, rl_file):
    """β = 0 and advantage 0: the loss and its gradient are exactly 0, so AdamW moves nothing."""
    module = make_module(tiny_model, tokenizer, FakeRewards(constant=0.0), ref=None, kl={"beta": 0.0})
    before, rec = weights(tiny_model), Recorder()
    tr = trainer(callbacks=[HFSampler(max_tokens=MAX_TOKENS, seed=0), rec], max_steps=2)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file))
    assert tr.global_step == 2
    assert max_change(before, tiny_model) == 0.0
    assert [s["metrics"]["train/loss"] for s in rec.steps] == [0.0, 0.0]


def test_filter_zero_std_groups_skips_the_update(tiny_model, tokenizer, rl_file):
    module = make_module(tiny_model, tokenizer, FakeRewards(constant=1.0), ref=perturbed(tiny_model),
                         filter_zero_std_groups=True)
    before, rec = weights(tiny_model), Recorder()
    tr = trainer(callbacks=[HFSampler(max_tokens=MAX_TOKENS, seed=0), rec], max_epochs=1, limit_train_batches=2)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file))
    assert len(rec.steps) == 2 and tr.global_step == 0  # no optimizer step
    assert max_change(before, tiny_model) == 0.0
    for s in rec.steps:
        assert s["metrics"]["rollout/kept_frac"] == 0.0 and s["metrics"]["rollout/zero_std_frac"] == 1.0
        assert "train/loss" not in s["metrics"]


def test_filter_zero_std_groups_keeps_the_others(tiny_model, tokenizer, rl_file):
    # groups of 2: [1, 0] spread, [1, 1] zero std, [0, 0.5] spread, [2, 2] zero std → kept 4 of 8
    totals = [1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 2.0, 2.0]
    module = make_module(tiny_model, tokenizer, FakeRewards(totals=totals), filter_zero_std_groups=True)
    rec = Recorder()
    tr = trainer(callbacks=[HFSampler(max_tokens=MAX_TOKENS, seed=0), rec], max_steps=1)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file))
    assert tr.global_step == 1
    assert rec.steps[0]["metrics"]["rollout/kept_frac"] == 0.5
    assert rec.steps[0]["metrics"]["rollout/zero_std_frac"] == 0.5


class AllWrongPenalised:
    """Every answer wrong (correctness 0); the format penalty differs inside each group (−0.5, 0)."""

    def __call__(self, texts, rows, completion_ids=None):
        n = len(texts)
        penalty = [-0.5 if i % 2 else 0.0 for i in range(n)]
        return RewardResult(total=list(penalty), correctness=[0.0] * n, format_penalty=penalty,
                            per_reward={"wrong": [0.0] * n}, penalised=[p != 0 for p in penalty],
                            routed=[True] * n, penalty_reasons=[["short"] if p else [] for p in penalty])


@pytest.mark.parametrize("on,moves", [(None, False), ("total", True)])
def test_filter_judges_correctness_by_default(tiny_model, tokenizer, rl_file, on, moves):
    """All answers wrong, penalties differ: by default (filter on correctness) the groups are dropped and
    no gradient flows; judged on the shaped total they would train on the penalty gaps alone."""
    kw = {} if on is None else {"filter_zero_std_on": on}
    module = make_module(tiny_model, tokenizer, AllWrongPenalised(), ref=None, kl={"beta": 0.0},
                         filter_zero_std_groups=True, **kw)
    grads: list[float] = []
    tiny_model.lm_head.weight.register_hook(lambda g: grads.append(g.abs().sum().item()))
    before, rec = weights(tiny_model), Recorder()
    tr = trainer(callbacks=[HFSampler(max_tokens=MAX_TOKENS, seed=0), rec], max_steps=1, limit_train_batches=1)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file))
    m = rec.steps[0]["metrics"]
    assert m["rollout/zero_std_correctness_frac"] == 1.0 and m["rollout/zero_std_frac"] == 0.0
    if moves:
        assert m["rollout/kept_frac"] == 1.0 and grads and max(grads) > 0 and max_change(before, tiny_model) > 0
    else:
        assert m["rollout/kept_frac"] == 0.0 and not grads and max_change(before, tiny_model) == 0.0
        assert "train/loss" not in m


# ------------------------------------------------------------------------------------ μ > 1

@pytest.mark.parametrize("old_logprobs,atol", [("recompute", 1e-6), ("sampler", 1e-4)])
def test_two_updates_per_batch(tiny_model, tokenizer, rl_file, monkeypatch, old_logprobs, atol):
    """μ = 2: two optimizer steps per rollout batch; the first update's ratio is 1 (old = the
    policy that sampled), the second's is not (old stays fixed while the policy moves)."""
    ratios: list[torch.Tensor] = []
    module = make_module(tiny_model, tokenizer, FakeRewards(), updates_per_batch=2, old_logprobs=old_logprobs,
                         micro_batch_size=64, optim={"name": "adamw", "lr": 1e-2})
    real = module.policy_loss

    def spy(logp, old_logp, *args, **kwargs):
        loss, st = real(logp, old_logp, *args, **kwargs)
        ratios.append(st["ratio"].clone())
        return loss, st

    monkeypatch.setattr(module, "policy_loss", spy)
    tr = trainer(callbacks=[HFSampler(max_tokens=MAX_TOKENS, seed=0)], max_epochs=1, limit_train_batches=2)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file))
    assert tr.global_step == 4  # 2 batches × μ = 2
    assert len(ratios) == 4  # one micro-batch per update
    for first, second in (ratios[0:2], ratios[2:4]):
        torch.testing.assert_close(first, torch.ones_like(first), atol=atol, rtol=0)
        assert (second - 1).abs().max() > 1e-3


def test_two_updates_per_batch_scheduler_and_step_count(tiny_model, tokenizer, rl_file):
    """max_steps counts optimizer steps: μ = 2 and max_steps = 4 is 2 rollout batches."""
    module = make_module(tiny_model, tokenizer, FakeRewards(), updates_per_batch=2,
                         scheduler={"name": "cosine", "warmup_steps": 0})
    sampler = HFSampler(max_tokens=MAX_TOKENS, seed=0)
    tr = trainer(callbacks=[sampler], max_steps=4)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file))
    assert tr.global_step == 4 and sampler.calls == 2
    assert module.lr_schedulers().last_epoch == 4


# ------------------------------------------------------------------------------------ LoRA

def test_lora_reference_is_the_base_with_adapters_off(tiny_model_dir, tokenizer, compose_train):
    from secreason.run import build_module

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    model = load_causal_lm(str(tiny_model_dir), lora=lora)
    cfg = compose_train("+experiment=grpo", "model.lora.r=4", "model.lora.alpha=8")
    module = build_module(cfg, model, tokenizer)
    assert module._ref == []  # no frozen copy: the base with adapters off is the reference
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in model.parameters())
    # full fine-tuning keeps one frozen copy, outside the module tree (not in the checkpoint)
    full = build_module(compose_train("+experiment=grpo"), load_causal_lm(str(tiny_model_dir)), tokenizer)
    assert len(full._ref) == 1 and not any(p is q for p in full.parameters() for q in full._ref[0].parameters())
    assert not any(p.requires_grad for p in full._ref[0].parameters())
    # β = 0 needs no reference at all
    no_kl = build_module(compose_train("+experiment=grpo", "algorithm.kl.beta=0"), load_causal_lm(str(tiny_model_dir)),
                         tokenizer)
    assert no_kl._ref == []

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # lora_B starts at 0 (adapters = identity): make them matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    base = load_causal_lm(str(tiny_model_dir))
    prompts = [encode_prompt(tokenizer, p) for _, p in PROMPTS[:3]]
    r = HFSampler(max_tokens=MAX_TOKENS, seed=0).bind(model, tokenizer).generate(prompts, 2)
    m = r.completion_mask.bool()
    policy_before = rollout_logprobs(model, r, 1.0)
    ref = module.reference_logprobs(r)
    torch.testing.assert_close(ref[m], rollout_logprobs(base, r, 1.0)[m], atol=1e-5, rtol=0)
    assert (policy_before[m] - ref[m]).abs().max() > 1e-2  # adapters on ≠ reference
    torch.testing.assert_close(rollout_logprobs(model, r, 1.0), policy_before)  # adapters back on


def test_lora_grpo_steps_train_adapters_only(tiny_model_dir, tokenizer, rl_file):
    model = load_causal_lm(str(tiny_model_dir), lora={"r": 4, "alpha": 8, "target_modules": "all-linear"})
    module = make_module(model, tokenizer, FakeRewards(), ref=None, kl={"beta": 0.1, "estimator": "k3"},
                         optim={"name": "adamw", "lr": 1e-2})
    before, rec = weights(model), Recorder()
    tr = trainer(callbacks=[HFSampler(max_tokens=MAX_TOKENS, seed=0), rec], max_steps=2)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)[:5]
    assert rec.steps[0]["metrics"]["train/kl"] == pytest.approx(0.0, abs=1e-7)  # adapters start at identity
    assert rec.steps[1]["metrics"]["train/kl"] > 0


# ------------------------------------------------------------------------------------ accumulation

@pytest.fixture(scope="module")
def fixed_rollout(tokenizer) -> Rollout:
    """4 prompts × 2 completions of different lengths (3 … 12 tokens, one 1-token completion)."""
    g = torch.Generator().manual_seed(0)
    lengths = [3, 12, 7, 1, 12, 5, 9, 4]
    completions = [torch.randint(10, 500, (n,), generator=g).tolist() for n in lengths]
    prompts = [encode_prompt(tokenizer, p) for _, p in PROMPTS[:4]]
    return completions_to_rollout(prompts, N_GEN, completions, [[0.0] * n for n in lengths],
                                  tokenizer.eos_token_id, tokenizer.pad_token_id, MAX_TOKENS, tokenizer)


def one_sgd_step(model_dir, tokenizer, rl_file, rollout, loss_agg: str, micro: int) -> dict[str, torch.Tensor]:
    model = load_causal_lm(str(model_dir))
    before = weights(model)
    # one zero-std group ([0.5, 0.5]) and one negative advantage pair
    rewards = FakeRewards(totals=[1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.25, 1.0])
    module = make_module(model, tokenizer, rewards, ref=perturbed(model), loss_agg=loss_agg,
                         micro_batch_size=micro, kl={"beta": 0.05, "estimator": "k3"},
                         optim={"name": "sgd", "lr": 1.0}, max_grad_norm=None)
    tr = trainer(callbacks=[FixedSampler(rollout)], max_steps=1)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file))
    assert tr.global_step == 1
    return {k: model.state_dict()[k] - v for k, v in before.items()}


def test_micro_batches_give_the_same_update_for_every_loss_agg(tiny_model_dir, tokenizer, rl_file, fixed_rollout):
    """One micro-batch of 8 and four of 2 make the same SGD step (lr 1: the step is the gradient),
    for every loss_agg: the normalisers span the optimizer step (peer-bugs §1)."""
    updates = {}
    for name in LOSS_AGG.names():
        whole = one_sgd_step(tiny_model_dir, tokenizer, rl_file, fixed_rollout, name, 8)
        split = one_sgd_step(tiny_model_dir, tokenizer, rl_file, fixed_rollout, name, 2)
        assert max(v.abs().max().item() for v in whole.values()) > 1e-4, name
        for k in whole:
            torch.testing.assert_close(split[k], whole[k], atol=1e-6, rtol=0, msg=f"{name}: {k}")
        updates[name] = whole
    # the completions differ in length, so the aggregations really differ (the test can tell them apart)
    key = next(iter(updates["sample_mean"]))
    names = LOSS_AGG.names()
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (updates[a][key] - updates[b][key]).abs().max() > 1e-6, (a, b)


# ------------------------------------------------------------------------------------ resume

def run_grpo(model_dir, tokenizer, rl_file, tmp: Path, max_steps: int, ckpt_path: str | None = None,
             every: int | None = None):
    L.seed_everything(0)
    model = load_causal_lm(str(model_dir))
    module = make_module(model, tokenizer, FakeRewards(), kl={"beta": 0.05, "estimator": "k3"},
                         scheduler={"name": "cosine", "warmup_steps": 1})
    rec = Recorder()
    callbacks = [HFSampler(max_tokens=MAX_TOKENS, seed=0), rec]
    if every:
        callbacks.append(ModelCheckpoint(dirpath=str(tmp / "ckpt"), every_n_train_steps=every, save_top_k=-1))
    tr = trainer(callbacks=callbacks, max_steps=max_steps, enable_checkpointing=bool(every), default_root_dir=str(tmp))
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file), ckpt_path=ckpt_path)
    return model, rec, tr


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tokenizer, rl_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpo_a")
    model, rec, tr = run_grpo(tiny_model_dir, tokenizer, rl_file, tmp, max_steps=4, every=1)
    assert tr.global_step == 4
    return tmp, weights(model), rec


@pytest.mark.parametrize("resume_at", [1, 2, 3])  # 2 batches per epoch: step 2 is an epoch boundary
def test_resume_equals_uninterrupted(tiny_model_dir, tokenizer, rl_file, tmp_path, uninterrupted, resume_at):
    """4 GRPO steps in one go == `resume_at` steps, a checkpoint, and a resumed run to step 4:
    the same prompts, the same completions (the sampler's call count and the data position are
    in the checkpoint), the same rewards and the same weights (peer-bugs §7)."""
    tmp_a, wa, rec_a = uninterrupted
    (ckpt,) = (tmp_a / "ckpt").glob(f"*-step={resume_at}.ckpt")
    state = torch.load(ckpt, weights_only=False)
    assert state["callbacks"]["HFSampler"]["calls"] == resume_at
    assert state["PromptDataModule"] == {"epoch": (resume_at - 1) // 2, "batches_done": (resume_at - 1) % 2 + 1}
    model, rec_b, tr = run_grpo(tiny_model_dir, tokenizer, rl_file, tmp_path, max_steps=4, ckpt_path=str(ckpt))
    assert tr.global_step == 4
    assert len(rec_b.steps) == 4 - resume_at  # no step lost or repeated (verl #7401)
    for a, b in zip(rec_a.steps[resume_at:], rec_b.steps):
        assert a["prompts"] == b["prompts"]  # data position restored
        assert a["rollout"].texts == b["rollout"].texts  # sampler call count restored
        assert a["metrics"]["train/reward/total"] == pytest.approx(b["metrics"]["train/reward/total"])
        assert a["metrics"]["train/loss"] == pytest.approx(b["metrics"]["train/loss"], abs=1e-6)
    wb = weights(model)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=0, msg=k)


def test_filter_zero_std_on_is_checked():
    from secreason.errors import ConfigError

    with pytest.raises(ConfigError, match=r"algorithm\.filter_zero_std_on='accuracy': choose one of: correctness, total"):
        GRPOModule.check_settings(filter_zero_std_on="accuracy")
