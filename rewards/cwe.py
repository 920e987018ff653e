"""CWE reward: exact id 1.0; a direct neighbour in the CWE view-1000 hierarchy gets partial credit.

The hierarchy is the `ChildOf` edges of view 1000 ("Research Concepts") in the catalog shipped
with the `cwe2` package (CWE 4.14, file `navigate_cwe/1000.csv`); it is read once per process
(about 25 ms) and cached. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from secreason.errors import ConfigError
from secreason.rewards import Reward
from secreason.rewards.extraction import CWE_PATTERNS, all_values, cwe_number, extract

_CHILD_OF_1000 = re.compile(r"NATURE:ChildOf:CWE ID:(\d+):VIEW ID:1000\b")


@dataclass(frozen=True)
class CWEHierarchy:
    parents: dict[int, frozenset[int]]  # id → its direct parents in view 1000

    def relation(self, a: int, b: int) -> str | None:
        """"same", "parent" (a is b's parent), "child", "sibling" (a shared direct parent),
        or None (unrelated or not in view 1000)."""
        if a == b:
            return "same"
        if a not in self.parents or b not in self.parents:
            return None
        if a in self.parents[b]:
            return "parent"
        if b in self.parents[a]:
            return "child"
        if self.parents[a] & self.parents[b]:
            return "sibling"
        return None


@lru_cache(maxsize=1)
def load_hierarchy() -> CWEHierarchy:
    from cwe2.mappings import navigate_cwe

    path = navigate_cwe["research_concepts"]["csv_file"]
    parents: dict[int, frozenset[int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            related = row.get("Related Weaknesses") or ""
            parents[int(row["CWE-ID"])] = frozenset(int(p) for p in _CHILD_OF_1000.findall(related))
    return CWEHierarchy(parents)


class CWEReward(Reward):
    """1.0 for the gold id; `partial_credit` for its direct parent, child or sibling in view
    1000 (default 0.0, the report's binary reward); 0.0 otherwise.

    The id is read from the answer text with the report's CWE patterns (`CWE-79`, `cwe-79`,
    `CWE ID: 79`). An answer naming two or more different ids scores 0, whichever pattern found
    them. An exact match scores 1.0 even for gold ids outside view 1000 (categories such as
    CWE-264 are CTIBench golds); a different id outside view 1000 earns no partial credit.
    """

    def __init__(self, partial_credit: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        if not 0.0 <= partial_credit <= 1.0:
            raise ConfigError(f"partial_credit must be in [0, 1], got {partial_credit}")
        self.partial_credit = float(partial_credit)
        if self.partial_credit:
            load_hierarchy()  # read the catalog now, not inside the first scoring time limit

    def score(self, completion: str, gold: Any) -> float:
        want = cwe_number(gold)
        if want is None:
            self.stats["bad_gold"] += 1
            return 0.0
        answer = self.answer_text(completion)
        named = {cwe_number(v) for v in all_values(answer, CWE_PATTERNS)}
        if len(named) > 1:
            self.stats["several_ids"] += 1
            return 0.0
        got = extract(answer, CWE_PATTERNS)
        got_id = None if got is None else cwe_number(got.value)
        if got_id is None:
            return 0.0
        if got_id == want:
            return 1.0
        if self.partial_credit == 0.0:
            return 0.0
        hierarchy = load_hierarchy()
        if got_id not in hierarchy.parents:
            self.stats["unknown_id"] += 1
            return 0.0
        return self.partial_credit if hierarchy.relation(got_id, want) else 0.0
