"""secreason.rewards.extraction: think splitting, the report's (FAITH) ordered patterns, CTIBench's rules."""

import pytest
from cvss import CVSS3

from secreason.rewards.extraction import (
    CVSS_PATTERNS,
    CWE_PATTERNS,
    MCQ_PATTERNS,
    MCQ_REWARD_PATTERNS,
    SINGLE,
    UNIQUE,
    all_values,
    ctibench_ate,
    ctibench_ate_gold,
    ctibench_mcq,
    ctibench_mcq_valid,
    ctibench_rcm,
    ctibench_rcm_valid,
    ctibench_vsp,
    ctibench_vsp_vector,
    cwe_number,
    extract,
    extract_attack_ids,
    extract_final_number,
    final_answer_text,
    mcq_marker_letters,
    split_ids,
    split_think,
)

VECTOR = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"


# --- split_think ---------------------------------------------------------------------------
def test_split_closed_block():
    s = split_think("<think>weigh A against B</think>\nAnswer: B")
    assert (s.think, s.answer, s.closed, s.opened, s.prefix) == ("weigh A against B", "\nAnswer: B", True, True, "")


def test_split_reads_after_the_first_close_not_the_last():
    # "<think>No</think>filler</think>B": reading after the last close would give "B" and hide the
    # malformed tags; after the first close the answer keeps them.
    s = split_think("<think>No</think>filler</think>B")
    assert s.think == "No"
    assert s.answer == "filler</think>B"


def test_split_close_without_open_is_a_think_started_by_the_template():
    s = split_think("the input reaches the query</think>Answer: C")
    assert (s.think, s.answer, s.closed, s.opened) == ("the input reaches the query", "Answer: C", True, False)


def test_split_unclosed_falls_back_to_the_last_nonempty_line():
    s = split_think("<think>first I check A\nAnswer: D\n\n  \n")
    assert s.think == "first I check A\nAnswer: D\n\n  \n"
    assert s.answer == "Answer: D"
    assert (s.closed, s.opened) == (False, True)


def test_split_without_any_tag_is_the_whole_text():
    s = split_think("A is wrong, so Answer: B")
    assert (s.think, s.answer, s.closed, s.opened) == (None, "A is wrong, so Answer: B", False, False)


def test_split_keeps_text_before_the_open_tag_as_prefix():
    s = split_think("Sure! <think>r</think>B")
    assert (s.prefix, s.think, s.answer) == ("Sure! ", "r", "B")


def test_split_custom_tags_and_no_tags():
    s = split_think("<reasoning>r</reasoning>B<think>x</think>", ("<reasoning>", "</reasoning>"))
    assert (s.think, s.answer) == ("r", "B<think>x</think>")
    assert split_think("<think>r</think>B", None).answer == "<think>r</think>B"


# --- FAITH ordered patterns ----------------------------------------------------------------
def test_pattern_labels_follow_protocols_md():
    assert [p.proper for p in MCQ_PATTERNS] == [True, False, False, False, False]
    assert [p.agreement for p in MCQ_PATTERNS[:4]] == [UNIQUE, UNIQUE, SINGLE, SINGLE]
    assert [(p.proper, p.agreement) for p in CWE_PATTERNS] == [(True, UNIQUE), (False, UNIQUE)]
    assert [(p.proper, p.agreement) for p in CVSS_PATTERNS] == [(True, UNIQUE), (False, UNIQUE)]


@pytest.mark.parametrize("text, value, proper", [
    ("Answer: B", "B", True),
    ("Answer: (b)", "B", True),                 # pattern 1 is case-insensitive and allows "("
    ("answer:C\nanswer: C", "C", True),         # every match agrees
    ("Answer: A\nAnswer: C", None, None),       # pattern 1 disagrees; nothing else matches
    ("The answer is C.", "C", False),
    ("the answer is **D**", "D", False),
    ("I pick (D).", "D", False),                # exactly one "(X)"
    ("(A) or (B)", None, None),                 # two "(X)": pattern 3 yields nothing
    ("I go with option B", "B", False),
    ("b", "B", False),                          # bare letter, any case
    ("**B**", "B", False),
    ("Answer: **B**", None, None),              # FAITH misses the decorated form ...
    ("no letter here", None, None),
])
def test_mcq_patterns(text, value, proper):
    got = extract(text, MCQ_PATTERNS)
    assert (got.value, got.proper) == (value, proper) if value else got is None


def test_reward_patterns_add_the_decorated_forms():
    # ... which the training reward reads leniently.
    assert extract("Answer: **B**", MCQ_REWARD_PATTERNS).value == "B"
    assert extract("Answer: [c]", MCQ_REWARD_PATTERNS).value == "C"


@pytest.mark.parametrize("text, value, proper", [
    ("The flaw maps to\nCWE-79", "CWE-79", True),
    ("cwe-79", "CWE-79", True),
    ("CWE-79 as said: CWE-79", "CWE-79", True),
    ("CWE ID: 79", "CWE-79", False),            # pattern 2 prefixes "CWE-"
    ("id: 22", "CWE-22", False),
    ("CWE-79 or CWE-89", None, None),           # pattern 1 disagrees, pattern 2 has no match
    ("cross-site scripting", None, None),
])
def test_cwe_patterns(text, value, proper):
    got = extract(text, CWE_PATTERNS)
    assert (got.value, got.proper) == (value, proper) if value else got is None


