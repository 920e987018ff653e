"""The format penalty: the report's "boolean function" on the reasoning, made explicit.

The report adds a penalty inside the reward when the reasoning tags are missing or the reasoning
is trivial (too short, repetitive); it gives neither the size nor the thresholds, so each
criterion here is a named, configurable field, and `reasons()` says which ones fired.

A penalty object is `fn(completions, prompts=None, **columns) -> list[float]`: 0.0 for a
well-formed completion, `penalty` (negative) otherwise. The training reward is
correctness + penalty, so with penalty -1 a format hack with a right answer (1 - 1 = 0) always
scores below an honest right answer (1).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from functools import lru_cache
from typing import Any, Sequence

from secreason.errors import ConfigError
from secreason.rewards import aligned, as_text, as_think_tags
from secreason.rewards.extraction import DEFAULT_THINK_TAGS, ThinkSplit, split_think
from secreason.rewards.timeout import RewardTimeout, run_with_time_limit

log = logging.getLogger(__name__)
_WORD = re.compile(r"\w+")
MAX_THINK_CHARS = 20_000
# How `min_tokens` counts. "word_or_symbol" (a word or one punctuation mark, close to what a
# tokenizer sees) is the default because whitespace tokens fail the project's own synthetic
# reference traces: " 3+4=7. 7+5=12." is 2 whitespace tokens but 12 word-or-symbol tokens
# (measured on 1000 synthetic SFT traces: whitespace flags 100% of math and 42% of mcqa traces,
# word_or_symbol 0% of those and 1.5% of attack ones such as " Phishing is T1566.").
TOKEN_PATTERNS = {"word_or_symbol": re.compile(r"\w+|[^\w\s]"), "whitespace": re.compile(r"\S+")}


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repeat_fraction(text: str, n: int = 3) -> float:
    """1 - distinct/total word n-grams: 0 for text that never repeats itself, near 1 for
    filler ("step step step …"); 0 when the text has fewer than two n-grams."""
    grams = word_ngrams(text, n)
    return 1.0 - len(set(grams)) / len(grams) if len(grams) >= 2 else 0.0


def prompt_overlap(text: str, prompt: str, n: int = 3) -> float:
    """Fraction of the text's word n-grams that also occur in the prompt (a copied prompt → 1)."""
    grams = word_ngrams(text, n)
    if not grams:
        return 0.0
    prompt_grams = _prompt_ngrams(prompt, n)
    return sum(g in prompt_grams for g in grams) / len(grams)


@lru_cache(maxsize=256)
def _prompt_ngrams(prompt: str, n: int) -> frozenset[tuple[str, ...]]:
    # GRPO scores n completions of each prompt in a row, and ATE prompts run to 20k characters.
    return frozenset(word_ngrams(prompt, n))


def _last_user_text(prompt: Any) -> str | None:
    """The last user message's text of a conversational prompt (TRL's form), else None."""
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
                return message["content"]
    return None


class NoPenalty:
    """No format penalty: the report's naive GRPO, the arm where the hack appears."""

    penalty = 0.0
    REASONS: tuple[str, ...] = ()

    def __call__(self, completions: Sequence[str], prompts: Sequence[str] | None = None,
                 **columns: Any) -> list[float]:
        return [0.0] * len(completions)

    def assess(self, completions: Sequence[str], prompts: Sequence[str] | None = None,
               **columns: Any) -> list[list[str]]:
        return [[] for _ in completions]

    def reasons(self, completion: str, prompt: str | None = None) -> list[str]:
        return []


