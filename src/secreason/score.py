"""Score completions offline with a reward set and a format penalty, exactly as GRPO would.

    python -m secreason.score --rewards cyber --format-penalty think_quality --input rows.jsonl

Input: JSONL rows `{"task", "prompt", "completion", "answer", ...}`. Output: one JSON object
per row on stdout, with `total`, `correctness`, `format_penalty`, `penalty_reasons` and one key
per reward (null where the reward does not cover the row's task). `--timing` adds each row's
scoring time in ms (`ms`) and a summary line on stderr.

The two configs are composed with Hydra from the repo's `conf/` (groups `rewards` and
`format_penalty`), so `graded.yaml`'s defaults list works as in training. Bad input ends in one
`error: FILE:LINE: …` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from secreason.data.jsonl import iter_jsonl
from secreason.errors import UserError
from secreason.rewards.extraction import DEFAULT_THINK_TAGS

DEFAULT_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
REQUIRED_KEYS = ("task", "completion", "answer")


class InputError(UserError):
    """One line for the user: what is wrong and where."""


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        for number, row in iter_jsonl(path):
            if isinstance(row, str):
                raise InputError(f"{path}:{number}: {row}")
            missing = [k for k in REQUIRED_KEYS if k not in row]
            if missing:
                raise InputError(f"{path}:{number}: missing key(s) {', '.join(missing)}")
            if not isinstance(row["completion"], str):
                raise InputError(f"{path}:{number}: 'completion' must be a string")
            rows.append(row)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def build_reward_set(rewards: str, format_penalty: str, conf_dir: Path = DEFAULT_CONF_DIR):
    """Compose `rewards=<name>` and `format_penalty=<name>` from `conf_dir` and instantiate."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate

    for group, name in (("rewards", rewards), ("format_penalty", format_penalty)):
        if not (conf_dir / group / f"{name}.yaml").is_file():
            known = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
            raise InputError(f"unknown {group} config {name!r} in {conf_dir / group} (known: {', '.join(known)})")
    try:
        # The groups interpolate the root `think_tags` of conf/train.yaml, which this composition lacks.
        think_tags = "+think_tags=[" + ",".join(f"'{tag}'" for tag in DEFAULT_THINK_TAGS) + "]"
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
            cfg = compose(config_name=None,
                          overrides=[f"+rewards={rewards}", f"+format_penalty={format_penalty}", think_tags])
        return instantiate(cfg.rewards)  # its format_penalty key interpolates the format_penalty group
    except HydraException as exc:
        raise InputError(f"cannot build rewards={rewards} format_penalty={format_penalty}: {exc}") from None


def score_rows(reward_set, rows: list[dict[str, Any]], timing: bool = False) -> list[dict[str, Any]]:
    """One output object per row. Rows are scored one at a time when timing, else as a batch."""
    if not timing:
        return _objects(reward_set([r["completion"] for r in rows], rows))
    out = []
    for row in rows:
        started = time.perf_counter()
        (obj,) = _objects(reward_set([row["completion"]], [row]))
        obj["ms"] = round((time.perf_counter() - started) * 1000, 3)
        out.append(obj)
    return out


def _objects(result) -> list[dict[str, Any]]:
    out = []
    for i, total in enumerate(result.total):
        obj = {"total": total, "correctness": result.correctness[i],
               "format_penalty": result.format_penalty[i],
               "penalty_reasons": result.penalty_reasons[i]}
        obj.update({name: values[i] for name, values in result.per_reward.items()})
        out.append(obj)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m secreason.score", description=__doc__.split("\n")[0])
    parser.add_argument("--rewards", default="cyber", help="config name in conf/rewards")
    parser.add_argument("--format-penalty", default="none", help="config name in conf/format_penalty")
    parser.add_argument("--input", required=True, type=Path, help="JSONL rows {task, prompt, completion, answer}")
    parser.add_argument("--conf-dir", type=Path, default=DEFAULT_CONF_DIR)
    parser.add_argument("--timing", action="store_true", help="add per-row ms and a summary on stderr")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.input)
        reward_set = build_reward_set(args.rewards, args.format_penalty, args.conf_dir)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    objects = score_rows(reward_set, rows, timing=args.timing)
    for obj in objects:
        print(json.dumps(obj))
    if args.timing:
        times = sorted(o["ms"] for o in objects)
        print(json.dumps({"rows": len(times), "ms_mean": round(sum(times) / len(times), 3),
                          "ms_max": times[-1]}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
