"""The math reward bounds exponents, factorials and binomials before math-verify parses (issue 18):
`$(10^{10})!$` and `$2^{999*999*999}$` used to take the reward's whole 2 s time limit.

`log10_bound` must be sound (never below the true size of a value it lets through), linear and
never raise; answers past the bounds are scored 0 without parsing and counted as `explosive`.
"""
from __future__ import annotations

import math
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import math_verify
from secreason.rewards.math_answer import MAX_DIGITS, MathReward, log10_bound, unbounded

THINK = "<think>Let me work it out step by step.</think>"


@pytest.fixture(scope="module")
def reward():
    return MathReward()


def timed_score(reward, text: str, gold: str) -> tuple[float, float]:
    started = time.perf_counter()
    value = reward.safe_score(THINK + "Answer: " + text, gold)
    return value, time.perf_counter() - started


class ParseCounter:
    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        real = math_verify.parse

        def parse(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(math_verify, "parse", parse)


@pytest.mark.parametrize("answer", ["$(10^{10})!$", "$2^{999*999*999}$"])
def test_the_issue_answers_score_0_in_under_100_ms_without_parsing(reward, monkeypatch, answer):
    reward.safe_score(THINK + "Answer: 12", "12")  # gold "12" parsed and cached before counting
    parses = ParseCounter(monkeypatch)
    before = reward.stats["explosive"]
    best = math.inf
    for _ in range(3):  # the best of 3: a busy machine can stall any one call
        value, seconds = timed_score(reward, answer, "12")
        assert value == 0.0
        best = min(best, seconds)
    assert reward.stats["explosive"] - before == 3 and reward.stats["timeouts"] == 0
    assert parses.calls == 0  # refused by the bound: math-verify never saw it
    assert best < 0.1, f"{best * 1000:.1f} ms"


REFUSED = [
    r"(10^{10})!", r"2^{999*999*999}", r"(999!)^{999}", r"\frac{10^{10}}{3}!", r"2^{(999)(999)}",
    r"2^{9 \cdot 99 \cdot 99}", r"10^10!", r"(1e10)!", r"\binom{10^{10}}{5}", r"{10^{10} \choose 5}",
    r"2^{1 000 000}", r"2^{1,000,000}", r"2^{10{,}000}", r"\left(10^{10}\right)!", r"\sqrt{10^{10}}!",
    r"\lfloor 10^{10} \rfloor !", r"|10^{10}|!", r"(10^5)!", r"(1000)!", "(999)!^{999}", r"10^{10}!",
    r"x = 1, y = (10^{10})!", r"\boxed{(10^{10})!}", "{" * 100 + "1" + "}" * 100,
]
ALLOWED = [
    "12", r"\frac{1}{2}", "2^{10}", r"\sqrt{2}", "3.14", "1,000,000", "10^{100}", "999!", r"\binom{10}{3}",
    "(x+1)^{999}", r"e^{i\pi}", r"\boxed{42}", "-5", r"12\%", r"\text{12 apples}", "x^2", "2^{999}",
    r"\frac{10^{10}}{3}", "(3!)!", "999^{999}", r"x_{10^{10}!}", r"\left( \frac{1}{2} \right)", "x = 5, y = 10^{10}",
    "10^{-999}", r"\sqrt[3]{27}", "6.02e23", r"\pi r^2", "2**10", r"\{1, 2, 3\}",
]


@pytest.mark.parametrize("text", REFUSED)
def test_past_the_bounds(text):
    assert unbounded(text)


@pytest.mark.parametrize("text", ALLOWED)
def test_within_the_bounds(text):
    assert not unbounded(text)


@pytest.mark.parametrize("answer,gold", [
    ("$10!$", "3628800"), ("$2^{10}$", "1024"), (r"$\frac{1}{2}$", "0.5"), (r"$\binom{10}{3}$", "120"),
    ("$(3!)!$", "720"), (r"$\sqrt{16}$", "4"), ("$10^{100}$", "1" + "0" * 100), ("1,000", "1000"),
])
def test_answers_within_the_bounds_are_still_scored(reward, answer, gold):
    assert reward.safe_score(THINK + "Answer: " + answer, gold) == 1.0


# ---- the bound is sound: never below log10 of the numerator or denominator of the true value --

def _fact(n: int) -> int:
    return math.factorial(n)


@st.composite
def expressions(draw, depth: int = 0):
    """(LaTeX text, exact Fraction value) of a random expression with small, exact values."""
    if depth >= 3 or draw(st.integers(0, 3)) == 0:
        n = draw(st.integers(0, 999))
        if draw(st.booleans()):
            return str(n), Fraction(n)
        frac = draw(st.integers(0, 99))
        return f"{n}.{frac:02d}", Fraction(n * 100 + frac, 100)
    op = draw(st.sampled_from(["+", "-", "*", "cdot", "implicit", "frac", "/", "^", "!", "group"]))
    a_text, a = draw(expressions(depth + 1))
    if op == "!":
        if a.denominator != 1 or not 0 <= a <= 30:
            return a_text, a
        return f"({a_text})!", Fraction(_fact(int(a)))
    if op == "group":
        open_, close = draw(st.sampled_from([("(", ")"), ("{", "}"), ("[", "]"), (r"\left(", r"\right)")]))
        return f"{open_}{a_text}{close}", a
    if op == "^":
        k = draw(st.integers(-6, 12))
        if a == 0 and k < 0:
            return a_text, a
        return f"({a_text})^{{{k}}}", a ** k
    b_text, b = draw(expressions(depth + 1))
    if op in ("+", "-"):
        return f"({a_text}) {op} ({b_text})", a + b if op == "+" else a - b
    if op in ("*", "cdot", "implicit"):
        joint = {"*": " * ", "cdot": r" \cdot ", "implicit": ""}[op]
        return f"({a_text}){joint}({b_text})", a * b
    if b == 0:
        return a_text, a
    if op == "frac":
        return rf"\frac{{{a_text}}}{{{b_text}}}", a / b
    return f"({a_text}) / ({b_text})", a / b


def size(value: Fraction) -> float:
    return max(math.log10(max(abs(value.numerator), 1)), math.log10(value.denominator))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(expressions())
def test_the_bound_is_never_below_the_true_size(expression):
    text, value = expression
    bound = log10_bound(text)
    if bound == math.inf:  # refused: fine for soundness (the operand rules are tested above)
        return
    assert size(value) <= bound + 1e-9, (text, value, bound)
    assert bound <= MAX_DIGITS


# ---- never raises, and linear --------------------------------------------------------------

FRAGMENTS = ["\\frac{", "}{", "}", "{", "(", ")", "[", "]", "^", "**", "!", "_", "\\binom", "\\choose", "\\sqrt",
             "\\sqrt[", "\\left(", "\\right)", "\\cdot", "\\times", "10", "999", "9" * 60, "1e999", "1,000", " ",
             "\\,", "{,}", "x", "+", "-", "/", "*", ",", "=", "\\le", "\\\\", "\\", "$", ".", "0.5", "\x00", "é",
             "١٢", "\u202e", "\\text{", "\\boxed{", "|", "&", "%"]
adversarial = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=60).map("".join)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.text(max_size=200) | adversarial)
def test_log10_bound_never_raises(text):
    bound = log10_bound(text)
    assert bound == math.inf or 0.0 <= bound <= MAX_DIGITS


@pytest.mark.parametrize("text", [
    "(" * 1000, ")" * 1000, "2^" * 500, "!" * 1000, "1+" * 500, "\\frac" * 200, "x_" * 500, "9" * 1000,
    "{1}" * 333, "1 " * 500, "-" * 1000, "\\sqrt" * 200, "(1)!" * 250, "1," * 500,
])
def test_long_answers_are_bounded_quickly(text):
    """The longest answer the reward reads is MAX_MATH_CHARS = 1000 characters."""
    started = time.perf_counter()
    log10_bound(text)
    assert time.perf_counter() - started < 0.5
