"""GRPO and SFT on 2 processes (gloo on CPU) under the shipped `trainer=ddp` and `trainer=fsdp`
strategies, against 1 process with the same global batch.

- equivalence: after 3 optimizer steps (GRPO with fixed rollouts of uneven lengths across ranks,
  and SFT), 2-rank DDP and 2-rank FSDP give the parameters of 1 rank to 1e-5 in fp32, read back
  from the HF export (rank 0 writes it; under FSDP every rank takes part in the gather);
- the batch-mean metrics of 2 ranks are those of 1 rank, the same on both ranks;
- a rank whose groups all have zero reward variance (`filter_zero_std_groups`) does not hang and
  the run still equals 1 rank's;
- with the HF sampler, ranks draw with different seeds (rank 0 keeps the single-process seed) and
  never the same prompt twice in an epoch.

Each 2-rank run is this file run as a script by two processes (`python tests/test_distributed.py
SPEC OUT`, ranks from the environment as torchrun sets them), in their own process group with a
timeout: a hang fails the test instead of stalling CI. One launch runs several scenarios, so
torch and Lightning start once per launch.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from test_grpo import MAX_TOKENS, N_GEN, PROMPTS, FakeRewards, make_module, perturbed

from secreason.callbacks.hf_export import HFExport
from secreason.callbacks.hf_sampler import HFSampler
from secreason.callbacks.sampler import SamplerCallback
from secreason.data.chat import encode_chat, encode_prompt
from secreason.data.prompts import PromptDataModule
from secreason.data.sft import collate
from secreason.models import load_causal_lm, load_tokenizer
from secreason.modules.grpo import padded_micro_batches
from secreason.modules.rank_metrics import combine_ranks, rank_entries
from secreason.modules.sft import SFTModule
from secreason.sampling.base import call_seed, completions_to_rollout

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
# A launch takes 10-40 s on 2 shared cores; past this it hangs (SECREASON_DIST_TIMEOUT to change it).
LAUNCH_TIMEOUT_S = int(os.environ.get("SECREASON_DIST_TIMEOUT", 240))
SHORT, LONG = (0, 1, 4, 5), (2, 3, 6, 7)  # prompt indices: rank 0 gets the short completions, rank 1 the long
ZERO_VARIANCE = (2, 3, 6)  # prompts whose 2 completions are identical: reward std 0
# Global batches of prompt indices; rank r takes [2r, 2r + 2) of each (rank 0: SHORT, rank 1: LONG).
PLAN = [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]
PLAN_ALL_ZERO = [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3], [2, 3, 6, 2]]  # last: no rank has a group with spread
TIMING = ("rollout/generate_s", "rollout/sync_s", "train/tokens_per_s", "epoch")

GRPO_CASES = {
    # the plain gradient: SGD, no clipping, sample-level aggregation, a reference the policy is not
    "sgd": dict(loss_agg="sample_mean", kl={"beta": 0.05, "estimator": "k3"}, micro_batch_size=2,
                optim={"name": "sgd", "lr": 1.0}, max_grad_norm=None),
    # token-level aggregation (uneven lengths matter), μ = 2 (old logprobs recomputed), clipping on
    "clip": dict(loss_agg="token_mean", kl={"beta": 0.05, "estimator": "k3"}, micro_batch_size=2,
                 updates_per_batch=2, optim={"name": "adamw", "lr": 1e-4}, max_grad_norm=0.05),
    # rank 1's groups are all zero-variance at batches 0 and 2 (it trains on nothing there), and
    # no rank keeps a group at batch 3 (no update anywhere)
    "filter": dict(loss_agg="token_mean", kl={"beta": 0.05, "estimator": "k3"}, micro_batch_size=2,
                   filter_zero_std_groups=True, filter_zero_std_on="total", optim={"name": "sgd", "lr": 1.0}, max_grad_norm=1.0),
}
STEPS = {"sgd": 3, "clip": 6, "filter": 3}  # optimizer steps of each case
SFT_CASE = dict(optim={"name": "sgd", "lr": 0.5}, scheduler={"name": "constant"})


# ------------------------------------------------------------------------------------ the runs

def rank_part(batch: list, rank: int, world: int) -> list:
    per = len(batch) // world
    return batch[rank * per:(rank + 1) * per]


def planned_loader(batches: list) -> DataLoader:
    """Each item is one whole batch, as given (the rank's part is chosen before)."""
    return DataLoader(batches, batch_size=None, shuffle=False)


class PlannedRollouts(SamplerCallback):
    """Rollouts looked up by prompt: the same completions whichever rank or batch a prompt is in."""

    def __init__(self, table: dict) -> None:
        super().__init__(max_tokens=MAX_TOKENS)
        self.table = table

    def generate(self, prompt_ids, n):
        self.calls += 1
        comps = [c for p in prompt_ids for c in self.table[tuple(p)]]
        tok = self.tokenizer
        return completions_to_rollout(prompt_ids, n, comps, [[0.0] * len(c) for c in comps], tok.eos_token_id,
                                      tok.pad_token_id, MAX_TOKENS, tok)

    def sync_weights(self, model):
        pass


class SeedRecorder(HFSampler):
    """The HF sampler, recording its seeds; rank r decodes MAX_TOKENS - 4r tokens, so under FSDP the
    ranks make different numbers of forward passes unless generation keeps them in step."""

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)
        self.max_tokens = MAX_TOKENS - 4 * trainer.global_rank

    def sampling(self, n):
        cfg = super().sampling(n)
        self.seeds = getattr(self, "seeds", []) + [cfg.seed]
        return cfg


