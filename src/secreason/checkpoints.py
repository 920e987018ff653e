"""Which checkpoint a run may resume from, checked before anything is built or loaded.

A Lightning checkpoint is a pickle, and unpickling can run code. Lightning loads URLs (`http://…`)
with `weights_only=False` unless told otherwise, and local files with torch's default, which has
changed before. So `ckpt_path` must be a local file, it is test-read here with torch's
weights-only unpickler (tensors and plain values; a pickle naming anything else is refused without
running it), and `train` passes `weights_only=True` to `Trainer.fit` explicitly.

Lightning's keywords (`last`, `best`, `hpc`, `registry:…`) are refused too: each run has its own
directory, so `last` would find nothing and silently start from scratch. The file itself is wanted,
e.g. `logs/sft/runs/<time>/checkpoints/last.ckpt`.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

from secreason.errors import ConfigError, MissingPathError

# A URL scheme (`http://`, `s3://`, `file://`) or an fsspec chain (`simplecache::https://…`).
_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|::")
_LIGHTNING_KEYWORDS = ("last", "best", "hpc", "registry")


def resume_path(ckpt_path: str | Path | None) -> str | None:
    """`ckpt_path` as a local file path that loads with `weights_only=True`, or None to start fresh.
    Raises a UserError whose one line names `ckpt_path=…` and the reason."""
    if ckpt_path is None:
        return None
    text = str(ckpt_path)
    key = f"ckpt_path={text}"
    if _REMOTE.search(text):
        raise ConfigError(f"{key}: a URL or remote path; resume only from a local checkpoint file (download it first)")
    if text in _LIGHTNING_KEYWORDS or text.startswith("registry:"):
        raise ConfigError(f"{key}: give the checkpoint file itself, e.g. logs/sft/runs/<time>/checkpoints/last.ckpt")
    path = Path(text).expanduser()
    if not path.exists():
        raise MissingPathError(f"{key}: no such file")
    if not path.is_file():
        raise ConfigError(f"{key}: not a file")
    _check_loads_weights_only(path, key)
    return str(path)


def _check_loads_weights_only(path: Path, key: str) -> None:
    """Read the checkpoint as `Trainer.fit(weights_only=True)` will, so that a bad one fails here in
    one line, not in a traceback that advises `weights_only=False`. mmap: tensors are not read."""
    import torch

    if not zipfile.is_zipfile(path):  # torch.save's format since torch 1.6, and Lightning's
        raise ConfigError(f"{key}: not a checkpoint (not the zip archive torch.save writes)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it names {named.group(1)}" if named else "it holds more than tensors and plain values"
        raise ConfigError(f"{key}: refused: {what}, and unpickling it could run code") from None
    except Exception as e:  # a truncated or corrupt archive: torch raises RuntimeError, EOFError, ...
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{key}: not a readable checkpoint: {first_line}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{key}: not a Lightning checkpoint (no state_dict)")