def test_cwe_all_values_sees_ids_of_both_patterns():
    # Pattern 1 alone would give CWE-79; all_values exposes the second id for the reward.
    assert sorted(all_values("CWE-79, also ID: 89", CWE_PATTERNS)) == ["CWE-79", "CWE-89"]


@pytest.mark.parametrize("text, value, proper", [
    (VECTOR, VECTOR, True),
    (VECTOR.lower(), VECTOR, True),             # upper-cased
    ("vector /AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", False),
    (VECTOR + " or CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", None, None),
    ("AV:N only", None, None),
])
def test_cvss_patterns(text, value, proper):
    got = extract(text, CVSS_PATTERNS)
    assert (got.value, got.proper) == (value, proper) if value else got is None


# --- reward helpers ------------------------------------------------------------------------
@pytest.mark.parametrize("text, letters", [
    ("Answer: B", {"B"}),
    ("Answer: A, B", {"A", "B"}),
    ("Answer: A or (c)", {"A", "C"}),
    ("Answer: **B** / D", {"B", "D"}),
    ("Answer: A\nAnswer: C", {"A", "C"}),
    ("Answer: B and a buffer overflow explains it", {"B"}),   # lowercase "a" is not a list
    ("Answer: B. A buffer overflow", {"B"}),                   # no list separator
    ("Answer: B, as (C) is about XSS", {"B", "C"}),
    ("The answer is B", {"B"}),
    ("plain prose", set()),
])
def test_mcq_marker_letters(text, letters):
    assert mcq_marker_letters(text) == letters


def test_attack_ids_after_the_answer_marker():
    got = extract_attack_ids("T1003 is tempting.\nAnswer: T1059.001, t1566,T1404")
    assert (got.value, got.proper) == ("T1059.001, T1566, T1404", True)


def test_attack_ids_fall_back_to_the_last_line():
    got = extract_attack_ids("reasoning about T1003\nT1071, T1573\n")
    assert (got.value, got.proper) == ("T1071, T1573", False)
    assert extract_attack_ids("Answer: none") is None
    assert split_ids(["T1059", "t1566.001"]) == ["T1059", "T1566.001"]
    assert split_ids(None) == []


@pytest.mark.parametrize("text, number", [
    ("Answer: 1,234.5 dollars", "1234.5"),
    ("so \\boxed{42}, not 7", "42"),           # no marker: the boxed value beats the last number
    ("3 apples and 5 pears", "5"),
    ("Answer: -0.25", "-0.25"),
    ("no digits", None),
])
def test_extract_final_number(text, number):
    assert extract_final_number(text) == number


def test_final_answer_text():
    assert final_answer_text("work\nAnswer:  $\\frac{1}{2}$ \n") == "$\\frac{1}{2}$"
    assert final_answer_text(" 12 ") == "12"


@pytest.mark.parametrize("value, number", [
    ("CWE-79", 79), ("cwe-079", 79), (" 79 ", 79), (79, 79),
    ("CWE-" + "9" * 5000, None), ("CWE-79x", None), (True, None), ("²", None),
])
def test_cwe_number(value, number):
    assert cwe_number(value) == number


# --- CTIBench upstream rules (SCORING.md) --------------------------------------------------
@pytest.mark.parametrize("text, pred, valid", [
    ("reasoning\nA) Phishing", "A", True),     # starts with "A)"
    ("so the answer is C", "C", True),          # ends with a letter
    ("The answer is **B**", "B", True),         # ends with "**": third char from the end
    ("x\nD\n", "D", True),                      # empty last line: the line before
    ("I am not sure", "I am not sure", False),  # no rule: raw text, invalid
    ("answer: b", "answer: b", False),          # rules are case-sensitive
])
def test_ctibench_mcq(text, pred, valid):
    assert ctibench_mcq(text) == pred
    assert ctibench_mcq_valid(pred) is valid


def test_ctibench_mcq_refusal_is_valid():
    assert ctibench_mcq_valid("X") and ctibench_mcq_valid("x")


def test_ctibench_rcm_takes_the_last_case_sensitive_match():
    assert ctibench_rcm("cwe-79, CWE-89, then CWE-20") == "CWE-20"
    assert ctibench_rcm("cwe-79") == "cwe-79" and not ctibench_rcm_valid("Error")
    assert ctibench_rcm_valid("cwe-79")  # validity upper-cases, as upstream


def test_ctibench_vsp_strips_the_prefix_and_re_adds_3_0():
    pred = ctibench_vsp("Vector: " + VECTOR)
    assert pred == "AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
    assert CVSS3(ctibench_vsp_vector(pred)).scores()[0] == CVSS3(VECTOR).scores()[0]  # both 9.8
    assert ctibench_vsp("AC:L/AV:N/PR:N/UI:N/S:U/C:H/I:H/A:H") == "AC:L/AV:N/PR:N/UI:N/S:U/C:H/I:H/A:H"  # order: raw


def test_ctibench_ate_reads_the_last_line_and_strips_subtechniques():
    assert ctibench_ate("T1003 first\nT1059.001, T1566\n") == {"T1059", "T1566"}
    assert ctibench_ate_gold("T1071, t1573 ,") == {"T1071", "T1573"}
