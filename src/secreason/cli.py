"""Bad input ends in one clear line on stderr and exit code 2, never a traceback.

Set SECREASON_TRACEBACK=1 to get the traceback instead.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from hydra.errors import InstantiationException
from omegaconf.errors import OmegaConfBaseException

# Errors whose message already names the key, file or path at fault.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, OmegaConfBaseException)


def user_error(e: BaseException) -> BaseException | None:
    """The user error behind `e` (Hydra wraps errors raised in constructors), or None."""
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e if isinstance(e, USER_ERRORS) else None


def run_or_exit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        err = user_error(e)
        if err is None or os.environ.get("SECREASON_TRACEBACK"):
            raise
        text = str(err).strip().strip("'\"")
        print(f"error: {text.splitlines()[0] if text else type(err).__name__}", file=sys.stderr)
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
