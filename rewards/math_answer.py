"""Math reward: `math-verify` equivalence of the final answer with the gold, under a time limit.

(Named math_answer, not math, so that it cannot shadow the standard library.)

Time limit: math-verify's own timeouts use `signal.alarm` with whole seconds and refuse to run
outside the main thread, so they are switched off here (`parsing_timeout=None`,
`timeout_seconds=None`) and the whole parse+verify of one completion runs under
`secreason.rewards.timeout.run_with_time_limit(timeout_s)` instead (sub-second, works in threads).
Measured: `9^9^9`, `10^{10^{10}}`, `99999999!` each run for more than 20 s unguarded and are
cut at the limit. Such answers are also refused up front (`explosive`), because in a worker
thread an overrunning computation is abandoned but keeps burning a core.

Bounds before parsing (`unbounded`): `$(10^{10})!$` and `$2^{999*999*999}$` pass the spelling
checks of `explosive` (one power operator, no 4-digit operand), yet sympy evaluates them eagerly:
each took the full 2 s limit (unguarded, the first ran for more than 300 s). `unbounded` reads
the answer as an arithmetic expression over upper bounds: each subexpression gets `s`, a bound on
log10 of its numerator and denominator as a rational (for a symbol, 0), combined by `+ − × ÷ ^ !`,
`\\frac`, `\\binom`, `\\sqrt`, brackets of every kind and implicit products. An exponent, a
factorial or a binomial's operands must stay below `MAX_OPERAND` (as `explosive` asks of literal
operands), and no value may need more than `MAX_DIGITS` digits; digits split by spaces, `\\,` or
thousands commas count as one number, and `a^{b}!` is bounded both as `a^{(b!)}` and `(a^b)!`.
Linear in the answer's length; nesting deeper than `MAX_DEPTH` is refused too.
"""

from __future__ import annotations

import math
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


MAX_OPERAND = 1000  # |exponent|, n of n! and of binom(n, k): below this (explosive(): 4+ digits)
MAX_DIGITS = 4000  # digits of any value (999! has 2565, 999^999 has 2997)
MAX_DEPTH = 64  # brackets and exponents nested deeper than this are refused
_LOG_MAX_OPERAND = math.log10(MAX_OPERAND)
_LOG2 = math.log10(2)


class _Unbounded(Exception):
    """Raised inside `_Bounds` as soon as a value or operand is past the bounds."""


_TOKEN = re.compile(
    r"(?P<num>\d+(?:,\d{3}(?!\d))*(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<cmd>\\[A-Za-z]+|\\.?)"
    r"|(?P<pow>\*\*|\^)"
    r"|(?P<op>[-+*/!_(){}\[\],;=<>:&|])"
    r"|(?P<sym>[^\W\d_])"
    r"|(?P<ws>\s+)"
    r"|(?P<other>.)",
    re.S,
)
_UNICODE = str.maketrans({"×": "*", "·": "*", "⋅": "*", "∗": "*", "÷": "/", "−": "-", "–": "-"})
_OPEN, _CLOSE = frozenset("([{"), frozenset(")]}")
_CMD_OPEN = {"lbrace", "langle", "lfloor", "lceil", "{"}
_CMD_CLOSE = {"rbrace", "rangle", "rfloor", "rceil", "}"}
_CMD_IGNORED = {"left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr", "biggl", "biggr",
                "displaystyle", "textstyle", "text", "textbf", "textrm", "mathrm", "mathbf", "mathit", "mathbb",
                "mathcal", "operatorname", "boxed", "mbox", "hbox", "limits", "nolimits", "quad", "qquad", "bf",
                "rm", "it", "vert", "Vert", "lvert", "rvert", "lVert", "rVert", "mid", ",", ";", ":", "!", " ",
                "%", "$", "", "left.", "right.", "phantom", "hphantom", "vphantom", "cancel", "underline",
                "overline", "hat", "bar", "tilde", "vec", "dot", "ddot"}
_CMD_MUL = {"cdot", "times", "ast", "star", "bullet", "cdotp"}
_CMD_DIV = {"div", "over"}
_CMD_ADD = {"pm", "mp"}
_CMD_FRAC = {"frac", "dfrac", "tfrac", "cfrac"}
_CMD_BINOM = {"binom", "dbinom", "tbinom"}
_CMD_SEP = {"le", "leq", "ge", "geq", "ne", "neq", "approx", "equiv", "to", "in", "sim", "simeq", "cong", "lt",
            "gt", "\\", "cup", "cap", "land", "lor", "implies", "iff", "rightarrow", "Rightarrow",
            "leftarrow", "Leftarrow", "mapsto", "ldots", "cdots", "dots", "colon", "setminus", "leqslant",
            "geqslant", "propto", "subset", "subseteq", "supset", "supseteq", "and", "or"}
