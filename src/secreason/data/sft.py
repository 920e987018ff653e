"""SFT data: chat rows → assistant-masked token sequences, domain mix, optional packing."""
from __future__ import annotations

import logging
import random
from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader

from secreason.data.chat import IGNORE_INDEX, encode_chat
from secreason.data.resumable import ResumableDataModule
from secreason.data.rows import DataError, check_messages, load_rows, log_counts
from secreason.rewards.extraction import DEFAULT_THINK_TAGS

log = logging.getLogger(__name__)

# The report's SFT mix (Fig. 2a; labels partly inferred, see shared/paper/report-details.md §1).
REPORT_MIX = {"security": 0.268, "math": 0.209, "code": 0.149, "instruction": 0.135,
              "science": 0.109, "safety": 0.089, "chat": 0.041}


def apply_mix(rows: list[dict], mix: Mapping[str, float] | None, seed: int) -> list[dict]:
    """Resample rows so domains appear in the `mix` proportions (renormalised over present domains).

    The count of rows with a domain is kept; a domain is down-sampled or up-sampled (with repeats)
    to its share, and a domain the mix does not name is dropped. Rows without a `domain` (null or
    absent, as in most chat data sets) are kept once each, as they are, outside the mix: with none
    carrying a domain, the mix is not applied (a warning says so). A mix that names `other` takes
    them in instead, as domain "other".
    """
    if not mix:
        return rows
    by_domain: dict[str, list[dict]] = {}
    unmixed: list[dict] = []
    for r in rows:
        domain = r.get("domain")
        if domain is None or domain == "":
            if "other" not in mix:
                unmixed.append(r)
                continue
            domain = "other"
        by_domain.setdefault(str(domain), []).append(r)
    if not by_domain:
        log.warning("data.mix not applied: no row has a 'domain'; all %d rows are kept as they are "
                    "(set data.mix=null to say so)", len(rows))
        return rows
    present = {d: float(w) for d, w in mix.items() if d in by_domain and float(w) > 0}
    if not present:
        raise DataError(f"data.mix names none of the data's domains {sorted(by_domain)}")
    if missing := sorted(set(by_domain) - set(present)):
        log.info("data.mix drops domains not in the mix: %s", missing)
    total_w, n = sum(present.values()), len(rows) - len(unmixed)
    rng = random.Random(seed)
    out: list[dict] = []
    for d, w in sorted(present.items()):
        pool, k = by_domain[d], round(n * w / total_w)
        out += rng.sample(pool, k) if k <= len(pool) else [pool[i % len(pool)] for i in range(k)]
    if unmixed:
        log.info("data.mix: %d rows without a 'domain' kept as they are, outside the mix", len(unmixed))
        out += unmixed
    rng.shuffle(out)
    log.info("data.mix: %s", {d: round(w / total_w, 3) for d, w in sorted(present.items())})
    return out


def tokenize_rows(tokenizer, rows: list[dict], max_length: int) -> tuple[list[dict], int]:
    """Encoded examples and the number dropped for being longer than `max_length`."""
    examples, dropped = [], 0
    for r in rows:
        ids, labels = encode_chat(tokenizer, r["messages"])
        if len(ids) > max_length:
            dropped += 1
            continue
        examples.append({"input_ids": ids, "labels": labels})
    return examples, dropped


