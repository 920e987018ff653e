"""Math reward: `math-verify` equivalence of the final answer with the gold, under a time limit.

(Named math_answer, not math, so that it cannot shadow the standard library.)

Time limit: math-verify's own timeouts use `signal.alarm` with whole seconds and refuse to run
outside the main thread, so they are switched off here (`parsing_timeout=None`,
`timeout_seconds=None`) and the whole parse+verify of one completion runs under
`secreason.rewards.timeout.run_with_time_limit(timeout_s)` instead (sub-second, works in threads).
Measured: `9^9^9`, `10^{10^{10}}`, `99999999!` each run for more than 20 s unguarded and are
cut at the limit. Such answers are also refused up front (`explosive`), because in a worker
thread an overrunning computation is abandoned but keeps burning a core.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from secreason.rewards import Reward
from secreason.rewards.extraction import final_answer_text

# math-verify only parses the final answer; a longer tail is not an answer.
MAX_MATH_CHARS = 1_000

_POWER = re.compile(r"\^|\*\*")
_HUGE_OPERAND = re.compile(
    r"(?:\^|\*\*)[\s{(]*-?\d{4,}"  # an exponent of 4+ digits
    r"|(?<!\d)\d{4,}\s*!"  # a factorial of a 4+ digit number (run starts only: linear)
    r"|\\(?:binom|dbinom|tbinom)\s*\{\s*\d{4,}",  # a binomial of a 4+ digit number
    re.ASCII,
)


def explosive(text: str) -> bool:
    """True for answers whose evaluation can take minutes: power towers (two or more power
    operators) and huge exponents, factorials or binomials. A gold answer never needs them."""
    return len(_POWER.findall(text)) >= 2 or _HUGE_OPERAND.search(text) is not None


def _silence_math_verify_timeout_warning() -> None:
    # math-verify warns once that its timeouts are off; ours replace them (module docstring).
    import math_verify.grader
    import math_verify.parser

    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True


@lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple:
    """The gold parsed once ("12", "\\frac{1}{2}", "$x+1$"); a bare LaTeX gold is retried
    inside `$…$`. Empty when math-verify cannot parse it."""
    from math_verify import parse

    parsed = parse(gold, parsing_timeout=None)
    if not parsed:
        parsed = parse(f"${gold}$", parsing_timeout=None)
    return tuple(parsed)


class MathReward(Reward):
    """1.0 when math-verify finds the final answer (`Answer: 12`, a `\\boxed{12}`, …)
    equivalent to the gold, else 0.0. The text after the last `Answer:` marker is parsed,
    else the whole answer text (math-verify then finds `\\boxed{}` or "final answer is")."""

    def __init__(self, timeout_s: float | None = 2.0, **kwargs: Any):
        super().__init__(timeout_s=timeout_s, **kwargs)
        _silence_math_verify_timeout_warning()
        # Imports and grammar set-up (about 1 s) happen here, not inside the first time limit.
        self.score("Answer: $\\frac{1}{2}$", "0.5")

    def score(self, completion: str, gold: Any) -> float:
        from math_verify import parse, verify

        gold_parsed = parse_gold(str(gold).strip())
        if not gold_parsed:
            self.stats["bad_gold"] += 1
            return 0.0
        target = final_answer_text(self.answer_text(completion))[-MAX_MATH_CHARS:]
        if not target:
            return 0.0
        if explosive(target):
            self.stats["explosive"] += 1
            return 0.0
        pred = parse(target, parsing_timeout=None)
        if not pred:
            return 0.0
        return 1.0 if verify(list(gold_parsed), pred, timeout_seconds=None) else 0.0
