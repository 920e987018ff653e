"""Checkpoints that are written whole or not at all (the trainer's `plugins`: conf/trainer/cpu.yaml).

Lightning's default `TorchCheckpointIO` saves through an fsspec transaction: `torch.save` into
memory, then a temp file from `tempfile.mkstemp()`, i.e. in `$TMPDIR`, moved onto the target with
`shutil.move`. When `$TMPDIR` is another filesystem (a tmpfs `/tmp`, a node-local scratch disk)
the move is a copy into the target path itself, so a kill during it leaves a truncated
`last.ckpt` in place of the good one, and the full temp file behind.

`AtomicCheckpointIO` writes the checkpoint to a temp file in the target's own directory
(`.<name>.<host>.<pid>.<random>.tmp`), fsyncs it, `os.replace`s it onto the target (atomic on one
filesystem) and fsyncs the directory: whenever the process dies, the target is the old checkpoint
or the new one. The temp files of a killed save (same host, their process gone) are removed the
first time this process writes into a directory, and beside a checkpoint it loads, which is where
a resumed run starts. Remote paths (`s3://…`) keep Lightning's own writer.

`own_temp_path` and `remove_stale_temps` serve other writers of whole files or directories too
(the vLLM engine's weight dump).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)

_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def own_temp_path(target: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A fresh name beside `target` (same directory, hence same filesystem) that says which
    process made it: `.<target name>.<host>.<pid>.<random><suffix>`. Nothing is created."""
    target = Path(target)
    return target.with_name(f".{target.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # alive under another user, or cannot tell: keep it
        return True
    return True


def _temp_pattern(suffix: str) -> re.Pattern:
    return re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}" + re.escape(suffix) + "$")


def stale_temps(directory: str | os.PathLike, suffix: str = ".tmp") -> list[Path]:
    """The `own_temp_path` names in `directory` whose process, on this host, is gone."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern, host, me = _temp_pattern(suffix), _host(), os.getpid()
    found = []
    for entry in directory.iterdir():
        m = pattern.match(entry.name)
        if m and m["host"] == host and int(m["pid"]) != me and not _pid_alive(int(m["pid"])):
            found.append(entry)
    return sorted(found)


def remove_stale_temps(directory: str | os.PathLike, suffix: str = ".tmp") -> list[Path]:
    """Remove what a killed writer left in `directory` (files or directories); returns them."""
    removed = []
    for path in stale_temps(directory, suffix):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        except OSError as e:
            log.warning("could not remove %s, left by a killed write: %s", path, e)
            continue
        removed.append(path)
    if removed:
        log.info("removed %d temp file(s) left by a killed write in %s: %s", len(removed), directory,
                 ", ".join(p.name for p in removed))
    return removed


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / filesystem can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(target: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call `write(binary file)` on a temp file beside `target`, fsync, then `os.replace` it onto
    `target`. On any error the temp file is removed and `target` is untouched."""
    target = Path(target)
    tmp = own_temp_path(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode: 0o666 less the umask
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    return target


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves are atomic (module docstring); loading is Lightning's."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def _clean_once(self, directory: Path) -> None:
        directory = directory.resolve()
        if directory not in self._cleaned:
            self._cleaned.add(directory)
            remove_stale_temps(directory)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or _REMOTE.match(str(path)) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(str(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        self._clean_once(target.parent)
        write_atomic(target, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: Any, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if not _REMOTE.match(str(path)):
            self._clean_once(Path(path).parent)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
