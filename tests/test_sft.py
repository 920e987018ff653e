"""The SFT module: loss, a few real steps on the tiny model, HF export round trips, LoRA merge,
schedule and optimizers."""
from __future__ import annotations

import itertools
import math

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from secreason.data.chat import IGNORE_INDEX
from secreason.data.sft import SFTDataModule, collate
from secreason.models import export_hf, load_causal_lm, load_tokenizer, resolve_model_path
from secreason.modules.sft import SFTModule, assistant_token_loss
from secreason.optim import build_optimizer, build_scheduler, warmup_cosine


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.fixture(scope="module")
def small_sft_file(synth_dir, tmp_path_factory):
    """The first 64 rows of the synthetic SFT set."""
    lines = (synth_dir / "sft.jsonl").read_text().splitlines()[:64]
    f = tmp_path_factory.mktemp("sft_data") / "sft.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


@pytest.fixture(scope="module")
def fixed_batch(tokenizer, small_sft_file):
    dm = SFTDataModule(tokenizer, path=str(small_sft_file), val_fraction=0.0, max_length=256, batch_size=8)
    dm.setup()
    return collate(dm.train_examples[:8], tokenizer.pad_token_id)


def test_assistant_token_loss_by_hand():
    ln = math.log
    # vocab 3; sequence 0 has two targets (positions 1, 2), sequence 1 one target (position 1)
    logits = torch.tensor([
        [[0.0, 0.0, 0.0], [ln(3), 0.0, 0.0], [5.0, 5.0, 5.0], [9.0, 0.0, 0.0]],
        [[0.0, ln(4), 0.0], [1.0, 2.0, 3.0], [7.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ])
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, IGNORE_INDEX],
                           [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX]])
    # p(1 | [0,0,0]) = 1/3;  p(2 | [ln3,0,0]) = 1/5;  p(1 | [0,ln4,0]) = 4/6
    expected = (ln(3) + ln(5) + ln(6 / 4)) / 3  # a mean over target tokens, not over sequences
    loss, n = assistant_token_loss(logits, labels)
    assert n == 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # the logits of the last position and of positions before a masked label never count
    logits2 = logits.clone()
    logits2[:, -1] = 100.0
    logits2[1, 1:] = -100.0
    assert assistant_token_loss(logits2, labels)[0].item() == pytest.approx(expected, abs=1e-6)


def test_no_target_tokens_gives_zero_not_nan():
    loss, n = assistant_token_loss(torch.randn(1, 4, 3), torch.full((1, 4), IGNORE_INDEX))
    assert n == 0 and loss.item() == 0.0


def test_sft_steps_change_weights_and_lower_loss(tiny_model, tokenizer, small_sft_file, fixed_batch):
    L.seed_everything(0)
    before_weights = {k: v.detach().clone() for k, v in tiny_model.state_dict().items()}
    before_loss, n = assistant_token_loss(_logits(tiny_model, fixed_batch), fixed_batch["labels"])
    assert n > 0
    module = SFTModule(tiny_model, tokenizer, optim={"name": "adamw", "lr": 1e-3},
                       scheduler={"name": "cosine", "warmup_steps": 1})
    dm = SFTDataModule(tokenizer, path=str(small_sft_file), val_fraction=0.0, max_length=256, batch_size=8)
    trainer = L.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 10
    changed = [k for k, v in tiny_model.state_dict().items() if not torch.equal(v, before_weights[k])]
    assert len(changed) == len(before_weights)
    after_loss, _ = assistant_token_loss(_logits(tiny_model, fixed_batch), fixed_batch["labels"])
    assert after_loss.item() < before_loss.item() - 0.5, (before_loss.item(), after_loss.item())
    for key in ("train/loss", "train/lr", "train/tokens_per_s"):
        assert key in trainer.callback_metrics


