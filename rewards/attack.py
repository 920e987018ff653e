"""ATT&CK reward: F1 between the predicted and gold technique-id sets."""

from __future__ import annotations

from typing import Any, Iterable

from secreason.errors import ConfigError
from secreason.rewards import Reward
from secreason.rewards.extraction import extract_attack_ids, split_ids, strip_subtechnique

SUBTECHNIQUES = ("strip", "keep")


def normalise_ids(ids: Iterable[str], subtechniques: str = "strip") -> set[str]:
    """"strip" maps T1059.001 → T1059 (the report keeps main techniques only); "keep" keeps
    sub-technique ids as distinct labels."""
    if subtechniques == "strip":
        return {strip_subtechnique(i) for i in ids}
    return set(ids)


def set_counts(pred: set[str], gold: set[str]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives); pooled over items they give the
    report's micro-F1, so evaluation uses the same function."""
    tp = len(pred & gold)
    return tp, len(pred) - tp, len(gold) - tp


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """2TP / (2TP + FP + FN); 0.0 when there is nothing at all (no prediction, no gold)."""
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


class ATTACKReward(Reward):
    """F1 of the technique ids in the final answer (`Answer: T1059, T1566`, else the last
    non-empty line) against the gold ids ("T1059, T1566" or a list). Enterprise and Mobile ids
    share the T-number space and are handled alike. No ids or an empty gold → 0.0.
    """

    def __init__(self, subtechniques: str = "strip", **kwargs: Any):
        super().__init__(**kwargs)
        if subtechniques not in SUBTECHNIQUES:
            raise ConfigError(f"subtechniques must be one of {SUBTECHNIQUES}, got {subtechniques!r}")
        self.subtechniques = subtechniques

    def score(self, completion: str, gold: Any) -> float:
        gold_ids = normalise_ids(split_ids(gold), self.subtechniques)
        if not gold_ids:
            self.stats["bad_gold"] += 1
            return 0.0
        got = extract_attack_ids(self.answer_text(completion))
        if got is None:
            return 0.0
        pred_ids = normalise_ids(split_ids(got.value), self.subtechniques)
        return f1_from_counts(*set_counts(pred_ids, gold_ids))
