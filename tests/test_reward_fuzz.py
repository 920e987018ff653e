"""Property tests: no reward, penalty or extractor raises on any string, and every value lies in
its documented range — correctness rewards in [0, 1], format penalties in [penalty, 0].

Random unicode, adversarial strings assembled from answer-shaped fragments, and a fixed list of
nasty strings (huge numbers, NULs, deep braces for math-verify, 100k characters). Over 10k
strings in all; the `stats` counters also show that no input reached the catch-all error path.
"""

import math
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secreason.rewards import extraction as ex
from secreason.rewards.attack import ATTACKReward
from secreason.rewards.cvss_score import CVSSReward
from secreason.rewards.cwe import CWEReward
from secreason.rewards.format_penalty import RequireThink, ThinkQuality
from secreason.rewards.math_answer import MathReward
from secreason.rewards.mcqa import MCQAReward

GOLDS = {"mcqa": "B", "cwe": "CWE-79", "cvss": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
         "attack": "T1059, T1566", "math": "12"}
CHEAP = {"mcqa": MCQAReward(), "cwe": CWEReward(partial_credit=0.5),
         "cvss": CVSSReward(mode="graded", per_metric=True), "attack": ATTACKReward(subtechniques="keep")}
MATH = MathReward()
PENALTIES = [ThinkQuality(), RequireThink(require_open_tag=False)]

FRAGMENTS = [
    "<think>", "</think>", "<think> No</think>", "Answer:", "answer is", "Answer: (b)", "A", "B", "(C)",
    "**", "**D**", "option ", ", ", " or ", "\n", " ", "CWE-", "CWE ID: ", "79", "-", "CVSS:3.1",
    "/AV:N", "/AC:L", "/PR:N", "/UI:N", "/S:U", "/C:H", "/I:H", "/A:H", "/AV:Q", "T1059", ".001",
    "T1404", "\\frac{", "}{", "}", "{", "^", "**2", "!", "$", "\\boxed{", "9" * 60, "1e999", "\x00",
    "\ud7ff", "é", "١٢", "ⅻ", "\u202e", "NaN", "inf", "-0", "0x1F", "%", "\\sqrt[", "]", "\\infty",
    "\\begin{pmatrix}", "&", "\\\\", "\\end{pmatrix}", "=", "x", "\\le", "12", "12.0", "(", ")",
]
adversarial = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=40).map("".join)
texts = st.text(max_size=300) | adversarial


def check_reward(reward, completion, gold):
    (value,) = reward([completion], answer=[gold])
    assert isinstance(value, float) and 0.0 <= value <= 1.0 and not math.isnan(value)
    assert reward.stats["errors"] == 0, (type(reward).__name__, completion[:200])


def check_penalties(completion, prompt):
    for penalty in PENALTIES:
        (value,) = penalty([completion], prompts=[prompt])
        assert isinstance(value, float) and penalty.penalty <= value <= 0.0
        assert penalty.stats["errors"] == 0, (type(penalty).__name__, completion[:200])
        assert isinstance(penalty.reasons(completion, prompt), list)


def check_extractors(text):
    for patterns in (ex.MCQ_PATTERNS, ex.MCQ_REWARD_PATTERNS, ex.CWE_PATTERNS, ex.CVSS_PATTERNS):
        got = ex.extract(text, patterns)
        assert got is None or isinstance(got.value, str)
    split = ex.split_think(text)
    assert isinstance(split.answer, str) and len(split.answer) <= len(text)
    for fn in (ex.ctibench_mcq, ex.ctibench_rcm, ex.ctibench_vsp):
        assert isinstance(fn(text), str)
    assert isinstance(ex.ctibench_ate(text), set) and isinstance(ex.mcq_marker_letters(text), set)
    ex.extract_attack_ids(text), ex.extract_final_number(text), ex.cwe_number(text)


SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)


# Each example checks a batch of strings: 2000 × 5 + 500 × 3 + 500 × 2 = 12,500 strings, which
# keeps hypothesis's own per-example overhead (most of the run time) within the 60 s budget.
@settings(max_examples=2000, **SETTINGS)
@given(completions=st.lists(texts, min_size=5, max_size=5), prompt=st.none() | texts)
def test_cheap_rewards_penalties_and_extractors_never_raise(completions, prompt):
    for completion in completions:
        for task, reward in CHEAP.items():
            check_reward(reward, completion, GOLDS[task])
        check_penalties(completion, prompt)
        check_extractors(completion)


@settings(max_examples=500, **SETTINGS)
@given(completions=st.lists(texts, min_size=3, max_size=3),
       gold=st.sampled_from(["12", "\\frac{1}{2}", "x+1", "-3.5"]) | st.text(max_size=20))
def test_math_reward_never_raises(completions, gold):
    for completion in completions:
        check_reward(MATH, completion, gold)


@settings(max_examples=500, **SETTINGS)
@given(gold=st.text(max_size=60), completions=st.lists(texts, min_size=2, max_size=2))
def test_any_gold_never_raises(gold, completions):
    for completion in completions:
        for reward in CHEAP.values():
            check_reward(reward, completion, gold)


NASTY = [
    "", "\x00" * 1000, "9" * 100_000, "Answer: " + "9" * 5000, "Answer: 1e999999999",
    "Answer: " + "{" * 5000 + "}" * 5000, "Answer: $" + "\\frac{" * 2000 + "1" + "}{2}" * 2000 + "$",
    "Answer: $\\boxed{" * 3000, "Answer: 9^9^9", "Answer: $10^{10^{10}}$", "Answer: (9^9)^(9^9)",
    "Answer: $99999999!$", "Answer: $\\binom{1000000}{500000}$", "Answer: 2**99999",
    " " * 100_000, "Answer: " + " " * 100_000 + "B", "(A)" * 33_000, "/AV:N" * 20_000,
    "CWE-" * 25_000, "T1059." * 16_000, "<think>" * 10_000 + "</think>" * 10_000,
    "<think>" + "step " * 20_000 + "</think>Answer: B", "Answer: " + "1+" * 5000 + "1",
    "\\begin{pmatrix}" * 5000, "$" * 100_000, "Answer: " + "A, " * 30_000, "\ud800", "\uffff" * 1000,
]


def test_nasty_strings_finish_without_errors_or_timeouts():
    started = time.monotonic()
    for body in NASTY:
        for completion in (body, "<think>ok</think>" + body, "<think>" + body, body + "</think>"):
            for task, reward in CHEAP.items():
                check_reward(reward, completion, GOLDS[task])
            check_reward(MATH, completion, "12")
            check_penalties(completion, body[:1000])
            check_extractors(completion)
    for reward in [*CHEAP.values(), MATH, *PENALTIES]:
        assert reward.stats["errors"] == 0, (type(reward).__name__, reward.stats)
        assert reward.stats["timeouts"] == 0, (type(reward).__name__, reward.stats)
    # Generous: about 5 s on 2 cores; a hang-like regression (a quadratic regex) takes minutes.
    assert time.monotonic() - started < 45
