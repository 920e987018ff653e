"""A wall-clock limit for one reward call (peer-bugs §9: one slow scorer hung a whole verl run).

`run_with_time_limit(fn, seconds)` returns `fn()`, or raises `RewardTimeout` after `seconds`.

How the limit is enforced:
- In the main thread of a POSIX process: a `SIGALRM` interval timer (`setitimer`, so limits
  below one second work, unlike math-verify's own `signal.alarm`-based integer timeouts). The
  handler raises `RewardTimeout`, a `BaseException`, so that the `except Exception` blocks inside
  math-verify and sympy cannot swallow it and carry on past the deadline; the timer repeats every
  `RETRY_S` until the call ends, because Python drops an exception raised inside a gc callback
  (observed under hypothesis). An outer timer that was already armed is re-armed afterwards with
  what is left of it.
- In any other thread (signals cannot be used there): `fn` runs in a daemon worker thread and
  the caller waits at most `seconds`. A worker that overruns is abandoned, not killed (Python
  cannot kill a thread); it keeps a core busy until it finishes, which is why the rewards also
  cap their inputs (`MAX_ANSWER_CHARS` and the power guards in `secreason.rewards.math_answer`).
- Limitation, both ways: a signal is handled between bytecodes, so one long C call (a regex
  over a huge string, a giant integer power) is not interrupted mid-call. The extraction
  regexes are linear-time and the math reward refuses huge powers/factorials for that reason.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Callable, TypeVar

T = TypeVar("T")
RETRY_S = 0.05


class RewardTimeout(BaseException):
    """Raised when a reward call exceeds its time limit (BaseException: see module doc)."""


def _signals_usable() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def run_with_time_limit(fn: Callable[[], T], seconds: float | None) -> T:
    if seconds is None or seconds <= 0:
        return fn()
    if _signals_usable():
        return _run_with_itimer(fn, seconds)
    return _run_in_worker(fn, seconds)


def _run_with_itimer(fn: Callable[[], T], seconds: float) -> T:
    started = time.monotonic()
    armed = [True]

    def on_alarm(signum, frame):
        # Disarmed first thing in `finally`, so a late signal cannot escape the cleanup.
        if armed[0]:
            raise RewardTimeout("reward time limit exceeded")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    if old_handler is None:  # a handler installed from C cannot be restored from Python
        old_handler = signal.SIG_DFL
    outer_left, outer_interval = signal.setitimer(signal.ITIMER_REAL, 0)
    limit = min(seconds, outer_left) if outer_left > 0 else seconds
    try:
        # Re-fires every RETRY_S: a raise that lands in a gc callback or a `__del__` is
        # printed and dropped by Python, and a one-shot timer would then never fire again.
        signal.setitimer(signal.ITIMER_REAL, limit, RETRY_S)
        return fn()
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if outer_left > 0:
            left = outer_left - (time.monotonic() - started)
            # An outer deadline that passed while we ran fires right away, as it would have.
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), outer_interval)


def _run_in_worker(fn: Callable[[], T], seconds: float) -> T:
    box: dict[str, object] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below, re-raised there
            box["error"] = exc

    worker = threading.Thread(target=target, name="reward-time-limit", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise RewardTimeout("reward time limit exceeded (worker thread abandoned)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
