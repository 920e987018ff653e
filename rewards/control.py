"""Null controls for GRPO: the same rewards, with the link between a completion and its reward cut.

`ShuffledRewards` wraps a reward set (`secreason.rewards.sets.RewardSet` or anything returning a
`RewardResult`) and permutes every per-row field of its result across the whole batch with one
permutation: completion i gets the total, correctness, format penalty, per-reward scores and penalty
reasons of completion perm[i]. The batch's numbers (every mean that `RewardResult.metrics` logs,
the counters in `stats`) are unchanged, so a control run logs the same reward curve a policy that
learnt nothing would; only which completion is credited changes. Training on it should leave the
model where it started: if it does not, the "gain" of the real run was not the reward's doing.

Picked from config by swapping the `rewards` node's target for `ShuffledRewardSet` (a RewardSet's
own arguments plus a seed), which keeps whichever `rewards` group is chosen; this is what
conf/experiment/demo_control.yaml does:

    rewards:
      _target_: secreason.rewards.control.ShuffledRewardSet
      seed: ${seed}

or on the command line: `rewards._target_=secreason.rewards.control.ShuffledRewardSet +rewards.seed=0`.

The permutation is a pure function of (seed, batch): a `random.Random` seeded with the seed and a
SHA-256 of the batch's completions and prompts. The same batch always gets the same permutation (a
resumed run shuffles exactly as the uninterrupted one), different batches get independent ones, and
no state is kept between calls. Nothing here raises on any completion or row.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any, Mapping, Sequence

from secreason.rewards.sets import RewardResult, RewardSet


def permuted(values: Sequence[Any], perm: Sequence[int]) -> list[Any]:
    """`values` reordered so that position i holds values[perm[i]]."""
    return [values[j] for j in perm]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return repr(value)
    except Exception:  # an object whose repr fails still hashes by its type
        return type(value).__name__


def batch_key(completions: Sequence[Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """A digest of the batch's completions and prompts (the shuffle's per-batch seed)."""
    digest = hashlib.sha256()
    for completion in completions:
        digest.update(_text(completion).encode("utf-8", "replace") + b"\x00")
    for row in rows:
        prompt = row.get("prompt") if isinstance(row, Mapping) else row
        digest.update(_text(prompt).encode("utf-8", "replace") + b"\x01")
    return digest.hexdigest()


def permutation(n: int, seed: int, key: str = "") -> list[int]:
    """A uniformly random permutation of range(n), fixed by (seed, key)."""
    perm = list(range(n))
    random.Random(f"secreason-shuffled-rewards|{seed}|{key}").shuffle(perm)
    return perm


class ShuffledRewards:
    """A reward set whose per-row results are permuted across the batch (see the module docstring)."""

    def __init__(self, reward_set: Any, seed: int = 0):
        self.reward_set = reward_set
        self.seed = int(seed)

    @property
    def tasks(self) -> frozenset[str]:
        """The wrapped set's tasks (the data module checks rows against them)."""
        return getattr(self.reward_set, "tasks", frozenset())

    def __getattr__(self, name: str) -> Any:  # format_penalty, rewards, ...: the wrapped set's
        if name == "reward_set":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.reward_set, name)

    def permutation_for(self, completions: Sequence[Any], rows: Sequence[Mapping[str, Any]]) -> list[int]:
        return permutation(len(completions), self.seed, batch_key(completions, rows))

    def __call__(self, completions: Sequence[Any], rows: Sequence[Mapping[str, Any]],
                 completion_ids: Sequence[Sequence[int]] | None = None) -> RewardResult:
        if completion_ids is None:
            result = self.reward_set(completions, rows)
        else:
            result = self.reward_set(completions, rows, completion_ids=completion_ids)
        return shuffle_result(result, self.permutation_for(completions, rows))


class ShuffledRewardSet(ShuffledRewards):
    """`ShuffledRewards` around `RewardSet(rewards, format_penalty)`: the config form (a reward
    set's node with its `_target_` swapped and a `seed` added)."""

    def __init__(self, rewards: Mapping[str, Any], format_penalty: Any = None, seed: int = 0):
        super().__init__(RewardSet(rewards, format_penalty), seed)


def shuffle_result(result: RewardResult, perm: Sequence[int]) -> RewardResult:
    """`result` with every per-row field permuted by `perm` (batch counts and reason names kept).

    A field whose length is not the permutation's (e.g. an empty `penalty_reasons` of a custom
    set) is left as it is rather than raising."""
    n = len(perm)

    def rows_of(values: Sequence[Any]) -> Any:
        return permuted(values, perm) if len(values) == n else values

    return dataclasses.replace(
        result,
        total=rows_of(result.total), correctness=rows_of(result.correctness),
        format_penalty=rows_of(result.format_penalty),
        per_reward={name: rows_of(values) for name, values in result.per_reward.items()},
        penalised=rows_of(result.penalised), routed=rows_of(result.routed),
        penalty_reasons=rows_of(result.penalty_reasons), stats=dict(result.stats))
