"""User errors end in one clear line on stderr, never a traceback; bugs keep theirs.

A user error is one of the project's own classes (`secreason.errors.UserError`: bad config, bad
data, a missing path) or an OmegaConf error (its message names the key); Hydra's
`InstantiationException` is unwrapped to the error a constructor raised. Any other exception,
a plain `ValueError` or `KeyError` included, is a bug and keeps its full traceback.
Set SECREASON_TRACEBACK=1 to get the traceback of a user error too.

- A single run: `error: <message>` on stderr and exit status 2.
- Hydra's own config errors, raised before the task function runs (an override of a key that does
  not exist, an override it cannot parse, a group set to null, an interpolation Hydra resolves
  itself): one line and exit 2 too (`hydra_errors`, around the entry point's `main()`), instead of
  Hydra's several lines and exit 1. Hydra is told to raise them (HYDRA_FULL_ERROR=1), so a bug
  keeps its whole traceback.
- A sweep (`-m`, or `hydra.mode: MULTIRUN`): a user error fails that arm only. Its line names the
  arm (`error: sweep arm #1 (<overrides>): <message>`), the next arms run, and when the sweep ends
  `sweep_summary` (around the entry point's `main()`) lists the failed arms and exits 2. When
  every arm failed so and the sweeper then fails for want of a result (Optuna's best trial), that
  is one more line, not its traceback.
  A bug in an arm prints its traceback there and fails the arm in Hydra's eyes: Hydra runs the
  other arms, then re-raises the first such error and exits 1; the summary names those arms too.
  The failed arms are kept in this process, where Hydra's basic launcher runs every arm; a
  launcher that runs arms elsewhere (joblib, submitit) still fails an arm alone, but this
  process cannot see it to summarise it.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from hydra.errors import InstantiationException
from omegaconf.errors import OmegaConfBaseException

from secreason.errors import UserError

# Errors whose message already names the key, file or path at fault: ours, and OmegaConf's.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OmegaConfBaseException)

# (arm, one line) for each arm of this process's sweep that failed, and the arms that ran.
FAILED_ARMS: list[tuple[str, str]] = []
SWEEP_ARMS: list[str] = []


def user_error(e: BaseException) -> BaseException | None:
    """The user error behind `e` (Hydra wraps errors raised in constructors), or None."""
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e if isinstance(e, USER_ERRORS) else None


# Set on an exception that left the task function (a bug): `hydra_errors` lets it through as is.
_FROM_TASK = "_secreason_from_task"


def message(err: BaseException) -> str:
    """The one line printed for user error `err`: `one_line`, with the config key in front for an
    OmegaConf error whose message does not name it."""
    text = one_line(err)
    key = getattr(err, "full_key", None) if isinstance(err, OmegaConfBaseException) else None
    return f"{key}: {text}" if key and str(key) not in text else text


def one_line(err: BaseException) -> str:
    """The first line of `err`'s message, or its class name. (KeyError's own str() is the repr of
    its message: the message itself is taken.)"""
    plain_key_error = isinstance(err, KeyError) and type(err).__str__ is KeyError.__str__ and err.args
    text = str(err.args[0] if plain_key_error else err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def sweep_arm() -> str | None:
    """`#<job number> (<the arm's overrides>)` inside a Hydra multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return f"#{hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)})"


