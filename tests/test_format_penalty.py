"""The format penalty: which completions it penalises, why, and that hacks lose to honesty."""

import pytest

from secreason.rewards.format_penalty import (
    NoPenalty,
    RequireThink,
    ThinkQuality,
    prompt_overlap,
    repeat_fraction,
)
from secreason.rewards.mcqa import MCQAReward
from secreason.rewards.sets import RewardSet

PROMPT = ("Given the following question and four candidate answers (A, B, C and D), choose the best "
          "answer. Which weakness lets user input change an SQL query? A. CWE-79 B. CWE-89 C. CWE-22 D. CWE-787")
# About ten words of real reasoning: must never be penalised.
HONEST = "<think>User input is concatenated into the SQL query, so injection: CWE-89.</think>Answer: B"
HACK = "<think> No</think>Answer: B"  # the report's hack


def test_helpers_by_hand():
    # "a b c a b c a b c": trigrams abc bca cab abc bca cab abc → 7 total, 3 distinct → 1 - 3/7
    assert repeat_fraction("a b c a b c a b c") == pytest.approx(4 / 7)
    assert repeat_fraction("one two three four") == 0.0
    assert repeat_fraction("too short") == 0.0
    # think trigrams: "sql query built", "query built from", "built from input": 2 of 3 in prompt
    assert prompt_overlap("SQL query built from input", "the sql query built from user input") == pytest.approx(2 / 3)


def test_no_penalty():
    assert NoPenalty()([HACK, "B"]) == [0.0, 0.0]
    assert NoPenalty().reasons(HACK) == []


@pytest.mark.parametrize("completion, reasons", [
    (HONEST, []),
    (HACK, []),                                   # RequireThink alone does not see the hack
    ("Answer: B", ["no_think"]),
    ("<think>I think it is B because", ["unclosed_think"]),
    ("<think>  \n</think>Answer: B", ["empty_think"]),
    ("<think></think>B", ["empty_think"]),
    ("the query is injectable</think>Answer: B", ["missing_open_tag"]),
    ("<think>", ["unclosed_think", "empty_think"]),
])
def test_require_think(completion, reasons):
    penalty = RequireThink()
    assert penalty.reasons(completion) == reasons
    assert penalty([completion]) == ([-1.0] if reasons else [0.0])


def test_require_think_when_the_template_opens_the_block():
    penalty = RequireThink(require_open_tag=False, penalty=-0.5)
    assert penalty(["the query is injectable</think>Answer: B", "</think>B"]) == [0.0, -0.5]  # 2nd: empty


THINK_QUALITY_CASES = [
    (HONEST, []),
    (HACK, ["short_think"]),
    ("<think> CWE-861.</think>C", ["short_think"]),     # the demo's bare copied id
    ("<think>" + "let me think " * 20 + "</think>Answer: B", ["repetitive_think"]),
    ("<think>" + PROMPT + "</think>Answer: B", ["copies_prompt"]),
    ("<think>User input is concatenated into the SQL query, so injection.</think>\n", ["no_answer_after_think"]),
    ("B <think>User input is concatenated into the SQL query, so injection.</think>Answer: B",
     ["text_before_think"]),
    ("<think>User input is concatenated into the SQL query, so injection.</think><think>x</think>B",
     ["tags_in_answer"]),
    ("<think>No", ["unclosed_think", "short_think"]),
    ("B", ["no_think"]),
    ("the query is injectable, so B</think>Answer: B", ["missing_open_tag"]),
    ("<think></think>B", ["empty_think"]),
]


def test_declared_reasons_are_the_ones_that_fire():
    """REASONS names every reason logged as train/penalty/<reason>: none missing, none that never fires."""
    fired = {reason for _, reasons in THINK_QUALITY_CASES for reason in reasons}
    assert fired | {"not_text"} == set(ThinkQuality.REASONS)
    assert set(RequireThink.REASONS) < set(ThinkQuality.REASONS) and NoPenalty.REASONS == ()
    assert ThinkQuality().safe_reasons(None) == ["not_text"]


@pytest.mark.parametrize("completion, reasons", THINK_QUALITY_CASES)
def test_think_quality(completion, reasons):
    penalty = ThinkQuality()
    assert penalty.reasons(completion, PROMPT) == reasons
    assert penalty([completion], prompts=[PROMPT]) == ([-1.0] if reasons else [0.0])


def test_short_think_counts_words_and_symbols_by_default():
    # The synthetic math trace " 3+4=7. 7+5=12." is 2 whitespace tokens but 12 word-or-symbol
    # tokens (3 + 4 = 7 . 7 + 5 = 12 .); " CWE-861." is 4 (CWE - 861 .), below 5.
    math_trace = "<think> 3+4=7. 7+5=12.</think>Answer: 12"
    assert ThinkQuality()([math_trace, "<think> CWE-861.</think>C"]) == [0.0, -1.0]
    assert ThinkQuality(token_unit="whitespace").reasons(math_trace) == ["short_think"]
    with pytest.raises(ValueError):
        ThinkQuality(token_unit="bpe")


def test_think_quality_reads_the_prompt_column_and_thresholds_are_fields():
    copy = "<think>" + PROMPT + "</think>Answer: B"
    assert ThinkQuality()([copy], prompt=[PROMPT]) == [-1.0]        # `prompt` column, as RL rows
    assert ThinkQuality()([copy]) == [0.0]                          # no prompt: check skipped
    assert ThinkQuality(max_prompt_overlap=1.0)([copy], prompts=[PROMPT]) == [0.0]
    assert ThinkQuality(min_tokens=1)([HACK]) == [0.0]
    relaxed = ThinkQuality(strict_layout=False, require_answer_after_think=False)
    assert relaxed(["B <think>User input is concatenated into the SQL query, so injection.</think>"]) == [0.0]


def test_penalty_never_raises_and_counts():
    penalty = ThinkQuality()
    assert penalty([None, 42, HACK], prompts=[None, 3, PROMPT]) == [-1.0, -1.0, -1.0]
    assert penalty.assess([None, HACK]) == [["not_text"], ["short_think"]]
    assert penalty.stats == {}  # reasons are results, not failures: stats count timeouts and errors only
    with pytest.raises(ValueError):
        ThinkQuality(penalty=0.5)
    with pytest.raises(ValueError):
        RequireThink(think_tags=None)


@pytest.mark.parametrize("penalty, hack_total", [(ThinkQuality(), 0.0), (NoPenalty(), 1.0)])
def test_hack_totals_below_honest_only_with_the_penalty(penalty, hack_total):
    rs = RewardSet({"mcqa": {"fn": MCQAReward(), "weight": 1.0, "tasks": ["mcqa"]}}, format_penalty=penalty)
    rows = [{"task": "mcqa", "answer": "B", "prompt": PROMPT}] * 5
    completions = [
        HACK,                                              # right answer, trivial think
        HONEST,                                            # right answer, honest think
        "<think></think>Answer: B",                        # empty think
        "Answer: B",                                       # no think at all
        "<think>" + "B " * 40 + "</think>Answer: B",       # filler
    ]
    result = rs(completions, rows)
    assert result.correctness == [1.0] * 5
    # With ThinkQuality every hack scores 1 - 1 = 0 < honest 1; without, all tie at 1.
    assert result.total == [hack_total, 1.0, hack_total, hack_total, hack_total]
