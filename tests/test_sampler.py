"""The sampler contract (callbacks/sampler.py, secreason/rollout.py) and the HF-generate sampler.

Shapes, prompt-major order, eos in the mask, truncation flags, `Rollout.select`, seeding by
(seed, call count), greedy decoding at temperature 0 and the state that goes in a checkpoint.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning.pytorch.profilers import PassThroughProfiler

from secreason.callbacks.hf_sampler import HFSampler
from secreason.callbacks.sampler import SamplerCallback
from secreason.sampling.base import completions_to_rollout, cut_at_eos, left_pad
from secreason.data.chat import encode_prompt
from secreason.rollout import Rollout

PROMPTS = ["Which option is CWE-79?", "What is 2+3+4?", "Give the CVSS vector for a local bug with no privileges."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def prompt_ids(tokenizer) -> list[list[int]]:
    ids = [encode_prompt(tokenizer, p) for p in PROMPTS]
    assert len({len(p) for p in ids}) == 3  # left padding is exercised
    return ids


# ------------------------------------------------------------------------------------ pure helpers

def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_cut_at_eos():
    assert cut_at_eos([5, 1, 7, 1], {1}) == 2  # up to and including the FIRST eos
    assert cut_at_eos([5, 6, 7], {1}) == 3  # no eos: everything
    assert cut_at_eos([1, 5], {1}) == 1
    assert cut_at_eos([], {1}) == 0
    assert cut_at_eos([5, 9, 1], {1, 9}) == 2  # any of several eos ids


def test_completions_to_rollout_contract(tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    a, b, c, d, e = 40, 41, 42, 43, 44
    prompts = [[20, 21, 22], [23]]
    # prompt 0 → [a b eos] and [c]; prompt 1 → [a b c d] (hit max_tokens=4) and [] (empty)
    completions = [[a, b, eos], [c], [a, b, c, d], []]
    logprobs = [[-0.1, -0.2, -0.3], [-0.4], [-0.5, -0.6, -0.7, -0.8], []]
    r = completions_to_rollout(prompts, 2, completions, logprobs, eos, pad, 4, tokenizer)
    assert r.num_completions == 4
    # prompt-major: rows 0, 1 are prompt 0; rows 2, 3 are prompt 1 (left-padded to width 3)
    assert r.prompt_ids.tolist() == [[20, 21, 22], [20, 21, 22], [pad, pad, 23], [pad, pad, 23]]
    assert r.prompt_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert r.group_index.tolist() == [0, 0, 1, 1]
    # right-padded completions; the eos is a sampled token, so it is in the mask
    assert r.completion_ids.tolist() == [[a, b, eos, pad], [c, pad, pad, pad], [a, b, c, d], [pad] * 4]
    assert r.completion_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert r.completion_lengths.tolist() == [3, 1, 4, 0]
    torch.testing.assert_close(r.sampler_logprobs, torch.tensor(
        [[-0.1, -0.2, -0.3, 0], [-0.4, 0, 0, 0], [-0.5, -0.6, -0.7, -0.8], [0, 0, 0, 0]]))
    # truncated = max_tokens reached without an eos; a short completion without eos is not truncated
    assert r.truncated.tolist() == [False, False, True, False]
    # texts: the completion tokens decoded with special tokens kept, no padding
    assert r.texts == [tokenizer.decode(t, skip_special_tokens=False) for t in completions]
    assert tokenizer.eos_token in r.texts[0] and tokenizer.pad_token not in "".join(r.texts)


def test_eos_at_max_tokens_is_not_truncated(tokenizer):
    eos = tokenizer.eos_token_id
    r = completions_to_rollout([[20]], 2, [[40, eos], [40, 41]], [[0.0, 0.0], [0.0, 0.0]], eos,
                               tokenizer.pad_token_id, 2, tokenizer)
    assert r.truncated.tolist() == [False, True]


def _rollout(tokenizer) -> Rollout:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    completions = [[40, 41, eos], [42], [43, 44, 45, 46], [47]]
    lps = [[-float(i + 1)] * len(c) for i, c in enumerate(completions)]
    return completions_to_rollout([[20, 21, 22], [23]], 2, completions, lps, eos, pad, 4, tokenizer)


def test_rollout_select_keeps_order_and_trims_padding(tokenizer):
    r = _rollout(tokenizer)
    s = r.select(torch.tensor([3, 1]))  # any order, kept as given
    assert s.num_completions == 2
    assert s.group_index.tolist() == [1, 0] and s.texts == [r.texts[3], r.texts[1]]
    assert s.completion_ids.tolist() == [[47], [42]]  # both 1 token long: width 4 → 1
    assert s.completion_mask.tolist() == [[1], [1]] and s.sampler_logprobs.tolist() == [[-4.0], [-2.0]]
    # prompt columns that are padding in every selected row go
    only_short = r.select(torch.tensor([2, 3]))
    assert only_short.prompt_ids.tolist() == [[23], [23]] and only_short.prompt_mask.tolist() == [[1], [1]]
    assert only_short.completion_ids.shape == (2, 4) and only_short.truncated.tolist() == [True, False]
    # the selection is a copy: the original is untouched
    assert r.completion_ids.shape == (4, 4) and r.prompt_ids.shape == (4, 3)
    empty = r.select(torch.tensor([], dtype=torch.long))
    assert empty.num_completions == 0 and empty.completion_ids.shape == (0, 0)


def test_rollout_rejects_inconsistent_rows(tokenizer):
    r = _rollout(tokenizer)
    with pytest.raises(ValueError, match="group_index"):
        Rollout(r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, r.sampler_logprobs,
                r.group_index[:3], r.truncated, r.texts)
    with pytest.raises(ValueError, match="texts"):
        Rollout(r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, r.sampler_logprobs,
                r.group_index, r.truncated, r.texts[:2])
    with pytest.raises(ValueError, match="differ in shape"):
        Rollout(r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask[:, :2], r.sampler_logprobs,
                r.group_index, r.truncated, r.texts)


# ------------------------------------------------------------------------------------ HF sampler

def test_hf_sampler_rollout_shapes(tiny_model, tokenizer, prompt_ids):
    tiny_model.train()
    r = HFSampler(max_tokens=10, seed=0).bind(tiny_model, tokenizer).generate(prompt_ids, 4)
    assert r.num_completions == 12 and r.group_index.tolist() == [i for i in range(3) for _ in range(4)]
    assert r.completion_ids.shape[1] <= 10 and r.completion_mask.shape == r.completion_ids.shape
    for i in range(12):  # rows i·n … i·n+n−1 carry prompt i (left-padded)
        p = prompt_ids[i // 4]
        assert r.prompt_ids[i][r.prompt_mask[i].bool()].tolist() == p
    eos = tokenizer.eos_token_id
    for i, n in enumerate(r.completion_lengths.tolist()):
        toks = r.completion_ids[i, :n].tolist()
        assert eos not in toks[:-1]  # cut after the first eos, which stays in the mask
        assert bool(r.truncated[i]) == (n == 10 and toks[-1] != eos)
    assert tiny_model.training  # generate restores the mode it found
    tiny_model.eval()
    HFSampler(max_tokens=2).bind(tiny_model, tokenizer).generate(prompt_ids, 1)
    assert not tiny_model.training


def test_hf_sampler_reproducible_per_seed_and_call(tiny_model, tokenizer, prompt_ids):
    a = HFSampler(max_tokens=10, seed=3).bind(tiny_model, tokenizer)
    first, second = a.generate(prompt_ids, 2), a.generate(prompt_ids, 2)
    assert a.calls == 2
    assert first.texts != second.texts  # a new seed per call
    torch.manual_seed(123)
    expected_global = torch.rand(3)
    torch.manual_seed(123)
    b = HFSampler(max_tokens=10, seed=3).bind(tiny_model, tokenizer)
    again = b.generate(prompt_ids, 2)
    assert torch.equal(torch.rand(3), expected_global)  # the global RNG is left alone (fork_rng)
    assert again.texts == first.texts and torch.equal(again.completion_ids, first.completion_ids)
    torch.testing.assert_close(again.sampler_logprobs, first.sampler_logprobs)
    # a sampler restored at call 1 (a resumed run) draws what the uninterrupted one drew at call 2
    c = HFSampler(max_tokens=10, seed=3).bind(tiny_model, tokenizer)
    c.load_state_dict(a.state_dict() | {"calls": 1})
    assert c.generate(prompt_ids, 2).texts == second.texts
    other_seed = HFSampler(max_tokens=10, seed=4).bind(tiny_model, tokenizer).generate(prompt_ids, 2)
    assert other_seed.texts != first.texts
    # the n completions of one prompt are independent draws
    assert len(set(first.texts)) > len(PROMPTS)


def test_hf_sampler_greedy_at_temperature_zero(tiny_model, tokenizer, prompt_ids):
    greedy = [HFSampler(temperature=0.0, max_tokens=8, seed=s).bind(tiny_model, tokenizer).generate(prompt_ids, 2)
              for s in (0, 1)]
    r = greedy[0]
    assert r.texts == greedy[1].texts  # the seed does not matter
    assert r.texts[0::2] == r.texts[1::2]  # both completions of a prompt are the same
    # every completion token is the argmax of the model's next-token logits
    with torch.no_grad():
        ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
        attn = torch.cat([r.prompt_mask, r.completion_mask], 1)
        logits = tiny_model(input_ids=ids, attention_mask=attn,
                            position_ids=(attn.cumsum(1) - 1).clamp(min=0)).logits
    p = r.prompt_ids.shape[1]
    argmax = logits[:, p - 1:-1].argmax(-1)
    m = r.completion_mask.bool()
    assert torch.equal(argmax[m], r.completion_ids[m])


def test_hf_sampler_stops_at_eos_and_keeps_it(tiny_model, tokenizer, prompt_ids):
    """Make the greedy first token of every prompt an eos: each completion is that one token."""
    first = HFSampler(temperature=0.0, max_tokens=1).bind(tiny_model, tokenizer).generate(prompt_ids, 1)
    stops = sorted(set(first.completion_ids[:, 0].tolist()))
    tiny_model.generation_config.eos_token_id = [tokenizer.eos_token_id, *stops]
    r = HFSampler(temperature=0.0, max_tokens=8).bind(tiny_model, tokenizer).generate(prompt_ids, 2)
    assert r.completion_ids.shape == (6, 1) and r.completion_mask.tolist() == [[1]] * 6
    assert r.truncated.tolist() == [False] * 6


def test_hf_sampler_needs_a_model():
    with pytest.raises(RuntimeError, match="bind"):
        HFSampler().generate([[1, 2]], 2)


# ------------------------------------------------------------------------------------ callback state

def test_sampler_state_dict_round_trip():
    s = SamplerCallback(seed=7)
    s.calls, s.last_sync_step = 3, 5
    state = s.state_dict()
    assert state == {"calls": 3, "seed": 7, "last_sync_step": 5, "extra_prompts": {"drawn": 0, "seed": 0},
                     "rollout_ahead": None}  # refill's prompt stream, async_rollouts' finished job
    t = SamplerCallback(seed=0)
    t.load_state_dict(state)
    assert (t.calls, t.seed, t.last_sync_step) == (3, 7, 5)
    assert t.sampling(4).seed == s.sampling(4).seed == 7 * 1_000_003 + 3
    t.load_state_dict({"calls": 1, "seed": 2})  # checkpoints from before last_sync_step
    assert (t.calls, t.seed, t.last_sync_step) == (1, 2, 0)
    # the call count moves the seed, and so does the configured seed
    u = SamplerCallback(seed=0)
    seeds = [u.sampling(1).seed]
    u.calls += 1
    seeds += [u.sampling(1).seed, SamplerCallback(seed=1).sampling(1).seed]
    assert len(set(seeds)) == 3


def test_sampling_config_and_bad_values():
    cfg = SamplerCallback(temperature=0.7, top_p=0.9, max_tokens=5, seed=1).sampling(3)
    assert (cfg.n, cfg.temperature, cfg.top_p, cfg.max_tokens) == (3, 0.7, 0.9, 5)
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(max_tokens=0), dict(sync_every=0)):
        with pytest.raises(ValueError, match="sampler"):
            SamplerCallback(**bad)


def test_sync_every_k_optimizer_steps():
    class Counting(SamplerCallback):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.synced_at: list[int] = []

        def sync_weights(self, model):
            self.synced_at.append(trainer.global_step)

    logged = []
    module = SimpleNamespace(model=None, log=lambda k, v, **kw: logged.append(k))
    trainer = SimpleNamespace(global_step=0, profiler=PassThroughProfiler())
    s = Counting(sync_every=2)
    for step in range(1, 6):
        trainer.global_step = step
        s.on_train_batch_end(trainer, module, None, None, step - 1)
    assert s.synced_at == [2, 4] and s.last_sync_step == 4
    assert logged == ["rollout/sync_s", "rollout/sync_s"]
