"""selected_logprobs (logits[id] − logsumexp, chunked entropy): hand-computed values, and the same
logprobs, entropy and gradients as the full log_softmax path of completion_logprobs."""
from __future__ import annotations

import math

import pytest
import torch

from secreason.models import load_causal_lm
from secreason.modules.logprobs import completion_logprobs, selected_logprobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_hand_computed_logprobs_and_entropy():
    # logits [0, ln 3] → softmax [1/4, 3/4]; at temperature 2 the logits [0, 2 ln 3] give the same.
    for logits, temperature in (([0.0, math.log(3)], 1.0), ([0.0, 2 * math.log(3)], 2.0)):
        z = torch.tensor([[logits, logits]])  # [N=1, T=2, V=2]
        logp, ent = selected_logprobs(z, torch.tensor([[1, 0]]), temperature, with_entropy=True, chunk=1)
        torch.testing.assert_close(logp, torch.tensor([[math.log(3 / 4), math.log(1 / 4)]]))
        h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
        torch.testing.assert_close(ent, torch.tensor([[h, h]]))
    # three-token vocabulary, bf16 logits: computed in float32; logits [1, 2, 3]
    z = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.bfloat16)
    lse = math.log(math.e + math.e ** 2 + math.e ** 3)
    logp, ent = selected_logprobs(z, torch.tensor([[0]]))
    assert logp.dtype == torch.float32 and ent is None
    torch.testing.assert_close(logp, torch.tensor([[1.0 - lse]]))


def test_gradient_is_onehot_minus_softmax():
    z = torch.tensor([[[0.0, math.log(3)]]], requires_grad=True)
    logp, _ = selected_logprobs(z, torch.tensor([[1]]))
    logp.sum().backward()
    torch.testing.assert_close(z.grad, torch.tensor([[[-0.25, 0.25]]]))


def batch():
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(5, 400, (4, 6), generator=g)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[1, :2] = 0  # left padding
    completion_ids = torch.randint(5, 400, (4, 9), generator=g)
    completion_mask = (torch.arange(9)[None] < torch.tensor([9, 3, 6, 1])[:, None]).long()
    return prompt_ids * prompt_mask, prompt_mask, completion_ids * completion_mask, completion_mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_same_logprobs_entropy_and_gradients_as_log_softmax(tiny_model_dir, temperature):
    tensors = batch()
    weights = torch.linspace(-1.0, 2.0, tensors[2].numel()).view_as(tensors[2])  # every position matters
    out = []
    for selective in (False, True):
        model = load_causal_lm(str(tiny_model_dir)).train()
        logp, ent = completion_logprobs(model, *tensors, temperature, with_entropy=True, share_prompts=True,
                                        selective=selective)
        (logp * weights).sum().backward()
        out.append((logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (lp_a, ent_a, grad_a), (lp_b, ent_b, grad_b) = out
    mask = tensors[3].bool()
    torch.testing.assert_close(lp_b, lp_a, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent_b, ent_a, atol=1e-5, rtol=0)
    assert torch.all(lp_b[~mask] == 0) and torch.all(ent_b[~mask] == 0)
    assert all(g.abs().sum() > 0 for n, g in grad_a.items() if "embed" not in n)
    for name in grad_a:
        torch.testing.assert_close(grad_b[name], grad_a[name], atol=1e-6, rtol=1e-5, msg=name)