# LaTeX commands that read as one bracket or operator
_CMD_AS_TOKEN = ((_CMD_OPEN, ("open", "{")), (_CMD_CLOSE, ("close", "}")), (_CMD_MUL, ("op", "*")),
                 (_CMD_DIV, ("op", "/")), (_CMD_ADD, ("op", "+")), (_CMD_SEP, ("op", ",")))


def _digits_log10(digits: str) -> float:
    digits = digits.lstrip("0")
    if not digits:
        return 0.0
    if len(digits) <= 15:
        return math.log10(int(digits))
    return len(digits) - 15 + math.log10(int(digits[:15]) + 1)


def _number_bound(text: str) -> float:
    """log10 bound of the numerator and denominator of a literal: `12`, `1,000.5`, `2.5e10`."""
    mantissa, _, exponent = text.replace(",", "").lower().partition("e")
    whole, _, frac = mantissa.partition(".")
    s = max(_digits_log10(whole + frac), float(len(frac)))
    if exponent:
        digits = exponent.lstrip("+-")
        s += float("inf") if len(digits) > 6 else int(digits)
    return s


def _tokens(text: str) -> list[tuple[str, object]]:
    """(kind, value) tokens; digit runs split only by spaces are joined (bounds grow by it)."""
    out: list[tuple[str, object]] = []
    gap = False  # whitespace (or an ignored spacing command) since the last token
    for m in _TOKEN.finditer(text.translate(_UNICODE).replace("{,}", "")):
        kind, value = m.lastgroup, m.group()
        if kind == "ws" or kind == "cmd" and value[1:] in (",", ";", ":", "!", " ", "") or value in ("~", "'", '"'):
            gap = True
            continue
        if kind == "num":
            s = _number_bound(value)
            if gap and out and out[-1][0] == "num":  # "1 000 000": one number, a·10^len(b) + b < (a+1)·10^len(b)
                out[-1] = ("num", out[-1][1] + _LOG2 + sum(c.isdigit() for c in value))
            else:
                out.append(("num", s))
        elif kind == "cmd":
            name = value[1:]
            token = next((t for names, t in _CMD_AS_TOKEN if name in names), None)
            if name in _CMD_IGNORED:
                pass
            elif token is not None:
                out.append(token)
            elif name in _CMD_FRAC or name in _CMD_BINOM or name in ("sqrt", "choose"):
                out.append(("cmd", name if name in ("sqrt", "choose") else "frac" if name in _CMD_FRAC else "binom"))
            else:  # \pi, \infty, \log, \alpha, ...
                out.append(("sym", name))
        elif kind == "pow":
            out.append(("op", "^"))
        elif kind == "op":
            if value in _OPEN:
                out.append(("open", value))
            elif value in _CLOSE:
                out.append(("close", value))
            elif value in "=<>;:&":
                out.append(("op", ","))
            elif value != "|":  # |x| is as big as x
                out.append(("op", value))
        elif kind == "sym" or kind == "other" and value not in "%$?.`":
            out.append(("sym", value))
        gap = False
    return out


