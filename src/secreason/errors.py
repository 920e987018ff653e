"""The project's user errors: bad config, bad data, bad paths. Nothing here imports torch.

A `UserError` ends a run with its message as one line on stderr and exit status 2
(secreason.cli); every other exception is a bug and keeps its traceback. Messages name the key
(`algorithm.kl.beta=-1: must be ≥ 0`) or the place (`rows.jsonl:12: …`) at fault.

`secreason.rewards` may import this module (it is the one shared module the layers allow).
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what and where."""


class ConfigError(UserError, ValueError):
    """A bad config value; the message names the key."""


class DataError(UserError, ValueError):
    """Bad input data; the message names the file (and line)."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or directory the config names does not exist."""
