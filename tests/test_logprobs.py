"""completion_logprobs with shared prompts: the same numbers and gradients as one forward over
[prompt, completion], while each distinct prompt goes through the model once."""
from __future__ import annotations

import pytest
import torch

from secreason.models import load_causal_lm
from secreason.modules.logprobs import completion_logprobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD = 0


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def batch(rows: list[int]) -> tuple[torch.Tensor, ...]:
    """Rows pick one of three prompts of different lengths (left padding); completions of
    different lengths (right padding), 9 tokens wide."""
    g = torch.Generator().manual_seed(0)
    distinct = [torch.randint(5, 400, (k,), generator=g).tolist() for k in (7, 4, 11)]
    prompt_ids, prompt_mask = left_padded([distinct[i] for i in rows])
    completion_ids = torch.randint(5, 400, (len(rows), 9), generator=g)
    lengths = torch.tensor([9, 3, 6, 9, 1, 7, 5, 9][: len(rows)])
    completion_mask = (torch.arange(9)[None] < lengths[:, None]).long()
    return prompt_ids, prompt_mask, completion_ids * completion_mask, completion_mask


class TokenCounter:
    """Counts the token positions that enter the model (a hook on the input embeddings)."""

    def __init__(self, model: torch.nn.Module):
        self.tokens, self.calls = 0, 0
        model.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.tokens += args[0].numel()
        self.calls += 1


ROWS = [0, 1, 0, 2, 1, 0, 2, 1]  # prompt groups interleaved, as after a length sort


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prompts_give_the_same_logprobs_and_entropy(tiny_model, temperature):
    tensors = batch(ROWS)
    with torch.no_grad():
        plain, plain_ent = completion_logprobs(tiny_model, *tensors, temperature, with_entropy=True)
        counter = TokenCounter(tiny_model)
        shared, shared_ent = completion_logprobs(tiny_model, *tensors, temperature, with_entropy=True,
                                                 share_prompts=True)
    p, t = tensors[0].shape[1], tensors[2].shape[1]
    assert counter.calls == 2 and counter.tokens == 3 * p + len(ROWS) * t  # 3 prompts, not 8
    mask = tensors[3].bool()
    assert mask.sum() < mask.numel() and tensors[1].sum() < tensors[1].numel()  # both paddings exercised
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared_ent, plain_ent, atol=1e-5, rtol=0)
    assert torch.all(shared[~mask] == 0)


def test_shared_prompts_give_the_same_gradients(tiny_model_dir):
    tensors = batch(ROWS)
    weights = torch.linspace(-1.0, 2.0, tensors[2].numel()).view_as(tensors[2])  # every position matters
    grads = []
    for share in (False, True):
        model = load_causal_lm(str(tiny_model_dir)).train()
        logp, _ = completion_logprobs(model, *tensors, share_prompts=share)
        (logp * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    plain, shared = grads
    assert plain.keys() == shared.keys()
    assert all(g.abs().sum() > 0 for n, g in plain.items() if "embed" not in n)
    for name in plain:
        torch.testing.assert_close(shared[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_distinct_prompts_take_one_forward(tiny_model):
    tensors = batch([0, 1, 2])
    counter = TokenCounter(tiny_model)
    with torch.no_grad():
        shared, _ = completion_logprobs(tiny_model, *tensors, share_prompts=True)
        assert counter.calls == 1  # nothing to share: no second pass
        plain, _ = completion_logprobs(tiny_model, *tensors)
    torch.testing.assert_close(shared, plain, atol=0, rtol=0)


def test_gradient_checkpointing_falls_back_to_one_forward(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir), gradient_checkpointing=True).train()
    counter = TokenCounter(model)
    tensors = batch(ROWS)
    logp, _ = completion_logprobs(model, *tensors, share_prompts=True)
    logp.sum().backward()
    assert counter.calls == 1 and counter.tokens == logp.shape[0] * (tensors[0].shape[1] + tensors[2].shape[1])


def test_shared_prompts_under_lora(tiny_model_dir):
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    model = load_causal_lm(str(tiny_model_dir), lora=lora)
    with torch.no_grad():  # lora_B starts at 0: make the adapters change the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.2)
    tensors = batch(ROWS)
    with torch.no_grad():
        plain, _ = completion_logprobs(model, *tensors)
        shared, _ = completion_logprobs(model, *tensors, share_prompts=True)
        with model.disable_adapter():
            base, _ = completion_logprobs(model, *tensors, share_prompts=True)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)
    assert (base - plain).abs().max() > 1e-2


def test_no_logits_over_prompt_positions(tiny_model):
    """The LM head runs only where a completion token is predicted (`logits_to_keep`)."""
    widths = []
    tiny_model.lm_head.register_forward_hook(lambda mod, args, out: widths.append(out.shape[1]))
    tensors = batch(ROWS)
    t = tensors[2].shape[1]
    with torch.no_grad():
        completion_logprobs(tiny_model, *tensors)
        completion_logprobs(tiny_model, *tensors, share_prompts=True)
    assert widths == [t + 1, 1, t]  # plain: t + 1; shared: the prompt's last position, then the completion


# ------------------------------------------------------------------------------------ micro-batch cut

def rows_of(micro):
    return [m.tolist() for m in micro]


def test_micro_batch_rows_keep_groups_together_when_prompts_dominate():
    from secreason.modules.grpo import micro_batch_rows

    lengths, groups = torch.tensor([4, 1, 3, 2]), torch.tensor([0, 0, 1, 1])
    # by length: [0, 2] [3, 1]: 2 prompts × 10 + 2 × 4 = 28, 2 × 10 + 2 × 2 = 24 → 52
    # by group:  [0, 1] [2, 3]: 1 × 10 + 2 × 4 = 18, 1 × 10 + 2 × 3 = 16 → 34: cheaper
    assert rows_of(micro_batch_rows(lengths, 2, groups, torch.full((4,), 10))) == [[0, 1], [2, 3]]
    assert rows_of(micro_batch_rows(lengths, 2)) == [[0, 2], [3, 1]]  # no sharing: longest first


def test_micro_batch_rows_sort_by_length_when_completions_dominate():
    from secreason.modules.grpo import micro_batch_rows

    lengths, groups, prompts = torch.tensor([8, 1, 7, 2]), torch.tensor([0, 0, 1, 1]), torch.ones(4, dtype=torch.long)
    # by length: [0, 2] [3, 1]: 2 + 2 × 8 = 18, 2 + 2 × 2 = 6 → 24; by group: 1 + 16, 1 + 14 → 32
    assert rows_of(micro_batch_rows(lengths, 2, groups, prompts)) == [[0, 2], [3, 1]]
    # a tie keeps the length order: lengths [4, 1, 3, 2], prompts of 1 → 10 + 6 = 9 + 7
    assert rows_of(micro_batch_rows(torch.tensor([4, 1, 3, 2]), 2, groups, prompts)) == [[0, 2], [3, 1]]


def test_micro_batch_rows_orders_groups_longest_first():
    from secreason.modules.grpo import micro_batch_rows

    lengths = torch.tensor([7, 1, 9, 2, 3, 3])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    # by length: [2, 0] [4, 5] [3, 1]: (2·50 + 2·9) + (50 + 2·3) + (2·50 + 2·2) = 278
    # by group, maxima 7, 9, 3 → groups 1, 0, 2: (50 + 2·9) + (50 + 2·7) + (50 + 2·3) = 188
    micro = micro_batch_rows(lengths, 2, groups, torch.full((6,), 50))
    assert rows_of(micro) == [[2, 3], [0, 1], [4, 5]]