def pack(examples: list[dict], max_length: int) -> list[dict]:
    """Greedy first-fit packing into sequences of at most `max_length` tokens.

    position_ids restart at every example; `collate` then passes no attention_mask, so transformers
    keeps the examples apart (block-diagonal causal attention under sdpa/eager, varlen under
    flash-attention; see secreason.packing). Each example's first label is IGNORE_INDEX, so the last
    token of one example is not trained to predict the next example's first token.
    """
    packed: list[dict] = []
    cur = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        if cur["input_ids"] and len(cur["input_ids"]) + len(ex["input_ids"]) > max_length:
            packed.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += ex["input_ids"]
        cur["labels"] += [IGNORE_INDEX] + ex["labels"][1:]  # position 0 is never a target unpacked either
        cur["position_ids"] += list(range(len(ex["input_ids"])))
    if cur["input_ids"]:
        packed.append(cur)
    return packed


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence of the batch; `num_tokens` [B] counts each row's real tokens.

    Packed rows (with `position_ids`) get no attention_mask: with one, transformers would not split
    them into their examples (secreason.packing). Right padding needs none under causal attention
    (no real token sees a later one); its positions restart so it forms a segment of its own.
    """
    width = max(len(b["input_ids"]) for b in batch)
    packed = "position_ids" in batch[0]
    out = {"input_ids": torch.full((len(batch), width), pad_id, dtype=torch.long),
           "labels": torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long),
           "num_tokens": torch.tensor([len(b["input_ids"]) for b in batch])}
    if packed:
        out["position_ids"] = torch.zeros((len(batch), width), dtype=torch.long)
    else:
        out["attention_mask"] = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        out["input_ids"][i, :n] = torch.tensor(b["input_ids"])
        out["labels"][i, :n] = torch.tensor(b["labels"])
        if packed:
            out["position_ids"][i] = torch.tensor(b["position_ids"] + list(range(width - n)))
        else:
            out["attention_mask"][i, :n] = 1
    return out


class SFTDataModule(ResumableDataModule):
    """Chat rows from `path` (JSONL/Parquet file or dir, or hub id); null path → the synthetic set."""

    def __init__(self, tokenizer, path: str | None = None, split: str = "sft", val_path: str | None = None,
                 val_fraction: float = 0.02, max_length: int = 512, batch_size: int = 8,
                 packing: bool = False, mix: Mapping[str, float] | None = None, on_bad_row: str = "error",
                 think_tags: tuple[str, str] = DEFAULT_THINK_TAGS, seed: int = 0,
                 synth: Mapping[str, Any] | None = None, num_workers: int = 0) -> None:
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise DataError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        if batch_size < 1 or max_length < 8:
            raise DataError("data.batch_size must be ≥ 1 and data.max_length ≥ 8")
        self.tokenizer, self.path, self.split, self.val_path = tokenizer, path, split, val_path
        self.val_fraction, self.max_length, self.batch_size = val_fraction, max_length, batch_size
        self.packing, self.mix, self.on_bad_row, self.seed = packing, mix, on_bad_row, seed
        self.think_tags, self.synth, self.num_workers = tuple(think_tags), synth, num_workers
        self.train_examples: list[dict] = []
        self.val_examples: list[dict] = []
        self.stats: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples:
            return
        path = self.source_path()
        read: dict[str, int] = {}
        rows = load_rows(path, check_messages, split=self.split, on_bad_row=self.on_bad_row, stats=read)
        no_think = sum(self.think_tags[1] not in r["messages"][-1]["content"] for r in rows)
        if no_think:
            log.info("%d of %d rows have no %s in the assistant turn", no_think, len(rows), self.think_tags[1])
        if self.val_path:
            val_rows = load_rows(self.val_path, check_messages, split="val", on_bad_row=self.on_bad_row, stats=read)
        else:
            rows = rows[:]
            random.Random(self.seed).shuffle(rows)
            n_val = int(len(rows) * self.val_fraction)
            val_rows, rows = rows[:n_val], rows[n_val:]
        rows = apply_mix(rows, self.mix, self.seed)
        self.train_examples, dropped = tokenize_rows(self.tokenizer, rows, self.max_length)
        self.val_examples, val_dropped = tokenize_rows(self.tokenizer, val_rows, self.max_length)
        if dropped or val_dropped:
            log.warning("dropped %d train / %d val rows longer than data.max_length=%d",
                        dropped, val_dropped, self.max_length)
        if not self.train_examples:
            raise DataError(f"data.path={path}: every row is longer than data.max_length={self.max_length}")
        if self.packing:
            self.train_examples = pack(self.train_examples, self.max_length)
        self.stats = {"train_rows": len(rows), "val_rows": len(val_rows), "dropped_too_long": dropped + val_dropped,
                      "train_sequences": len(self.train_examples), **read}
        log.info("SFT data: %s", self.stats)
        log_counts(self.trainer, self.stats)

    def train_dataloader(self) -> DataLoader:
        sampler = self.make_sampler(len(self.train_examples))
        return DataLoader(self.train_examples, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=lambda b: collate(b, self.tokenizer.pad_token_id),
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_examples:
            return []
        return DataLoader(self.val_examples, batch_size=self.batch_size, shuffle=False,
                          collate_fn=lambda b: collate(b, self.tokenizer.pad_token_id))