def test_export_from_pretrained_round_trip(tiny_model, tokenizer, fixed_batch, tmp_path):
    with torch.no_grad():  # move off the random init so a silent re-init would show
        for p in tiny_model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = export_hf(tiny_model, tokenizer, tmp_path / "hf_model")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert resolve_model_path({"path": str(out)}, tmp_path / "unused") == str(out)  # model.path= accepts it
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(_logits(loaded, fixed_batch), _logits(tiny_model, fixed_batch))
    tok2 = load_tokenizer(str(out))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert tok2.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                    add_generation_prompt=True) == text
    assert tok2(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (tok2.pad_token_id, tok2.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_lora_export_is_merged(tiny_model_dir, tokenizer, fixed_batch, tmp_path):
    base = load_causal_lm(str(tiny_model_dir))
    peft_model = load_causal_lm(str(tiny_model_dir), lora={"r": 4, "alpha": 8, "target_modules": "all-linear"})
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    torch.manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero: make the adapter do something
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn_like(p))
    peft_logits = _logits(peft_model, fixed_batch)
    assert not torch.allclose(peft_logits, _logits(base, fixed_batch), atol=1e-3)
    out = export_hf(peft_model, tokenizer, tmp_path / "hf_model")
    files = {p.name for p in out.iterdir()}
    assert not any(name.startswith("adapter_") for name in files), files
    assert "config.json" in files
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in merged.state_dict())
    assert torch.allclose(_logits(merged, fixed_batch), peft_logits, atol=1e-5)
    assert hasattr(peft_model, "peft_config")  # exporting merged a copy, not the live model


def test_warmup_cosine_by_hand():
    # 10 steps, 2 of warmup: 1/2, 1, then cosine over the remaining 8
    assert warmup_cosine(0, 10, 2, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(1, 10, 2, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(2, 10, 2, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(4, 10, 2, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert warmup_cosine(6, 10, 2, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 2, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(6, 10, 2, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(10, 10, 2, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, 4, 0, 0.0) == pytest.approx(1.0)


def test_scheduler_lrs_follow_the_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, total_steps=10, schedule={"name": "cosine", "warmup_ratio": 0.2,
                                                           "min_lr_ratio": 0.0})
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([1.0, 2.0, 2.0])
    assert lrs[6] == pytest.approx(1.0) and lrs[9] == pytest.approx(2 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    with pytest.raises(ValueError, match="scheduler.name"):
        build_scheduler(opt, 10, {"name": "linear"})


@pytest.mark.parametrize("name", ["adamw", "adamw8bit", "sgd"])
def test_optimizers_build_and_step(tiny_model, fixed_batch, name):
    opt = build_optimizer(tiny_model.parameters(), name=name, lr=1e-3)
    if name == "adamw8bit":
        import bitsandbytes as bnb

        assert isinstance(opt, bnb.optim.AdamW8bit)
    before = {k: v.detach().clone() for k, v in tiny_model.named_parameters()}
    tiny_model.train()
    loss, _ = assistant_token_loss(tiny_model(input_ids=fixed_batch["input_ids"],
                                              attention_mask=fixed_batch["attention_mask"]).logits,
                                   fixed_batch["labels"])
    loss.backward()
    opt.step()
    assert all(not torch.equal(p, before[k]) for k, p in tiny_model.named_parameters())
    if name == "adamw8bit":
        state = opt.state[tiny_model.get_input_embeddings().weight]
        assert state["state1"].dtype == torch.uint8  # 8-bit moments, not a silent 32-bit fallback


def test_optimizer_errors_name_the_key(tiny_model):
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer(tiny_model.parameters(), name="adam9")
    with pytest.raises(ValueError, match="optim.lr"):
        build_optimizer(tiny_model.parameters(), lr=0)
    frozen = itertools.chain([torch.nn.Parameter(torch.zeros(1), requires_grad=False)])
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen)


def test_export_leaves_no_temp_and_cleans_a_killed_exports(tiny_model, tokenizer, tmp_path):
    """The export writes beside its target and renames; a temp dir a dead process left is removed."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    from secreason.checkpoint_io import _host

    orphan = tmp_path / f".hf_model.{_host()}.{dead}.0123abcd.export"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"half")
    out = export_hf(tiny_model, tokenizer, tmp_path / "hf_model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_model"] and (out / "config.json").is_file()
