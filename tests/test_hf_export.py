"""The HF export: a LoRA run's `adapter/` (peft), exports during training swapped in whole, the model
card, and `push_to_hub` (the upload mocked: no network)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from secreason.callbacks.hf_export import HFExport
from secreason.errors import ConfigError
from secreason.models import EXPORT_SUFFIX, export_hf

IDS = torch.tensor([[5, 17, 42, 9, 33, 2, 61, 8]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def test_lora_run_writes_an_adapter_peft_loads_with_the_merged_logits(run_train, tiny_model_dir):
    """model.lora.r=4, every_n_steps=1, 2 steps: hf_model/ is written at steps 1 and 2 (not again at
    the end); its adapter/ on the base gives the merged export's logits (1e-4), which differ from
    the base's; README.md names the config and the overrides."""
    from peft import PeftModel

    proc = run_train("+experiment=sft", "model.lora.r=4", "model.lora.alpha=8", "algorithm.optim.lr=0.05",
                     "trainer.max_steps=2", "trainer.limit_val_batches=0", "callbacks.hf_export.every_n_steps=1",
                     "logger=csv", "trainer.enable_progress_bar=false", timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    hf = Path(proc.run_dir) / "hf_model"
    assert proc.stdout.count(f"hf_checkpoint: {hf}") == 2, proc.stdout[-2000:]
    assert (hf / "adapter" / "adapter_config.json").is_file()
    merged = logits(AutoModelForCausalLM.from_pretrained(hf))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_logits = logits(base)
    adapted = logits(PeftModel.from_pretrained(base, hf / "adapter"))
    assert (merged - base_logits).abs().max() > 1e-3  # the adapter trained: the comparison can fail
    assert torch.allclose(adapted, merged, atol=1e-4), (adapted - merged).abs().max()
    card = (hf / "README.md").read_text()
    assert "conf/train.yaml" in card and "+experiment=sft" in card and "model.lora.r=4" in card, card
    assert not list(hf.parent.glob(f"*{EXPORT_SUFFIX}")), "temp dirs left beside the export"


def test_a_failed_export_leaves_the_previous_one_whole(tiny_model, tokenizer, tmp_path, monkeypatch):
    out = export_hf(tiny_model, tokenizer, tmp_path / "hf_model")
    before = sorted(p.name for p in out.iterdir())
    import secreason.sampling.weights as weights

    def broken(model, tok, out_dir):
        (Path(out_dir) / "config.json").write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(weights, "save_policy", broken)
    with pytest.raises(OSError, match="disk full"):
        export_hf(tiny_model, tokenizer, out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert not list(tmp_path.glob(f"*{EXPORT_SUFFIX}"))


class FakeHub:
    calls: list = []

    def __init__(self, *a, **k) -> None:
        pass

    def create_repo(self, repo_id, **kw):
        FakeHub.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
        FakeHub.calls.append(("upload_folder", kw, (Path(kw["folder_path"]) / "README.md").read_text()))


class GRPOModule:  # a stand-in LightningModule: the card names the module's class
    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer


def stand_in_trainer(step: int = 3) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_global_zero=True,
                           strategy=SimpleNamespace(model=None, barrier=lambda name: None))


@pytest.mark.parametrize("push", [False, True])
def test_push_to_hub_uploads_the_export_with_its_card(tiny_model, tokenizer, tmp_path, monkeypatch, push):
    import huggingface_hub

    from hydra.core.hydra_config import HydraConfig

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    # outside train.py: a Hydra config left set by an earlier test's compose must not be read as this run's
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    kw = {"push_to_hub": True, "hub_repo_id": "my-org/secreason-grpo"} if push else {}
    callback = HFExport(str(tmp_path / "hf_model"), **kw)
    callback.on_train_end(stand_in_trainer(), GRPOModule(tiny_model, tokenizer))
    assert (tmp_path / "hf_model" / "config.json").is_file()
    if not push:  # off by default
        assert FakeHub.calls == []
        return
    (create, repo, create_kw), (upload, upload_kw, card) = FakeHub.calls
    assert (create, repo, create_kw) == ("create_repo", "my-org/secreason-grpo", {"private": True, "exist_ok": True})
    assert upload == "upload_folder" and upload_kw["repo_id"] == "my-org/secreason-grpo"
    assert upload_kw["folder_path"] == str(tmp_path / "hf_model")
    assert "algorithm: `GRPOModule`" in card and "config: not recorded" in card


def test_default_config_does_not_push(compose_train):
    cfg = compose_train()
    assert cfg.callbacks.hf_export.push_to_hub is False and cfg.callbacks.hf_export.every_n_steps == 0


@pytest.mark.parametrize("kw,needle", [({"push_to_hub": True}, "callbacks.hf_export.hub_repo_id"),
                                       ({"every_n_steps": -1}, "callbacks.hf_export.every_n_steps=-1")])
def test_bad_export_settings_name_the_key(tmp_path, kw, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        HFExport(str(tmp_path), **kw)
