"""The CTIBench paper's own rules (shared/data/ctibench/SCORING.md): per-item scores and aggregates.

Extraction is upstream's (`secreason.rewards.extraction.ctibench_*`). The denominators are upstream's too,
and they differ by task:
- mcq, rcm  `accuracy` = correct / valid: an answer upstream's validity test rejects (no letter,
            no `CWE-`, an API error string, an empty cell) leaves the denominator. `invalid`
            says how many did; `accuracy_all` = correct / all items is given beside it.
- vsp       `mad` = mean |base(pred) − base(gold)| over the rows where both vectors parse
            (lower is better; the prediction is prefixed `CVSS:3.0/` as upstream does).
- ate       upstream has no scorer; SCORING.md's suggestion: the ids on the last non-empty line,
            `f1` = micro-F1 pooled over all rows, `macro_f1` = mean per-row F1.
- taa       `correct` = #C / n and `plausible` = (#C + #P) / n over all rows, with upstream's alias
            graph, "nan" node included so the published numbers reproduce. Upstream extracted TAA
            answers by hand and `format_taa` only joins lines, so the prediction is the whole
            answer joined into one line: score response files that hold the extracted names.
Scores are fractions (0–1), not upstream's percentages; `mad` is in CVSS points (0–10).
"""
from __future__ import annotations

from typing import Any

from secreason.rewards import extraction as ex
from secreason.eval import metrics
from secreason.eval.benchmarks import Item

METRIC_KEYS = {
    "mcq": ("accuracy",),
    "rcm": ("accuracy",),
    "vsp": ("mad",),
    "ate": ("f1", "macro_f1"),
    "taa": ("correct", "plausible"),
}


def score_item(family: str, answer: str, item: Item, actors=None, actors_without_nan=None) -> dict[str, Any]:
    if family == "mcq":
        pred = ex.ctibench_mcq(answer)
        valid = ex.ctibench_mcq_valid(pred)
        return {"extracted": pred if valid else None, "valid": valid,
                "correct": valid and pred.strip().upper() == item.gold.upper()}
    if family == "rcm":
        pred = ex.ctibench_rcm(answer)
        valid = ex.ctibench_rcm_valid(pred)
        return {"extracted": pred if valid else None, "valid": valid,
                "correct": valid and pred.upper() == item.gold.upper()}
    if family == "vsp":
        pred = ex.ctibench_vsp(answer)
        base_pred = metrics.base_score(ex.ctibench_vsp_vector(pred))
        base_gold = metrics.base_score(item.gold)
        valid = base_pred is not None and base_gold is not None
        return {"extracted": pred if base_pred is not None else None, "valid": valid,
                "base_pred": base_pred, "base_gold": base_gold,
                "abs_error": abs(base_pred - base_gold) if valid else None}
    if family == "ate":
        pred = sorted(ex.ctibench_ate(answer))
        tp, fp, fn = metrics.set_counts(item.gold, pred)
        return {"extracted": pred, "valid": bool(pred), "tp": tp, "fp": fp, "fn": fn}
    if family == "taa":
        pred = " ".join(answer.splitlines()).strip()  # upstream format_taa joins the lines
        label = actors.label(item.gold, pred)
        record = {"extracted": pred or None, "valid": bool(pred), "label": label}
        if actors_without_nan is not None and actors_without_nan.label(item.gold, pred) != label:
            record["nan_link"] = True  # the label depends on upstream's spurious "nan" node
        return record
    raise ValueError(f"family {family!r} has no ctibench-protocol scorer")


def aggregate(family: str, records: list[dict]) -> tuple[dict[str, float], dict[str, int]]:
    n = len(records)
    valid = sum(bool(r["valid"]) for r in records)
    counts = {"invalid": n - valid, "valid": valid}
    if family in ("mcq", "rcm"):
        correct = sum(bool(r["correct"]) for r in records)
        return {"accuracy": correct / valid if valid else 0.0, "accuracy_all": correct / n}, counts
    if family == "vsp":
        errors = [r["abs_error"] for r in records if r["valid"]]
        # No parsable row at all: report the worst possible MAD rather than a division by zero.
        return {"mad": sum(errors) / len(errors) if errors else 10.0}, counts
    if family == "ate":
        c = [(r["tp"], r["fp"], r["fn"]) for r in records]
        return {"f1": metrics.micro_f1(c), "macro_f1": metrics.macro_f1(c)}, counts
    if family == "taa":
        correct = sum(r["label"] == "C" for r in records)
        plausible = correct + sum(r["label"] == "P" for r in records)
        counts["nan_links"] = sum(bool(r.get("nan_link")) for r in records)
        return {"correct": correct / n, "plausible": plausible / n}, counts
    raise ValueError(f"family {family!r} has no ctibench-protocol aggregate")