def run_or_exit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` for a Hydra task function. On a user error: one line on stderr, then
    exit 2 in a single run; in a sweep the arm is recorded as failed and None is returned, so
    Hydra goes on to the next arm. Anything else propagates with its traceback."""
    arm = sweep_arm()
    if arm is not None:
        SWEEP_ARMS.append(arm)
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        err = user_error(e)
        if err is None or os.environ.get("SECREASON_TRACEBACK"):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(e, _FROM_TASK, True)
            if arm is not None:  # Hydra re-raises only the first failed arm's error, after the sweep
                line = f"{type(e).__name__}: {one_line(e)}"
                print(f"error: sweep arm {arm}: {line}", file=sys.stderr)
                traceback.print_exc()
                FAILED_ARMS.append((arm, f"{line} (traceback above)"))
            raise
        if arm is None:
            print(f"error: {message(err)}", file=sys.stderr)
            sys.exit(2)
        print(f"error: sweep arm {arm}: {message(err)}", file=sys.stderr, flush=True)
        FAILED_ARMS.append((arm, message(err)))
        return None


def failed_arms_report() -> str | None:
    """The failed arms of this process's sweep, one per line under a header; None if none failed."""
    if not FAILED_ARMS:
        return None
    lines = [f"error: {len(FAILED_ARMS)} of {len(SWEEP_ARMS)} sweep arms failed:"]
    lines += [f"  {arm}: {line}" for arm, line in FAILED_ARMS]
    return "\n".join(lines)


# Sweepers whose own step after the arms fails when no arm returned a value (Optuna's `best_trial`:
# "No trials are completed yet.").
_SWEEPER_PACKAGES = ("optuna", "hydra_plugins")


def no_arm_left_a_result(e: BaseException) -> bool:
    """Whether `e` is a sweeper's failure to pick a result because every arm of this process's
    sweep failed on a user error (each already has its line): not an arm's bug, not a sweeper bug."""
    return (bool(SWEEP_ARMS) and len(FAILED_ARMS) == len(SWEEP_ARMS) and not getattr(e, _FROM_TASK, False)
            and raising_package(e) in _SWEEPER_PACKAGES)


@contextlib.contextmanager
def sweep_summary() -> Iterator[None]:
    """Around an entry point's `main()`: after a sweep with failed arms, their summary on stderr
    and exit status 2 (or Hydra's own non-zero status when a bug ended the sweep). When every arm
    failed on a user error and the sweeper then fails for want of a result, its error is one line
    under the summary, not a traceback."""
    no_result: BaseException | None = None
    try:
        yield
    except Exception as e:
        if not no_arm_left_a_result(e) or os.environ.get("SECREASON_TRACEBACK"):
            raise
        no_result = e
    finally:
        report = failed_arms_report()
        if report:
            print(report, file=sys.stderr, flush=True)
    if no_result is not None:
        print(f"error: no sweep arm returned a result, so the sweeper has none: {type(no_result).__name__}: "
              f"{one_line(no_result)}", file=sys.stderr, flush=True)
    if FAILED_ARMS:
        sys.exit(2)


# -- Hydra's own config errors ---------------------------------------------------------------------
def hydra_config_error(e: BaseException) -> bool:
    """Whether `e`, raised out of `hydra.main` but not by the task function, is a config error:
    Hydra's and OmegaConf's exceptions, or a ValueError raised inside Hydra (its defaults list
    rejects `callbacks=null` that way)."""
    if getattr(e, _FROM_TASK, False):
        return False
    from hydra.errors import HydraException

    if isinstance(e, (HydraException, OmegaConfBaseException)):
        return True
    return isinstance(e, ValueError) and raising_package(e) in ("hydra", "omegaconf")


def raising_package(e: BaseException) -> str:
    """The top-level package of the module whose code raised `e` (its innermost frame), or ''."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""
    return module.split(".")[0]


def hydra_one_line(e: BaseException) -> str:
    """Hydra's message (often several lines, with an OmegaConf cause below) as one line."""
    parts = [line.strip().rstrip(".") for line in str(e).splitlines() if line.strip()]
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and one_line(cause).rstrip(".") not in parts:
        parts.append(one_line(cause).rstrip("."))
    text = "; ".join(parts) or type(e).__name__
    override = getattr(e, "override", None)  # an override Hydra cannot parse: its message omits it
    return f"cannot parse override {override!r}: {text}" if isinstance(override, str) and override not in text else text


@contextlib.contextmanager
def hydra_errors() -> Iterator[None]:
    """Around an entry point's `main()` (outside `sweep_summary`): a config error Hydra raises
    before the task runs ends in `error: <one line>` on stderr and exit status 2. Everything else,
    the task's bugs included, propagates with its traceback (SECREASON_TRACEBACK=1: this too)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises to us instead of printing several lines, exit 1
    try:
        yield
    except Exception as e:
        if not hydra_config_error(e) or os.environ.get("SECREASON_TRACEBACK"):
            raise
        print(f"error: {hydra_one_line(e)}", file=sys.stderr)
        sys.exit(2)


# -- config-group choices, checked before Hydra composes ---------------------------------------------
# Hydra reports an unknown group option (`loss_agg=nope`) as a multi-line message with its config
# search path; the entry points check their group overrides first and print one line instead.
_SEARCH_PATH_ARGS = ("hydra.searchpath", "--config-dir", "-cd", "--config-path", "-cp")


def config_groups(conf_dir: Path, config_name: str, extra: tuple[str, ...] = ()) -> set[str]:
    """The groups a root config's defaults list names (`- loss_agg: sample_mean`), plus `extra`
    (optional groups such as `experiment`, added with `+experiment=…`)."""
    import yaml

    root = yaml.safe_load((conf_dir / f"{config_name}.yaml").read_text()) or {}
    groups = set(extra)
    for entry in root.get("defaults") or []:
        if isinstance(entry, dict):
            for key in entry:
                groups.add(str(key).split()[-1].lstrip("/").split("@")[0])
    return groups


def _choices(value: str) -> list[str] | None:
    """The option names of one group override's value (a sweep `a,b` or `choice(a,b)` gives
    several); None when the value cannot be checked cheaply (other sweep functions, lists,
    interpolations)."""
    value = value.strip()
    if value.startswith("choice(") and value.endswith(")"):
        value = value[len("choice("):-1]
    elif re.match(r"^\w+\(", value) or value[:1] in ("[", "{", "$"):
        return None
    names = [v.strip().strip("'\"") for v in value.split(",")]
    return [v for v in names if v and v != "null"]


def check_group_choices(argv: list[str], conf_dir: Path, groups: set[str] | tuple[str, ...]) -> str | None:
    """One line naming the first `group=option` override in `argv` whose option has no
    `conf_dir/group/option.yaml`, or None. Skipped when the command adds config search paths."""
    if any(arg.lstrip("+").startswith(_SEARCH_PATH_ARGS) for arg in argv):
        return None
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        key = key.split("@")[0]
        if key not in groups:
            continue
        for name in _choices(value) or []:
            if not (conf_dir / key / f"{name}.yaml").is_file():
                known = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
                return f"{key}={name!r} unknown; choose one of: {', '.join(known)}"
    return None


def exit_on_unknown_choice(argv: list[str], conf_dir: Path, groups: set[str] | tuple[str, ...]) -> None:
    """`check_group_choices`, and on a problem its one line on stderr and exit status 2."""
    problem = check_group_choices(argv, conf_dir, groups)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
