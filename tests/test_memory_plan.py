"""benchmarks/memory.py's counting and arithmetic by hand, and why the 8B recipes keep fp32 master
weights (bf16-mixed computes in bf16; weights held in bf16 would round most updates away)."""
from __future__ import annotations

import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import memory  # noqa: E402
import memory_plan as plan  # noqa: E402


def test_llama_31_8b_parameter_counts():
    counts = plan.llama_params(plan.LLAMA31_8B)
    assert counts["total"] == 8_030_261_248  # Llama-3.1-8B's published count
    assert counts["other"] == 2 * 128256 * 4096 + 32 * 2 * 4096 + 4096  # embeddings, lm_head, norms
    # r × (in + out) over q, k, v, o, gate, up, down: 16 × 81,920 a layer
    assert plan.lora_params(plan.LLAMA31_8B, 16) == 32 * 16 * 81_920


def test_live_bytes_counts_new_storages_while_alive_not_views():
    tracker = memory.LiveBytes(lambda: "x")
    existing = torch.zeros(1000)
    with tracker:
        view = existing[:10]  # no new storage
        a = torch.ones(250)  # 1,000 bytes
        b = a * 2  # 1,000 more: the peak
        del a, b
        c = torch.ones(100)  # 400
    assert view.untyped_storage().data_ptr() == existing.untyped_storage().data_ptr()
    assert tracker.peaks["x"] == (2000, 0) and tracker.live == 400
    del c
    assert tracker.live == 0


RUN = {"weights": 400, "reference": 400, "optimizer": 800, "gradients": 400, "params": 100, "trainable": 100,
       "quantized_bytes": 0, "quantized_params": 0, "tokens": 10, "generated": 4,
       # phase: (live bytes at its peak, gradients then alive)
       "peaks": {"grpo/generate": [150, 0], "grpo/fwd_bwd": [900, 100], "grpo/optimizer": [700, 400]}}


def test_breakdown_by_hand():
    b = plan.breakdown(RUN)
    assert b["activations"] == 800  # 900 live in the forward/backward, 100 of it gradients
    assert b["sampler"] == 150
    assert b["peak"] == 400 + 400 + 800 + 900  # persistent + the largest live transient


def test_activation_fit_recovers_a_known_law():
    """Two model shapes whose activations follow 3·hidden·layers + 5·vocab bytes a token."""
    def run(hidden, layers, vocab, tokens):
        act = (3 * hidden * layers + 5 * vocab) * tokens
        return {**RUN, "mode": "full", "hidden": hidden, "layers": layers, "vocab": vocab, "tokens": tokens,
                "peaks": {"forward": [act + 7, 7]}}

    a, b = plan.activation_fit([run(128, 2, 512, 10), run(512, 8, 512, 20), {**run(64, 1, 512, 5), "mode": "lora"}])
    assert a == pytest.approx(3) and b == pytest.approx(5)


BPP = {"gradient_per_trainable": 4.0, "adamw_per_trainable": 8.0, "nf4_linear": 0.5}


def test_plan_8b_by_hand():
    """A toy shape of 1e9 + 1e8 parameters, activations 1 GB, engine 2·params + 1 GB."""
    shape = dict(hidden=1000, intermediate=1000, layers=1, heads=1, kv_heads=1, head_dim=1000, vocab=0, tied=True)
    counts = plan.llama_params(shape)  # linear: 4e6 + 3e6 = 7e6; other: 2 norms + final = 3000
    assert counts == {"linear": 7_000_000, "other": 3_000, "total": 7_003_000}
    setups = [plan.Setup("full", 1, 1.0, "full"), plan.Setup("fsdp", 8, 1.0, "full"),
              plan.Setup("qlora", 1, 1.0, "qlora")]
    act = (1e9 / (1000 * 1 * 1000) * 2, 0.0)  # × 1000 tokens × bf16 factor ½ → 1 GB
    rows = plan.plan_8b(BPP, act, setups, shape=shape, tokens_per_micro_batch=1000, lora_r=1, engine_kv_gb=1.0)
    total, gb = counts["total"], 1e9
    engine = total * 2 / gb + 1.0
    full, fsdp, qlora = rows
    assert full["total_gb"] == pytest.approx(total * 16 / gb + total * 2 / gb + 1.0 + engine)
    assert fsdp["total_gb"] == pytest.approx(total * 16 / 8 / gb + total * 2 / 8 / gb + 1.0 + engine)
    n_lora = plan.lora_params(shape, 1)
    assert qlora["total_gb"] == pytest.approx((7e6 * 0.5 + 3000 * 2) / gb + n_lora * 16 / gb + 1.0 + engine)
    assert [r["fits"] for r in rows] == [False, False, False]  # 3 GB and more on a 1 GB device
    assert any("/ 8" in line for line in fsdp["lines"])  # the sums are shown


def test_the_readme_plan_is_what_the_script_prints():
    """README's 8B table is plan_8b's output for the measured bytes (the rows and their verdicts)."""
    readme = (REPO / "README.md").read_text()
    for setup in plan.SETUPS_8B:
        assert setup.name in readme, setup.name


@pytest.mark.parametrize("dtype,changed_at_least", [(torch.bfloat16, 0.0), (torch.float32, 0.99)])
def test_bf16_weights_lose_small_updates_fp32_master_weights_keep_them(dtype, changed_at_least):
    """One AdamW step at lr 1e-6 on weights of scale 0.02 (a trained LLM's): held in bf16 nearly
    every weight rounds back to itself; fp32 weights under bf16 autocast (bf16-mixed) all move."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 256, bias=False)
    with torch.no_grad():
        layer.weight.normal_(0, 0.02)
    layer = layer.to(dtype)
    before = layer.weight.detach().clone()
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-6, weight_decay=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = layer(torch.randn(8, 256)).float().pow(2).mean()
    loss.backward()
    opt.step()
    changed = (layer.weight != before).float().mean().item()
    if dtype == torch.bfloat16:
        assert changed < 0.05  # the update (≈ lr = 1e-6) is under half a bf16 ulp of a 0.02 weight (≈ 6e-5)
    else:
        assert changed >= changed_at_least
