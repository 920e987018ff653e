"""CVSS v3 reward: the predicted vector, parsed with the `cvss` package, against the gold.

(Named cvss_score, not cvss, so that it cannot shadow the `cvss` package.)
"""

from __future__ import annotations

import re
from typing import Any

from cvss import CVSS3

from secreason.errors import ConfigError
from secreason.rewards import Reward
from secreason.rewards.extraction import CVSS_PATTERNS, extract

BASE_METRICS = ("AV", "AC", "PR", "UI", "S", "C", "I", "A")
MODES = ("binary", "graded")
MATCHES = ("score", "vector")
_NUMERIC = re.compile(r"^\s*(\d{1,2}(?:\.\d+)?)\s*$", re.ASCII)


def parse_vector(vector: str) -> CVSS3 | None:
    """A parsed v3.x vector, or None when `cvss` rejects it (any CVSS3 error)."""
    try:
        return CVSS3(vector)
    except Exception:  # cvss raises several error types; all mean "invalid"
        return None


def base_score(vector: CVSS3) -> float:
    return float(vector.scores()[0])


def metric_agreement(pred: CVSS3, gold: CVSS3) -> float:
    """Fraction of the 8 base metrics on which the two vectors agree."""
    same = sum(pred.metrics[m] == gold.metrics[m] for m in BASE_METRICS)
    return same / len(BASE_METRICS)


def vsp_similarity(pred_score: float, gold_score: float) -> float:
    """The report's per-item VSP score, 1 − |Δbase|/10 (a similarity; not CTIBench's MAD)."""
    return max(0.0, 1.0 - abs(pred_score - gold_score) / 10.0)


class CVSSReward(Reward):
    """mode="binary" (default, the report's reward): 1.0 when the base scores are equal
    (match="score") or the 8 base metrics are equal (match="vector"), else 0.0.
    mode="graded": 1 − |Δbase|/10; with per_metric=True, the mean of that and the fraction of
    agreeing base metrics (the base score alone is blind to which metrics were right).

    The vector is read with the report's CVSS patterns (a `CVSS:3.x/…` vector, else bare
    `/AV:N/…` metrics taken as v3.0). No vector, or one `cvss` rejects → 0.0.
    Gold: a vector string, or a numeric base score such as "9.8" — a numeric gold can only be
    compared by score, so match="vector" and per_metric fall back to the score there.
    """

    def __init__(self, mode: str = "binary", match: str = "score", per_metric: bool = False,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if match not in MATCHES:
            raise ConfigError(f"match must be one of {MATCHES}, got {match!r}")
        if per_metric and mode != "graded":
            raise ConfigError("per_metric applies to mode='graded' only")
        self.mode, self.match, self.per_metric = mode, match, bool(per_metric)

    def score(self, completion: str, gold: Any) -> float:
        gold_vector, gold_score = self._gold(gold)
        if gold_score is None:
            self.stats["bad_gold"] += 1
            return 0.0
        got = extract(self.answer_text(completion), CVSS_PATTERNS)
        pred = None if got is None else parse_vector(got.value)
        if pred is None:
            self.stats["invalid_vector"] += 1
            return 0.0
        pred_score = base_score(pred)
        if self.mode == "binary":
            if self.match == "vector" and gold_vector is not None:
                return 1.0 if metric_agreement(pred, gold_vector) == 1.0 else 0.0
            return 1.0 if abs(pred_score - gold_score) < 1e-9 else 0.0
        graded = vsp_similarity(pred_score, gold_score)
        if self.per_metric and gold_vector is not None:
            return 0.5 * graded + 0.5 * metric_agreement(pred, gold_vector)
        return graded

    @staticmethod
    def _gold(gold: Any) -> tuple[CVSS3 | None, float | None]:
        if isinstance(gold, (int, float)) and not isinstance(gold, bool):
            return None, float(gold) if 0.0 <= gold <= 10.0 else None
        text = str(gold)
        if m := _NUMERIC.match(text):
            value = float(m.group(1))
            return None, value if value <= 10.0 else None
        vector = parse_vector(text.strip())
        return (vector, base_score(vector)) if vector is not None else (None, None)
