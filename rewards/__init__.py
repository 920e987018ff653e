"""Verifiable rewards for cybersecurity reasoning (see docs/CONTRACTS.md).

A reward is `fn(completions: list[str], **columns) -> list[float]`: `columns` are the RL rows'
columns as lists aligned with `completions` (`answer=[...]`, `task=[...]`, `prompt=[...]`);
columns a reward does not use are ignored. Completions may also come in TRL's conversational form
(message lists); `as_text` reads them. TRL-style functions plug in unchanged (`calling.py`).

`Reward` is the shared base: it splits off the think block, scores one completion at a time
under a time limit, and turns every failure into 0.0, so a reward never raises on any string
and never returns NaN. What went wrong is counted in `reward.stats` (timeouts, errors,
non-string completions, missing or unusable gold), which tests and logging read.

This package module stays light (no cwe2/cvss/math-verify import) so that `secreason.rewards.extraction`
can be imported by evaluation without pulling in the scorers.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, Mapping, Sequence

from secreason.errors import ConfigError
from secreason.rewards.extraction import DEFAULT_THINK_TAGS, split_think
from secreason.rewards.timeout import RewardTimeout, run_with_time_limit

log = logging.getLogger(__name__)

# An answer section longer than this is degenerate; only its last part is read, which keeps
# every scorer's work bounded whatever the completion length.
MAX_ANSWER_CHARS = 20_000


def aligned(column: Sequence[Any] | None, n: int, name: str) -> list[Any]:
    """A column as a list of length n (None → all None). A wrong length is a caller bug."""
    if column is None:
        return [None] * n
    values = list(column)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


def as_text(completion: Any) -> Any:
    """A completion as text: a string as is; TRL's conversational form (a list of message dicts,
    or one message dict) as the content of its assistant messages (all messages when none is
    marked assistant), joined; anything else unchanged, so it is scored as non-string."""
    if isinstance(completion, str):
        return completion
    messages = [completion] if isinstance(completion, Mapping) else completion
    if not isinstance(messages, list) or not messages or not all(isinstance(m, Mapping) for m in messages):
        return completion
    contents = [m.get("content") for m in messages if m.get("role", "assistant") == "assistant"]
    contents = contents or [m.get("content") for m in messages]
    if not all(isinstance(c, str) for c in contents):
        return completion
    return "".join(contents)


def as_think_tags(think_tags: Sequence[str] | None) -> tuple[str, str] | None:
    """Validate think tags from config (a list from YAML, a tuple, or None for no think)."""
    if not think_tags:
        return None
    tags = tuple(str(t) for t in think_tags)
    if len(tags) != 2 or not all(tags):
        raise ConfigError(f"think_tags must be two non-empty strings, got {think_tags!r}")
    return tags  # type: ignore[return-value]


class Reward(ABC):
    """Base of every correctness reward; scores lie in [low, high]."""

    low, high = 0.0, 1.0

    def __init__(self, think_tags: Sequence[str] | None = DEFAULT_THINK_TAGS,
                 timeout_s: float | None = 1.0):
        self.think_tags = as_think_tags(think_tags)
        self.timeout_s = timeout_s
        self.stats: Counter[str] = Counter()

    def __call__(self, completions: Sequence[str], answer: Sequence[Any] | None = None,
                 **columns: Any) -> list[float]:
        golds = aligned(answer, len(completions), "answer")
        return [self.safe_score(c, g) for c, g in zip(completions, golds)]

    def safe_score(self, completion: Any, gold: Any) -> float:
        completion = as_text(completion)
        if not isinstance(completion, str):
            self.stats["non_string"] += 1
            return 0.0
        if gold is None:
            self.stats["missing_gold"] += 1
            return 0.0
        try:
            value = run_with_time_limit(lambda: self.score(completion, gold), self.timeout_s)
        except RewardTimeout:
            self.stats["timeouts"] += 1
            return 0.0
        except Exception:  # a scorer bug must not stop training; it is counted and logged once
            if not self.stats["errors"]:
                log.exception("%s failed on one completion; scoring it 0", type(self).__name__)
            self.stats["errors"] += 1
            return 0.0
        value = float(value)
        if not math.isfinite(value):
            self.stats["non_finite"] += 1
            return 0.0
        return min(max(value, self.low), self.high)

    def answer_text(self, completion: str) -> str:
        """The answer part of a completion (see `split_think`), capped to its last part."""
        return split_think(completion, self.think_tags).answer[-MAX_ANSWER_CHARS:]

    @abstractmethod
    def score(self, completion: str, gold: Any) -> float:
        """Score one completion against its gold answer; may raise, `safe_score` guards it."""
