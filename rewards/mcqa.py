"""Multiple-choice reward: 1.0 when the answer's letter is the gold letter, else 0.0."""

from __future__ import annotations

import re
from typing import Any

from secreason.rewards import Reward
from secreason.rewards.extraction import MCQ_REWARD_PATTERNS, extract, mcq_marker_letters

_GOLD_LETTER = re.compile(r"^\W*([A-Za-z])\W*$")


def gold_letter(gold: Any) -> str | None:
    """"B", "b", " (B) " → "B"; anything that is not one letter → None."""
    m = _GOLD_LETTER.match(str(gold))
    return m.group(1).upper() if m else None


class MCQAReward(Reward):
    """The letter is read leniently from the answer text (after the think block) with the
    report's MCQ patterns plus decorated forms: `Answer: B`, `Answer: (b)`, `Answer: **B**`,
    a bare `B`, `(B)`, `**B**`, `The answer is B`, `option B`.

    Scores 0 when:
    - the answer text puts two or more different letters in answer positions (letter
      spraying: `Answer: A, B`, `Answer: A` then `Answer: C`, `(A) or (B)`);
    - the letter appears only inside the think block (the answer text is read alone);
    - no letter can be read, or the gold is not a single letter (counted in stats).
    """

    def score(self, completion: str, gold: Any) -> float:
        want = gold_letter(gold)
        if want is None:
            self.stats["bad_gold"] += 1
            return 0.0
        answer = self.answer_text(completion)
        if len(mcq_marker_letters(answer)) > 1:
            self.stats["sprayed"] += 1
            return 0.0
        got = extract(answer, MCQ_REWARD_PATTERNS)
        return 1.0 if got is not None and got.value == want else 0.0