class RequireThink:
    """Penalise a completion whose think block is missing, unclosed or empty.

    require_open_tag: when the chat template's generation prompt already ends with the opening
    tag (Foundation-Sec-8B-Reasoning's does), completions start inside the think block and only
    close it; set it False there, or every completion is penalised.
    """

    # Every reason `safe_reasons` can give: each is logged by name (as 0 when it did not fire).
    REASONS: tuple[str, ...] = ("not_text", "no_think", "unclosed_think", "missing_open_tag", "empty_think")

    def __init__(self, penalty: float = -1.0,
                 think_tags: Sequence[str] | None = DEFAULT_THINK_TAGS,
                 require_open_tag: bool = True, timeout_s: float | None = 1.0):
        if not penalty <= 0.0:
            raise ConfigError(f"penalty must be <= 0, got {penalty}")
        tags = as_think_tags(think_tags)
        if tags is None:
            raise ConfigError("a think-format penalty needs think_tags")
        self.penalty = float(penalty)
        self.think_tags = tags
        self.require_open_tag = bool(require_open_tag)
        self.timeout_s = timeout_s
        self.stats: Counter[str] = Counter()

    def __call__(self, completions: Sequence[str], prompts: Sequence[str] | None = None,
                 **columns: Any) -> list[float]:
        return [self.penalty if found else 0.0
                for found in self.assess(completions, prompts, **columns)]

    def assess(self, completions: Sequence[str], prompts: Sequence[str] | None = None,
               **columns: Any) -> list[list[str]]:
        """The reasons for each completion ([] = well-formed). `prompts`, else a `prompt`
        column, else no prompt (the prompt-copy check is then skipped)."""
        if prompts is None:
            prompts = columns.get("prompt")
        prompt_list = aligned(prompts, len(completions), "prompts")
        return [self.safe_reasons(c, p) for c, p in zip(completions, prompt_list)]

    def safe_reasons(self, completion: Any, prompt: Any = None) -> list[str]:
        """`reasons` that never raises: a non-string completion is "not_text"; a check that
        fails or overruns is counted in `stats` (timeouts, errors) and does not penalise (it is
        our bug, not the model's)."""
        completion = as_text(completion)
        if not isinstance(completion, str):
            return ["not_text"]
        prompt_text = prompt if isinstance(prompt, str) else _last_user_text(prompt)
        try:
            found = run_with_time_limit(lambda: self.reasons(completion, prompt_text), self.timeout_s)
        except RewardTimeout:
            self.stats["timeouts"] += 1
            return []
        except Exception:
            if not self.stats["errors"]:
                log.exception("%s failed on one completion; not penalising it", type(self).__name__)
            self.stats["errors"] += 1
            return []
        return found  # reasons are the result, not stats: RewardResult.metrics logs them per batch

    def reasons(self, completion: str, prompt: str | None = None) -> list[str]:
        return self._tag_reasons(split_think(completion, self.think_tags))

    def _tag_reasons(self, split: ThinkSplit) -> list[str]:
        if split.think is None:
            return ["no_think"]
        found = []
        if not split.closed:
            found.append("unclosed_think")
        if split.closed and not split.opened and self.require_open_tag:
            found.append("missing_open_tag")
        if not split.think.strip():
            found.append("empty_think")
        return found


class ThinkQuality(RequireThink):
    """RequireThink, plus trivial or misplaced reasoning:

    - short_think: fewer than `min_tokens` tokens, counted as `token_unit` says (the report's
      `<think> No</think>` has 1);
    - copies_prompt: more than `max_prompt_overlap` of the think's word `ngram`s occur in the
      prompt (needs the prompt);
    - repetitive_think: `repeat_fraction` of its word `ngram`s above `max_repeat_frac`;
    - no_answer_after_think: nothing after the closing tag (`require_answer_after_think`);
    - text_before_think / tags_in_answer (`strict_layout`): text before the opening tag, or
      think tags inside the answer (a second think block, stray tags) — the answer is not
      where the format puts it.
    """

    REASONS = RequireThink.REASONS + ("short_think", "copies_prompt", "repetitive_think", "no_answer_after_think",
                                      "text_before_think", "tags_in_answer")

    def __init__(self, penalty: float = -1.0,
                 think_tags: Sequence[str] | None = DEFAULT_THINK_TAGS,
                 require_open_tag: bool = True, min_tokens: int = 5,
                 max_prompt_overlap: float = 0.8, max_repeat_frac: float = 0.5, ngram: int = 3,
                 require_answer_after_think: bool = True, strict_layout: bool = True,
                 token_unit: str = "word_or_symbol", timeout_s: float | None = 1.0):
        super().__init__(penalty, think_tags, require_open_tag, timeout_s)
        if ngram < 1 or min_tokens < 0:
            raise ConfigError("ngram must be >= 1 and min_tokens >= 0")
        if token_unit not in TOKEN_PATTERNS:
            raise ConfigError(f"token_unit must be one of {sorted(TOKEN_PATTERNS)}, got {token_unit!r}")
        self.token_pattern = TOKEN_PATTERNS[token_unit]
        self.min_tokens = int(min_tokens)
        self.max_prompt_overlap = float(max_prompt_overlap)
        self.max_repeat_frac = float(max_repeat_frac)
        self.ngram = int(ngram)
        self.require_answer_after_think = bool(require_answer_after_think)
        self.strict_layout = bool(strict_layout)

    def reasons(self, completion: str, prompt: str | None = None) -> list[str]:
        split = split_think(completion, self.think_tags)
        found = self._tag_reasons(split)
        if split.think is None:
            return found
        # n-gram statistics of a long think are read from its first part: enough to see
        # filler or a copied prompt, and it bounds the cost per completion.
        think = split.think[:MAX_THINK_CHARS]
        if self._count_tokens(think) < self.min_tokens and "empty_think" not in found:
            found.append("short_think")
        if prompt and prompt_overlap(think, prompt, self.ngram) > self.max_prompt_overlap:
            found.append("copies_prompt")
        if repeat_fraction(think, self.ngram) > self.max_repeat_frac:
            found.append("repetitive_think")
        if split.closed and self.require_answer_after_think and not split.answer.strip():
            found.append("no_answer_after_think")
        if self.strict_layout:
            if split.prefix.strip():
                found.append("text_before_think")
            if split.closed and any(tag in split.answer for tag in self.think_tags):
                found.append("tags_in_answer")
        return found

    def _count_tokens(self, text: str) -> int:
        count = 0
        for _ in self.token_pattern.finditer(text):
            count += 1
            if count >= self.min_tokens:  # enough: no need to count a long think to the end
                break
        return count