class _Bounds:
    """Recursive descent over `_tokens`, returning log10 bounds (module docstring, `unbounded`).

    expr    := sum ((, | \\choose) sum)*          max; \\choose bounds like \\binom
    sum     := term ((+ | -) term)*
    term    := unary ((* | / | implicit) unary)*
    unary   := (+ | -)* power
    power   := postfix (^ unary-power)?          right-associative
    postfix := primary (! | _ skipped-primary)*
    primary := number | symbol | ( expr ) | \\frac P P | \\binom P P | \\sqrt [..]? P
    """

    def __init__(self, tokens: list[tuple[str, object]]) -> None:
        self.tokens, self.i, self.depth = tokens, 0, 0

    def peek(self) -> tuple[str, object] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def check(self, s: float) -> float:
        if not s <= MAX_DIGITS:  # also NaN
            raise _Unbounded
        return s

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Unbounded

    def run(self) -> float:
        s = 0.0
        while self.i < len(self.tokens):
            start = self.i
            s = max(s, self.expr())
            if self.i == start:  # a closing bracket with nothing open: skip it
                self.i += 1
        return s

    def expr(self) -> float:
        s = self.sum()
        while (tok := self.peek()) in (("op", ","), ("cmd", "choose")):
            self.i += 1
            right = self.sum()
            if tok[1] == "choose":
                s = self.binom(s, right)
            else:
                s = max(s, right)
        return s

    def sum(self) -> float:
        s = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            self.i += 1
            s = self.check(s + self.term() + _LOG2)
        return s

    def starts_primary(self, tok) -> bool:
        return tok is not None and (tok[0] in ("num", "sym", "open") or tok[0] == "cmd" and tok[1] != "choose")

    def term(self) -> float:
        s = self.unary()
        while True:
            tok = self.peek()
            if tok in (("op", "*"), ("op", "/")):
                self.i += 1
            elif not self.starts_primary(tok):
                return s
            s = self.check(s + self.unary())  # a/b: |num|, |den| ≤ products of both bounds

    def unary(self) -> float:
        while self.peek() in (("op", "+"), ("op", "-")):
            self.i += 1
        return self.power()

    def power(self) -> float:
        return self.power_parts()[0]

    def power_parts(self) -> tuple[float, float, int]:
        """(bound, bound before trailing factorials, how many): a^{b}! is also bounded as (a^b)!,
        and a tower's exponent is a power itself (right-associative)."""
        base, before, factorials = self.postfix()
        if self.peek() != ("op", "^"):
            return base, before, factorials
        self.i += 1
        self.nest()
        while self.peek() in (("op", "+"), ("op", "-")):
            self.i += 1
        exponent, exponent_before, exponent_factorials = self.power_parts()
        self.depth -= 1
        s = self.raise_to(base, exponent)
        if exponent_factorials:
            s = max(s, self.factorial(self.raise_to(base, exponent_before), exponent_factorials))
        return s, s, 0

    def raise_to(self, base: float, exponent: float) -> float:
        if exponent >= _LOG_MAX_OPERAND:
            raise _Unbounded
        return self.check(base * 10.0 ** exponent)

    def factorial(self, s: float, times: int = 1) -> float:
        for _ in range(times):
            if s >= _LOG_MAX_OPERAND:
                raise _Unbounded
            s = self.check(10.0 ** s * s)  # log10(n!) ≤ n·log10(n)
        return s

    def binom(self, n: float, k: float) -> float:
        if n >= _LOG_MAX_OPERAND or k >= _LOG_MAX_OPERAND:
            raise _Unbounded
        return self.check(10.0 ** n * _LOG2)  # binom(n, k) ≤ 2^n

    def postfix(self) -> tuple[float, float, int]:
        """(bound with the factorials applied, bound before them, how many)."""
        before = s = self.primary()
        factorials = 0
        while (tok := self.peek()) in (("op", "!"), ("op", "_")):
            self.i += 1
            if tok[1] == "!":
                s = self.factorial(s)
                factorials += 1
            else:
                self.skip_primary()  # a subscript is a name, not a value
        return s, before, factorials

    def skip_primary(self) -> None:
        tok = self.peek()
        if tok is None:
            return
        self.i += 1
        if tok[0] != "open":
            return
        depth = 1
        while self.i < len(self.tokens) and depth:
            kind = self.tokens[self.i][0]
            depth += kind == "open"
            depth -= kind == "close"
            self.i += 1

    def primary(self) -> float:
        tok = self.peek()
        if tok is None:
            return 0.0
        kind, value = tok
        if kind == "num":
            self.i += 1
            return self.check(value)
        if kind == "sym":
            self.i += 1
            return 0.0
        if kind == "open":
            self.i += 1
            self.nest()
            s = self.expr()
            while (tok := self.peek()) is not None and tok[0] != "close":  # a stray operator inside
                self.i += 1
                s = max(s, self.expr())
            if tok is not None:
                self.i += 1
            self.depth -= 1
            return s
        if kind == "cmd":
            self.i += 1
            self.nest()
            try:
                if value == "sqrt":
                    if self.peek() == ("open", "["):
                        self.skip_primary()  # the root's degree only makes it smaller
                    return self.primary()
                a, b = self.primary(), self.primary()
                return self.binom(a, b) if value == "binom" else self.check(a + b)
            finally:
                self.depth -= 1
        return 0.0  # an operator where a value belongs: its caller moves on


def log10_bound(text: str) -> float:
    """An upper bound on log10 of the numerator and the denominator of every value in the answer
    read as arithmetic (a symbol counts as 1), or inf when an operand or a value is past the
    bounds (module docstring). Never raises."""
    try:
        return _Bounds(_tokens(text)).run()
    except (_Unbounded, RecursionError, OverflowError, ValueError):
        return math.inf


def unbounded(text: str) -> bool:
    """True when the answer may be too big to compute: `log10_bound` is inf."""
    return log10_bound(text) == math.inf


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
        if explosive(target) or unbounded(target):
            self.stats["explosive"] += 1
            return 0.0
        pred = parse(target, parsing_timeout=None)
        if not pred:
            return 0.0
        return 1.0 if verify(list(gold_parsed), pred, timeout_seconds=None) else 0.0
