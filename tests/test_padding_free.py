"""GRPO's padding-free training half (`algorithm.padding_free`): completion_logprobs over one packed
varlen row gives the padded path's logprobs, entropy and gradients (fp32, 1e-5), runs no padding
token, and falls back to the padded paths where the model cannot split packed rows."""
from __future__ import annotations

import pytest
import torch

from secreason.errors import ConfigError
from secreason.models import load_causal_lm
from secreason.modules.grpo import GRPOModule
from secreason.modules.logprobs import completion_logprobs
from secreason.packing import supports_padding_free
from test_grpo import (FakeRewards, FixedSampler, datamodule, fixed_rollout, make_module, perturbed,  # noqa: F401
                       rl_file, trainer, weights)
from test_logprobs import TokenCounter, batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = [0, 0, 1, 1, 2, 2, 0, 1]  # 3 prompts of 7, 4, 11 tokens; completions of 9, 3, 6, 9, 1, 7, 5, 9


def _run(model, tensors, **how):
    model.zero_grad()
    logp, entropy = completion_logprobs(model, *tensors, temperature=0.7, with_entropy=True, **how)
    weights = torch.linspace(-1, 2, logp.numel()).view_as(logp)  # a loss that weighs every token differently
    (logp * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), entropy, grads


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_equals_padded_values_and_gradients(tiny_model_dir, attn):
    model = load_causal_lm(str(tiny_model_dir), attn_implementation=attn).float().train()
    tensors = batch(ROWS)
    want = _run(model, tensors, share_prompts=False)
    got = _run(model, tensors, padding_free=True)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=0)
    assert got[2].keys() == want[2].keys() and len(want[2]) > 0
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], atol=1e-5, rtol=0, msg=name)
    assert (got[0][tensors[3] == 0] == 0).all()  # padding positions stay 0


def test_padding_free_runs_only_real_tokens(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir)).float().eval()
    prompt_ids, prompt_mask, completion_ids, completion_mask = tensors = batch(ROWS)
    counter = TokenCounter(model)
    with torch.no_grad():
        completion_logprobs(model, *tensors, padding_free=True, share_prompts=True)
    assert counter.calls == 1 and counter.tokens == int(prompt_mask.sum() + completion_mask.sum())


def test_without_packed_attention_it_falls_back(tiny_model_dir, monkeypatch):
    """A model whose attention does not build masks from position ids (a serving-only kernel, a
    model outside transformers) gets the padded forward (same numbers), not a packed row whose
    rows would attend to each other."""
    model = load_causal_lm(str(tiny_model_dir)).float().eval()
    assert supports_padding_free(model) and not supports_padding_free(torch.nn.Linear(2, 2))
    model.config._attn_implementation_internal = "paged|sdpa"
    assert not supports_padding_free(model)
    model.config._attn_implementation_internal = "sdpa"
    tensors = batch(ROWS)
    with torch.no_grad():
        want = completion_logprobs(model, *tensors)[0]
        monkeypatch.setattr("secreason.modules.logprobs.supports_padding_free", lambda m: False)
        counter = TokenCounter(model)
        got = completion_logprobs(model, *tensors, padding_free=True)[0]
    assert counter.tokens == tensors[0].numel() + tensors[2].numel()  # the padded [N, P + T] forward
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def _one_sgd_step(model_dir, tokenizer, rl_file, rollout, **how) -> dict[str, torch.Tensor]:
    model = load_causal_lm(str(model_dir))
    before = weights(model)
    module = make_module(model, tokenizer, FakeRewards(totals=[1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.25, 1.0]),
                         ref=perturbed(model), micro_batch_size=3, kl={"beta": 0.05, "estimator": "k3"},
                         optim={"name": "sgd", "lr": 1.0}, max_grad_norm=None, **how)
    tr = trainer(callbacks=[FixedSampler(rollout)], max_steps=1)
    tr.fit(module, datamodule=datamodule(tokenizer, rl_file))
    assert tr.global_step == 1
    return {k: model.state_dict()[k] - v for k, v in before.items()}


def test_grpo_step_is_the_same_padding_free(tiny_model_dir, tokenizer, rl_file, fixed_rollout):
    """A GRPO step (policy, reference and KL, micro-batches of 3 that split groups) with
    algorithm.padding_free=true makes the padded step's SGD update (lr 1: the update is the gradient)."""
    padded = _one_sgd_step(tiny_model_dir, tokenizer, rl_file, fixed_rollout, share_prompts=True)
    packed = _one_sgd_step(tiny_model_dir, tokenizer, rl_file, fixed_rollout, padding_free=True)
    assert max(v.abs().max().item() for v in padded.values()) > 1e-4
    for k in padded:
        torch.testing.assert_close(packed[k], padded[k], atol=1e-5, rtol=0, msg=k)


def test_padding_free_setting_is_checked():
    with pytest.raises(ConfigError, match="algorithm.padding_free='yes'"):
        GRPOModule.check_settings(padding_free="yes")
