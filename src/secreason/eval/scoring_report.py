"""The report's protocol (Cisco FAITH, shared/data/PROTOCOLS.md): per-item scores and aggregates.

All extraction goes through `secreason.rewards.extraction` (the one answer parser). Every aggregate here
divides by all items: an answer that cannot be extracted is wrong, never dropped.

- mcq, rcm  `accuracy` counts a correct answer only when it was extracted in the proper format,
            `lenient_accuracy` counts any extracted answer; `invalid` = nothing extracted.
- vsp       `score` = mean of 1 − |base(pred) − base(gold)| / 10, 0 for a missing or unparsable
            vector. Like FAITH's cvss score, either extraction format counts.
- ate       `f1` = micro-F1 of the technique-id sets pooled over the items (the report's 0.491);
            `macro_f1` as well. Sub-technique ids are cut to their main technique.
- taa       not among the report's benchmarks; FAITH scores it as alias-group accuracy. `correct`:
            prediction and gold in one connected component of the alias map, `plausible`: of the
            alias ∪ related map. The "nan" pseudo-actor is dropped here (see taa.py). The answer
            is read from a final `Answer: <actor>` line, the project's answer convention.
"""
from __future__ import annotations

import dataclasses

from typing import Any

from secreason.rewards import extraction as ex
from secreason.eval import metrics
from secreason.eval.benchmarks import Item

METRIC_KEYS = {
    "mcq": ("accuracy", "lenient_accuracy"),
    "rcm": ("accuracy", "lenient_accuracy"),
    "vsp": ("score",),
    "ate": ("f1", "macro_f1"),
    "taa": ("correct", "plausible"),
}


def _fmt(found: ex.Extraction | None) -> str:
    return "none" if found is None else ("proper" if found.proper else "improper")


def score_item(family: str, answer: str, item: Item, actors=None) -> dict[str, Any]:
    """One item's record; `answer` is the text after the think block."""
    if family in ("mcq", "rcm"):
        found = ex.extract(answer, ex.MCQ_PATTERNS if family == "mcq" else ex.CWE_PATTERNS)
        hit = found is not None and found.value == item.gold
        return {"extracted": found and found.value, "format": _fmt(found),
                "correct": hit and found.proper, "lenient_correct": hit}
    if family == "vsp":
        found = ex.extract(answer, ex.CVSS_PATTERNS)
        pred, gold = metrics.base_score(found and found.value), metrics.base_score(item.gold)
        score = 1.0 - abs(pred - gold) / 10.0 if pred is not None and gold is not None else 0.0
        return {"extracted": found and found.value, "format": _fmt(found), "base_pred": pred,
                "base_gold": gold, "score": score}
    if family == "ate":
        # FAITH's proper pattern first; the lenient id finder only as an improper fallback.
        found = ex.extract(answer, ex.ATE_PATTERNS)
        if found is None and (loose := ex.extract_attack_ids(answer)) is not None:
            found = dataclasses.replace(loose, proper=False)
        pred = sorted({ex.strip_subtechnique(t) for t in ex.split_ids(found and found.value)})
        tp, fp, fn = metrics.set_counts(item.gold, pred)
        return {"extracted": pred if found else None, "format": _fmt(found), "tp": tp, "fp": fp, "fn": fn}
    if family == "taa":
        tail = ex.after_last_answer_marker(answer)
        # The actor is the rest of the `Answer:` line; without a marker, the last line (improper).
        name = (tail.strip().splitlines() or [""])[0] if tail is not None else ex.last_nonempty_line(answer)
        name = name.strip().strip("*_.`\"'").strip()
        fmt = "none" if not name else ("proper" if tail is not None else "improper")
        return {"extracted": name or None, "format": fmt,
                "label": actors.label(item.gold, name) if name else "I"}
    raise ValueError(f"family {family!r} has no report-protocol scorer")


def aggregate(family: str, records: list[dict]) -> tuple[dict[str, float], dict[str, int]]:
    """(metrics, counts) over the records of one seed."""
    n = len(records)
    invalid = sum(r["format"] == "none" for r in records)
    improper = sum(r["format"] == "improper" for r in records)
    counts = {"invalid": invalid, "improper": improper}
    if family in ("mcq", "rcm"):
        return ({"accuracy": sum(r["correct"] for r in records) / n,
                 "lenient_accuracy": sum(r["lenient_correct"] for r in records) / n}, counts)
    if family == "vsp":
        return {"score": sum(r["score"] for r in records) / n}, counts
    if family == "ate":
        c = [(r["tp"], r["fp"], r["fn"]) for r in records]
        return {"f1": metrics.micro_f1(c), "macro_f1": metrics.macro_f1(c)}, counts
    if family == "taa":
        correct = sum(r["label"] == "C" for r in records)
        return {"correct": correct / n,
                "plausible": (correct + sum(r["label"] == "P" for r in records)) / n}, counts
    raise ValueError(f"family {family!r} has no report-protocol aggregate")
