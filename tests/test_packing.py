"""SFT packing keeps examples apart: a packed row's logits equal each example's logits alone, under
sdpa and eager attention, and its loss is the examples' loss (secreason.packing, data.sft.pack/collate)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from secreason.data.chat import IGNORE_INDEX
from secreason.data.sft import collate, pack
from secreason.modules.sft import SFTModule, assistant_token_loss
from secreason.packing import flatten_rows, restarting_positions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LENGTHS = (7, 12, 5, 9)


def _examples(vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in LENGTHS:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        labels = [IGNORE_INDEX] * 3 + ids[3:]  # a prompt of 3 tokens, then the assistant's
        out.append({"input_ids": ids, "labels": labels})
    return out


def _model(tiny_model_dir, attn: str):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation=attn,
                                                 dtype=torch.float32)
    assert model.config._attn_implementation == attn
    return model.eval()


def test_restarting_positions_and_flatten_by_hand():
    assert restarting_positions([3, 1, 2]).tolist() == [0, 1, 2, 0, 0, 1]
    ids = torch.tensor([[0, 5, 6], [7, 8, 9], [4, 0, 0]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [1, 0, 0]])
    flat, pos = flatten_rows(ids, mask)
    assert flat.tolist() == [[5, 6, 7, 8, 9, 4]] and pos.tolist() == [[0, 1, 0, 1, 2, 0]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_each_example_alone(tiny_model_dir, attn):
    """Two packed rows (right-padded to one width), run the way SFT runs them (SFTModule.forward on
    collate's batch): every example's logits are its logits alone, to 1e-5."""
    model = _model(tiny_model_dir, attn)
    examples = _examples(model.config.vocab_size)
    rows = pack(examples, max_length=20)
    assert [len(r["input_ids"]) for r in rows] == [19, 14]  # 7+12 | 5+9: both rows hold two examples
    batch = collate(rows, pad_id=0)
    module = SFTModule(model, None, optim={"name": "adamw", "lr": 1e-3}, scheduler={"name": "constant"})
    model.eval()
    with torch.no_grad():
        packed = module(batch)
        where = [(0, 0), (0, 7), (1, 0), (1, 5)]  # (row, offset) of each example
        for ex, (row, start) in zip(examples, where):
            alone = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
            got = packed[row, start:start + len(ex["input_ids"])]
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
    assert "attention_mask" not in batch


def test_packed_loss_is_the_examples_token_mean(tiny_model_dir):
    """Labels stay on the assistant tokens only: the packed batch's loss and target count are the
    token mean over the examples run alone (no target across a boundary)."""
    model = _model(tiny_model_dir, "sdpa")
    examples = _examples(model.config.vocab_size, seed=1)
    batch = collate(pack(examples, max_length=20), pad_id=0)
    with torch.no_grad():
        loss, n = assistant_token_loss(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                             use_cache=False).logits,
                                       batch["labels"])
        total, count = 0.0, 0
        for ex in examples:
            l, k = assistant_token_loss(model(input_ids=torch.tensor([ex["input_ids"]])).logits,
                                        torch.tensor([ex["labels"]]))
            total, count = total + float(l) * k, count + k
    assert n == count == sum(len(e["labels"]) - 3 for e in examples)
    assert float(loss) == pytest.approx(total / count, abs=1e-6)
    assert batch["num_tokens"].tolist() == [19, 14]


def test_pack_never_trains_across_a_boundary():
    """An example whose first label is a target (no prompt) still gets none at position 0 once packed:
    that target would be predicted by the previous example's last token."""
    rows = pack([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3, 4], "labels": [3, 4]}], max_length=8)
    assert rows[0]["labels"] == [IGNORE_INDEX, 2, IGNORE_INDEX, 4]
