"""The synthetic task set, generated once per setting into a cache dir and reused."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from secreason.rewards.extraction import DEFAULT_THINK_TAGS


def ensure_synth(cache_dir: str, seed: int = 0, tasks: Sequence[str] = ("mcqa", "cwe", "cvss", "attack", "math"),
                 n_sft: int = 4000, n_rl: int = 2000, n_test: int = 200, empty_think_frac: float = 0.0,
                 think_tags: Sequence[str] = DEFAULT_THINK_TAGS) -> Path:
    """Directory holding sft.jsonl / rl_train.jsonl / rl_test.jsonl for these settings."""
    from secreason.data import synth

    settings = {"seed": seed, "tasks": list(tasks), "n_sft": n_sft, "n_rl": n_rl, "n_test": n_test,
                "empty_think_frac": empty_think_frac, "think_tags": list(think_tags)}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    out = Path(cache_dir) / f"synth-{key}"
    if (out / "manifest.json").exists():
        return out
    splits = synth.generate(seed=seed, tasks=tuple(tasks), n_sft=n_sft, n_rl=n_rl, n_test=n_test,
                            think_tags=tuple(think_tags), empty_think_frac=empty_think_frac)
    synth.write(out, splits)
    return out