class Record(L.Callback):
    """Per batch: the logged metrics and the batch's prompts."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rollout = batch.get("rollout") if isinstance(batch, dict) else None
        self.steps.append({"metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k not in TIMING},
                           "prompts": [r["prompt"] for r in batch.get("rows", [])] if isinstance(batch, dict) else [],
                           "texts": rollout.texts if rollout is not None else []})


class AnsweredScorer:
    """An eval-callback scorer without benchmark data: the fraction of non-empty answers."""

    metric_keys = ("answered",)

    def score(self, items, outputs):
        return None, {"answered": sum(bool(o.strip()) for o in outputs) / len(outputs)}


def eval_every_step():
    from secreason.callbacks.eval_callback import EvalCallback

    cb = EvalCallback(benchmarks=(), limit=2, every_n_steps=1, at_epoch_end=False, max_tokens=6, seeds=1)
    cb.tasks = [("toy", [None, None], [[{"role": "user", "content": PROMPTS[i][1]}] for i in (0, 1)],
                 AnsweredScorer())]  # set before `setup`, which then loads no benchmark
    return cb


def strategy(name: str):
    """The strategy of the shipped conf/trainer/<name>.yaml."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"trainer={name}", f"paths.root_dir={REPO}", "paths.output_dir=/tmp"])
    return instantiate(cfg.trainer.strategy)


def make_trainer(world: int, strategy_name: str | None, callbacks: list, **kw) -> L.Trainer:
    """Planned loaders hold each rank's own part already (no distributed sampler unless asked)."""
    dist = dict(devices=world, num_nodes=1, strategy=strategy(strategy_name)) if world > 1 else dict(devices=1)
    args = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                use_distributed_sampler=False, callbacks=callbacks, **dist)
    return L.Trainer(**{**args, **kw})


def run_case(spec: dict, case: dict, world: int, rank: int, out: Path) -> dict:
    """One scenario on this process; returns what the test compares (weights: state dict on 1 rank,
    the HF export directory on N ranks)."""
    L.seed_everything(0)
    tokenizer = load_tokenizer(spec["model_dir"])
    model = load_causal_lm(spec["model_dir"])
    rec, export = Record(), out / f"{case['name']}.hf"
    callbacks: list = [rec] + ([HFExport(str(export))] if world > 1 else [])
    kind = case["kind"]
    if kind == "grpo":
        table = {tuple(p): c for p, c in spec["table"]}
        module = make_module(model, tokenizer, FakeRewards(), ref=perturbed(model), scheduler={"name": "constant"},
                             **GRPO_CASES[case["config"]])
        batches = [prompt_batch(spec, rank_part(b, rank, world)) for b in spec["plans"][case["config"]]]
        trainer = make_trainer(world, case.get("strategy"), [PlannedRollouts(table), *callbacks])
        trainer.fit(module, train_dataloaders=planned_loader(batches))
    elif kind == "sft":
        module = SFTModule(model, tokenizer, **SFT_CASE)
        batches = [collate(rank_part(b, rank, world), tokenizer.pad_token_id) for b in spec["sft_batches"]]
        trainer = make_trainer(world, case.get("strategy"), callbacks, gradient_clip_val=1.0)
        trainer.fit(module, train_dataloaders=planned_loader(batches))
    else:  # sampling: the real datamodule, the HF sampler, and the eval callback after every step
        module = make_module(model, tokenizer, FakeRewards(), ref=None, kl={"beta": 0.0},
                             optim={"name": "adamw", "lr": 1e-3}, scheduler={"name": "constant"})
        sampler = SeedRecorder(max_tokens=MAX_TOKENS, seed=3)
        dm = PromptDataModule(tokenizer, path=spec["rl_file"], split="train", batch_size=2, seed=0)
        trainer = make_trainer(world, case.get("strategy"), [sampler, *callbacks, eval_every_step()],
                               use_distributed_sampler=True)
        trainer.fit(module, datamodule=dm)
        common = sampler.generate([encode_prompt(tokenizer, PROMPTS[0][1])], 2)  # every rank, the same prompt
        return {"steps": rec.steps, "seeds": sampler.seeds, "common": common.texts,
                "global_step": trainer.global_step, "rank": trainer.global_rank,
                "val": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}}
    weights = None if world > 1 else {k: v.detach().clone() for k, v in model.state_dict().items()}
    ref = module._ref[0] if kind == "grpo" else None  # the separate reference: its elements on this rank
    return {"steps": rec.steps, "global_step": trainer.global_step, "weights": weights, "export": str(export),
            "ref_numel": None if ref is None else sum(p.numel() for p in ref.parameters())}


def prompt_batch(spec: dict, indices: list[int]) -> dict:
    rows = [{"task": PROMPTS[i][0], "prompt": PROMPTS[i][1], "answer": "x"} for i in indices]
    return {"prompt_ids": [spec["prompt_ids"][i] for i in indices], "rows": rows}


def worker(spec_path: str, out_dir: str) -> None:
    """One rank of a launch: every scenario of the spec, in order, results to OUT/<name>.rank<r>.pt."""
    import faulthandler

    faulthandler.dump_traceback_later(LAUNCH_TIMEOUT_S - 15)  # a hang prints where each rank waits, then is killed
    torch.set_num_threads(1)
    spec = torch.load(spec_path, weights_only=False)
    out, rank = Path(out_dir), int(os.environ["RANK"])
    for case in spec["cases"]:
        result = run_case(spec, case, WORLD, rank, out)
        torch.save(result, out / f"{case['name']}.rank{rank}.pt")
    # An explicit teardown: left to interpreter exit, gloo's threads can abort the process.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(spec: dict, cases: list[dict], tmp: Path, script: str = __file__,
           killed: bool = False) -> dict[str, list[dict]]:
    """Run `cases` on WORLD processes of `script` (its `worker`); {case name: [rank 0's result,
    rank 1's, ...]} for the cases every rank finished. A launch that does not finish within
    LAUNCH_TIMEOUT_S is killed (both process groups) and fails the test; with `killed` the ranks
    must end by SIGKILL (a run that kills itself), otherwise with exit code 0."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec_path = tmp / "spec.pt"
    torch.save({**spec, "cases": cases}, spec_path)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(WORLD),
           "NODE_RANK": "0", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    procs = []
    for rank in range(WORLD):
        log = open(tmp / f"rank{rank}.log", "w")
        procs.append((subprocess.Popen([sys.executable, script, str(spec_path), str(tmp)], cwd=REPO,
                                       env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        while any(p.poll() is None for p, _ in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0, -signal.SIGKILL if killed else 0) for p, _ in procs):
                break  # one rank failed: the other would wait for it until the deadline
            time.sleep(0.5)
    finally:
        hung = [p for p, _ in procs if p.poll() is None]
        for p in hung:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for _, log in procs:
            log.close()
    tails = "\n".join(f"--- rank {r}\n" + (tmp / f"rank{r}.log").read_text()[-12000:] for r in range(WORLD))
    if hung and all(p.returncode in (0, -signal.SIGKILL) for p, _ in procs):
        pytest.fail(f"{WORLD}-rank launch did not finish in {LAUNCH_TIMEOUT_S} s (a hang)\n{tails}")
    expected = -signal.SIGKILL if killed else 0
    if any(p.returncode != expected for p, _ in procs):
        pytest.fail(f"{WORLD}-rank launch failed (exit codes {[p.returncode for p, _ in procs]}, expected "
                    f"{expected})\n{tails}")
    return {c["name"]: [torch.load(tmp / f"{c['name']}.rank{r}.pt", weights_only=False) for r in range(WORLD)]
            for c in cases if all((tmp / f"{c['name']}.rank{r}.pt").exists() for r in range(WORLD))}


# ------------------------------------------------------------------------------------ the plan

def completions_table(tokenizer, prompt_ids: list[list[int]]) -> list:
    """(prompt ids, 2 completions) per prompt: short ones for SHORT, long ones for LONG, identical
    pairs for ZERO_VARIANCE, and reward spread (drawn until the two rewards differ) elsewhere."""
    g = torch.Generator().manual_seed(0)
    table = []
    for i, ids in enumerate(prompt_ids):
        lo, hi = (1, 5) if i in SHORT else (8, MAX_TOKENS + 1)
        while True:
            comps = [torch.randint(10, 500, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
                     for _ in range(N_GEN)]
            if i in ZERO_VARIANCE:
                comps = [comps[0]] * N_GEN
            r = completions_to_rollout([ids], N_GEN, comps, [[0.0] * len(c) for c in comps], tokenizer.eos_token_id,
                                       tokenizer.pad_token_id, MAX_TOKENS, tokenizer)
            rows = [{"task": PROMPTS[i][0], "prompt": PROMPTS[i][1], "answer": "x"}] * N_GEN
            totals = FakeRewards()(r.texts, rows).total
            if (len(set(totals)) == 1) == (i in ZERO_VARIANCE):
                break
        table.append((ids, comps))
    return table


def sft_examples(tokenizer) -> list[list[dict]]:
    """3 global batches of 4 chat examples; the last 2 of each (rank 1's) have ~5x the target tokens."""
    def example(i: int, long: bool) -> dict:
        answer = f"<think>{' step' * (30 if long else 2)} {i}</think>Answer: {i}"
        ids, labels = encode_chat(tokenizer, [{"role": "user", "content": PROMPTS[i % 8][1]},
                                              {"role": "assistant", "content": answer}])
        return {"input_ids": ids, "labels": labels}

    return [[example(4 * s + j, long=j >= 2) for j in range(4)] for s in range(3)]


@pytest.fixture(scope="module")
def spec(tiny_model_dir, tokenizer, tmp_path_factory) -> dict:
    rl_file = tmp_path_factory.mktemp("dist_rl") / "rl.jsonl"
    rl_file.write_text("".join(json.dumps({"task": t, "prompt": p, "answer": "x"}) + "\n" for t, p in PROMPTS))
    prompt_ids = [encode_prompt(tokenizer, p) for _, p in PROMPTS]
    return {"model_dir": str(tiny_model_dir), "prompt_ids": prompt_ids, "rl_file": str(rl_file),
            "table": completions_table(tokenizer, prompt_ids), "sft_batches": sft_examples(tokenizer),
            "plans": {"sgd": PLAN, "clip": PLAN, "filter": PLAN_ALL_ZERO}}


EQUIVALENCE = [{"name": f"{kind}_{config}_{s}", "kind": kind, "config": config, "strategy": s}
               for s in ("ddp", "fsdp") for kind, config in (("grpo", "sgd"), ("grpo", "clip"), ("sft", None))]
ZERO_VAR = [{"name": f"grpo_filter_{s}", "kind": "grpo", "config": "filter", "strategy": s} for s in ("ddp", "fsdp")]
SAMPLING = [{"name": f"sampling_{s}", "kind": "sampling", "strategy": s} for s in ("ddp", "fsdp")]


@pytest.fixture(scope="module")
def one_rank(spec, tmp_path_factory) -> dict:
    """The 1-process reference of every planned case (the global batch on one rank)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("one_rank")
        keys = {(c["kind"], c.get("config")) for c in EQUIVALENCE + ZERO_VAR}
        return {key: run_case(spec, {"name": f"{key[0]}_{key[1]}", "kind": key[0]}
                              | ({"config": key[1]} if key[1] else {}), 1, 0, out) for key in sorted(keys, key=str)}
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def equivalence_runs(spec, tmp_path_factory):
    return launch(spec, EQUIVALENCE, tmp_path_factory.mktemp("equivalence"))


@pytest.fixture(scope="module")
def zero_variance_runs(spec, tmp_path_factory):
    return launch(spec, ZERO_VAR, tmp_path_factory.mktemp("zero_variance"))


@pytest.fixture(scope="module")
def sampling_runs(spec, tmp_path_factory):
    return launch(spec, SAMPLING, tmp_path_factory.mktemp("sampling"))


# ------------------------------------------------------------------------------------ checks

def assert_same_weights(reference: dict, export_dir: str) -> None:
    got = load_causal_lm(export_dir).state_dict()
    assert set(got) == set(reference)
    for k, v in reference.items():
        torch.testing.assert_close(got[k], v, atol=1e-5, rtol=0, msg=k)


def assert_same_metrics(reference_steps: list[dict], ranks: list[dict]) -> None:
    for r, result in enumerate(ranks):
        assert len(result["steps"]) == len(reference_steps)
        for i, (ref, got) in enumerate(zip(reference_steps, result["steps"])):
            assert set(got["metrics"]) == set(ref["metrics"]), (r, i)
            for key, value in ref["metrics"].items():
                assert got["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (f"rank {r} batch {i}", key)


@pytest.mark.parametrize("strategy_name", ["ddp", "fsdp"])
@pytest.mark.parametrize("kind,config", [("grpo", "sgd"), ("grpo", "clip"), ("sft", None)])
def test_two_ranks_train_as_one(strategy_name, kind, config, one_rank, equivalence_runs, tiny_model_dir):
    """Same global batch, fixed rollouts (uneven completion lengths across ranks): after 3 optimizer
    steps (6 with μ = 2) the 2-rank weights are the 1-rank ones, and so is every batch metric."""
    ref = one_rank[(kind, config)]
    ranks = equivalence_runs[f"{kind}_{config}_{strategy_name}"]
    steps = STEPS.get(config, 3)
    assert ref["global_step"] == steps and all(r["global_step"] == steps for r in ranks)
    start = load_causal_lm(str(tiny_model_dir)).state_dict()
    assert max((ref["weights"][k] - v).abs().max().item() for k, v in start.items()) > 1e-4  # the runs moved
    assert_same_weights(ref["weights"], ranks[0]["export"])
    assert_same_metrics(ref["steps"], ranks)
    if kind == "grpo":  # the reference: a whole copy per rank under DDP, a shard of it under FSDP
        whole = ref["ref_numel"]
        got = [r["ref_numel"] for r in ranks]
        assert got == [whole] * WORLD if strategy_name == "ddp" else (sum(got) == whole and max(got) < whole), got
    if kind == "grpo":  # the metrics a wrong world-size factor would show
        for key in ("train/is_weight_mean", "train/kl", "train/loss", "rollout/completion_len_mean"):
            assert key in ref["steps"][0]["metrics"], key
        assert ref["steps"][0]["metrics"]["train/is_weight_mean"] == pytest.approx(1.0)
    if config == "clip":  # clipping really acts (under FSDP: the root clips by the norm over all shards)
        assert max(s["metrics"]["train/grad_norm"] for s in ref["steps"]) > GRPO_CASES["clip"]["max_grad_norm"]


@pytest.mark.parametrize("strategy_name", ["ddp", "fsdp"])
def test_rank_with_only_zero_variance_groups_does_not_hang(strategy_name, one_rank, zero_variance_runs):
    """filter_zero_std_groups: rank 1 keeps no group at batches 0 and 2 (and fewer micro-batches at
    batch 1), no rank keeps one at batch 3. The run finishes (the launch has a timeout), makes the
    3 updates 1 rank makes, and ends with 1 rank's weights and metrics."""
    ref, ranks = one_rank[("grpo", "filter")], zero_variance_runs[f"grpo_filter_{strategy_name}"]
    assert ref["global_step"] == 3 and all(r["global_step"] == 3 for r in ranks)
    kept = [s["metrics"]["rollout/kept_frac"] for s in ref["steps"]]
    assert kept == [0.5, 0.75, 0.5, 0.0]
    assert_same_weights(ref["weights"], ranks[0]["export"])
    assert_same_metrics(ref["steps"], ranks)


@pytest.mark.parametrize("strategy_name", ["ddp", "fsdp"])
def test_ranks_sample_apart_and_share_the_epoch(strategy_name, sampling_runs, tiny_model, tokenizer):
    """HF sampler, real datamodule: each rank has its own seeds (rank 0's are the single-process
    ones), the same prompt gets different completions on the two ranks, and one epoch uses every
    prompt exactly once over both ranks. Each rank's first completions are what the whole model
    draws in one process with that rank's seed (under FSDP: generation on sharded parameters)."""
    ranks = sampling_runs[f"sampling_{strategy_name}"]
    for r, result in enumerate(ranks):
        one = HFSampler(max_tokens=MAX_TOKENS - 4 * r, seed=3).bind(tiny_model, tokenizer)
        one.rank = r
        first = result["steps"][0]
        assert one.generate([encode_prompt(tokenizer, p) for p in first["prompts"]], N_GEN).texts == first["texts"]
    steps = len(PROMPTS) // (2 * WORLD)
    assert ranks[0]["common"] != ranks[1]["common"]
    for r, result in enumerate(ranks):
        assert result["rank"] == r and result["global_step"] == steps
        assert result["seeds"] == [call_seed(3, r, c) for c in range(steps + 1)]  # + the common prompt's call
    assert ranks[0]["seeds"][:steps] == [3 * 1_000_003 + c for c in range(steps)]
    used = [p for result in ranks for s in result["steps"] for p in s["prompts"]]
    assert sorted(used) == sorted(p for _, p in PROMPTS)
    train = [{k: v for k, v in result["steps"][-1]["metrics"].items() if not k.startswith("val/")} for result in ranks]
    assert train[0] == train[1]  # both ranks log the same global metrics
    # the eval callback ran on rank 0 (under FSDP on gathered parameters) while rank 1 waited
    assert set(ranks[0]["val"]) == {"val/toy/answered"} and ranks[1]["val"] == {}


# ------------------------------------------------------------------------------------ pure parts

def test_call_seed_keeps_rank_zero_and_separates_ranks():
    assert [call_seed(7, 0, c) for c in range(3)] == [7 * 1_000_003 + c for c in range(3)]
    seeds = {call_seed(s, r, c) for s in range(3) for r in range(8) for c in range(1000)}
    assert len(seeds) == 3 * 8 * 1000 and all(0 <= x < 2 ** 63 for x in seeds)


def test_padded_micro_batches_by_hand():
    rows, micro = torch.tensor([4, 5, 6]), [torch.tensor([0, 1]), torch.tensor([2])]
    assert padded_micro_batches(rows, micro, 2) == (rows, micro, None)
    rows2, micro2, pad = padded_micro_batches(rows, micro, 4)
    assert rows2.tolist() == [4, 5, 6, 0] and pad == 3
    assert [m.tolist() for m in micro2] == [[0, 1], [2], [3], [3]]
    rows3, micro3, pad = padded_micro_batches(torch.tensor([], dtype=torch.long), [], 2)  # nothing kept
    assert rows3.tolist() == [0] and pad == 0 and [m.tolist() for m in micro3] == [[0], [0]]


def test_combine_ranks_by_hand():
    """Rank 0: 4 completions, rank 1: 12. A mean over completions weighs them 4:12; a mean over its
    own count (routed rows, tokens) by that count; a key a rank lacks counts as 0 over its rows
    (rows) or not at all (own count); counts add, maxima take the max."""
    a = rank_entries({"rollout/truncated_frac": 0.5, "train/reward/chars": 1.0, "train/kl": 0.2,
                      "train/penalty/too_short": 1.0, "train/reward_stats/unrouted": 2.0, "train/loss": 0.1,
                      "rollout/completion_len_max": 7.0, "train/lr": 0.01},
                     {"train/reward/chars": 2, "train/kl": 10}, num_rows=4)
    b = rank_entries({"rollout/truncated_frac": 0.25, "train/kl": 0.4, "train/reward_stats/unrouted": 1.0,
                      "train/loss": 0.3, "rollout/completion_len_max": 9.0, "train/lr": 0.01},
                     {"train/kl": 30}, num_rows=12)
    got = combine_ranks([a, b])
    assert got["rollout/truncated_frac"] == pytest.approx((0.5 * 4 + 0.25 * 12) / 16)
    assert got["train/reward/chars"] == pytest.approx(1.0)  # rank 1 routed no row to it
    assert got["train/kl"] == pytest.approx((0.2 * 10 + 0.4 * 30) / 40)
    assert got["train/penalty/too_short"] == pytest.approx(4 / 16)  # rank 1 had none fire
    assert got["train/reward_stats/unrouted"] == 3.0 and got["train/loss"] == pytest.approx(0.4)
    assert got["rollout/completion_len_max"] == 9.0 and got["train/lr"] == pytest.approx(0.01)


def test_trainer_options_compose(compose_train):
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    ddp = compose_train("+experiment=grpo", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2")
    assert (ddp.trainer.devices, ddp.trainer.num_nodes, ddp.trainer.accelerator) == (4, 2, "cpu")
    assert isinstance(instantiate(ddp.trainer.strategy), DDPStrategy)
    fsdp = compose_train("+experiment=sft", "trainer=fsdp")
    assert fsdp.trainer.devices == 2 and fsdp.trainer.gradient_clip_val == 1.0  # cpu.yaml's settings kept
    assert isinstance(instantiate(fsdp.trainer.strategy), FSDPStrategy)


if __name__ == "__main__":
    worker(*sys.argv[1:3])
