"""A set of weighted rewards routed by task, plus the format penalty: the GRPO training reward.

Built by Hydra from `conf/rewards/<name>.yaml` with the penalty from its own group:

    from hydra.utils import instantiate
    reward_set = instantiate(cfg.rewards, format_penalty=instantiate(cfg.format_penalty))
    result = reward_set(completions, rows)   # rows: the RL rows, one per completion

Meaning of each number, per row (`RewardResult`):
- correctness = Σ weight·score over the rewards whose `tasks` contain the row's task (a weighted
  sum, not a mean: with one reward per task at weight 1 it is that reward's score);
- format_penalty = 0 or the penalty's negative value;
- total = correctness + format_penalty, the training reward.
A row whose task no reward covers gets correctness 0, is marked `routed=False` and counted in
`stats["unrouted"]`. A reward value of None means "not applicable" (TRL's meaning): it is left out
of that reward's mean and of the weighted sum, and counted as "<name>/not_applicable". A NaN or
a value that is not a number becomes 0 and is counted in `stats["<name>/invalid"]`. Nothing is
ever NaN (peer-bugs §2). Reward functions are called by their own convention, ours or TRL's
(secreason.rewards.calling).

`RewardResult.stats` holds this batch's counts only: the set's own (unrouted, invalid) and what
each reward and the penalty added to its `stats` Counter during this call (timeouts, errors,
non_string, missing_gold, …), as "<name>/<stat>". `RewardResult.metrics()` is the one place that
turns a result into logged numbers (see its docstring for the names).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from secreason.errors import ConfigError
from secreason.rewards.calling import call_reward

RESERVED_NAMES = frozenset({"total", "correctness", "format_penalty", "penalised_frac",
                            "unrouted", "penalty_reasons", "task"})
# Row keys never passed to a reward as columns (they would clash with its own arguments).
_NOT_COLUMNS = frozenset({"completions", "completion", "self"})


@dataclass(frozen=True)
class RoutedReward:
    fn: Callable[..., list[float]]
    weight: float
    tasks: frozenset[str]


@dataclass
class RewardResult:
    total: list[float]
    correctness: list[float]
    format_penalty: list[float]
    per_reward: dict[str, list[float | None]]  # None where the reward was not routed
    penalised: list[bool]
    routed: list[bool]  # False: no reward covers the row's task
    penalty_reasons: list[list[str]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)  # this batch's counts, "<name>/<stat>" or "unrouted"
    reason_names: tuple[str, ...] = ()  # every reason the penalty can give (its REASONS), fired or not

    def metrics(self, group_index: Sequence[int] | None = None) -> dict[str, float]:
        """The batch's numbers for logging:

        train/reward/{total,correctness,format_penalty}   batch means
        train/reward/<name>          mean over the rows routed to that reward only (left out when none is)
        train/reward/std             mean over groups (`group_index`, one id per row) of the group's
                                     unbiased reward std, the spread group_norm divides by
        train/format_penalty_rate    fraction of rows penalised
        train/penalty/<reason>       fraction of rows where that penalty reason fired (each of
                                     `reason_names`, 0 when it did not)
        train/reward_stats/<key>     `stats`: counts in this batch, e.g. mcqa/timeouts, unrouted
        """
        n = len(self.total)
        out = {"train/reward/total": _mean(self.total), "train/reward/correctness": _mean(self.correctness),
               "train/reward/format_penalty": _mean(self.format_penalty),
               "train/format_penalty_rate": _mean([float(p) for p in self.penalised])}
        for name, values in self.per_reward.items():
            scored = [v for v in values if v is not None]
            if scored:
                out[f"train/reward/{name}"] = _mean(scored)
        if group_index is not None:
            out["train/reward/std"] = mean_group_std(self.total, group_index)
        fired = Counter(reason for reasons in self.penalty_reasons for reason in set(reasons))
        out.update({f"train/penalty/{reason}": fired[reason] / n for reason in {*self.reason_names, *fired}})
        out.update({f"train/reward_stats/{key}": float(count) for key, count in self.stats.items()})
        return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def mean_group_std(values: Sequence[float], group_index: Sequence[int]) -> float:
    """Mean over groups of each group's unbiased std (a group of one has spread 0)."""
    if len(values) != len(group_index):
        raise ValueError(f"{len(group_index)} group ids for {len(values)} values")
    groups: dict[int, list[float]] = {}
    for value, group in zip(values, group_index):
        groups.setdefault(int(group), []).append(value)
    stds = []
    for members in groups.values():
        mean = _mean(members)
        spread = sum((v - mean) ** 2 for v in members) / (len(members) - 1) if len(members) > 1 else 0.0
        stds.append(math.sqrt(spread))
    return _mean(stds)


# Counters logged for every reward and penalty that keeps `stats`, in every batch (0 when nothing
# happened or no row was routed to it), so a chart of them exists before the first failure; any
# other counter is logged from its first count on.
ALWAYS_COUNTED = ("timeouts", "errors")


def counted_since(counter: Any, before: Mapping[str, int]) -> Counter[str]:
    """What `counter` (a reward's `stats`, or None) gained since the snapshot `before`."""
    if not isinstance(counter, Mapping):
        return Counter()
    return +Counter({key: counter[key] - before.get(key, 0) for key in counter})  # + drops the zeros


def _plain(value: Any) -> Any:
    """DictConfig/ListConfig → dict/list, one level (leaves instantiated objects alone)."""
    try:
        from omegaconf import DictConfig, ListConfig
    except ImportError:  # omegaconf is a dependency; plain Python input needs no conversion
        return value
    if isinstance(value, DictConfig):
        return {str(k): value[k] for k in value.keys()}
    if isinstance(value, ListConfig):
        return list(value)
    return value


def _routed_reward(name: str, spec: Any) -> RoutedReward:
    spec = _plain(spec)
    if not isinstance(spec, Mapping) or "fn" not in spec or "tasks" not in spec:
        raise ConfigError(f"reward {name!r} needs a mapping with 'fn', 'tasks' (and 'weight')")
    fn = spec["fn"]
    if isinstance(_plain(fn), Mapping):  # a `_target_` node Hydra did not instantiate
        from hydra.utils import instantiate

        fn = instantiate(fn)
    if not callable(fn):
        raise ConfigError(f"reward {name!r}: fn is not callable ({type(fn).__name__})")
    tasks = _plain(spec["tasks"])
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise ConfigError(f"reward {name!r} routes no task")
    weight = float(spec.get("weight", 1.0))
    if not math.isfinite(weight):
        raise ConfigError(f"reward {name!r}: weight must be finite, got {weight}")
    return RoutedReward(fn, weight, frozenset(str(t) for t in tasks))


class RewardSet:
    def __init__(self, rewards: Mapping[str, Any], format_penalty: Any = None):
        rewards = _plain(rewards)
        if not rewards:
            raise ConfigError("a RewardSet needs at least one reward")
        self.rewards: dict[str, RoutedReward] = {}
        for name, spec in rewards.items():
            if name in RESERVED_NAMES:
                raise ConfigError(f"reward name {name!r} is reserved")
            self.rewards[str(name)] = _routed_reward(str(name), spec)
        self.format_penalty = format_penalty
        # every counter key a reward has ever reported: logged (as 0) in the batches it stays quiet
        self._stat_keys: dict[str, set[str]] = {}

    @property
    def tasks(self) -> frozenset[str]:
        return frozenset().union(*(r.tasks for r in self.rewards.values()))

    def __call__(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]],
                 completion_ids: Sequence[Sequence[int]] | None = None) -> RewardResult:
        """Score `completions` (one row each); `completion_ids` (token ids) go to TRL-style
        functions that take them."""
        n = len(completions)
        if len(rows) != n:
            raise ValueError(f"{len(rows)} rows for {n} completions")
        tasks = [str(row.get("task")) for row in rows]
        correctness = [0.0] * n
        routed = [False] * n
        per_reward: dict[str, list[float | None]] = {}
        stats: Counter[str] = Counter()
        for name, reward in self.rewards.items():
            index = [i for i in range(n) if tasks[i] in reward.tasks]
            per_reward[name] = [None] * n
            if not index:  # its counters are still logged (as 0), so every chart exists from step 1
                self._report(name, {}, stats, ALWAYS_COUNTED if hasattr(reward.fn, "stats") else ())
                continue
            ids = [completion_ids[i] for i in index] if completion_ids is not None else None
            scores = self._run(name, reward.fn, [completions[i] for i in index], [rows[i] for i in index], stats, ids)
            for i, score in zip(index, scores):
                per_reward[name][i] = score
                correctness[i] += 0.0 if score is None else reward.weight * score
                routed[i] = True
        stats["unrouted"] = n - sum(routed)
        penalties, reasons = self._penalise(completions, rows, stats)
        total = [c + p for c, p in zip(correctness, penalties)]
        return RewardResult(total, correctness, penalties, per_reward, [p != 0.0 for p in penalties], routed,
                            reasons, dict(stats), tuple(getattr(self.format_penalty, "REASONS", ())))

    def _counted(self, name: str, fn: Any, call: Callable[[], Any], stats: Counter[str]) -> Any:
        """`call()`; what it added to `fn.stats` goes into this batch's `stats`."""
        before = Counter(getattr(fn, "stats", None) or {})
        out = call()
        self._report(name, counted_since(getattr(fn, "stats", None), before), stats,
                     ALWAYS_COUNTED if hasattr(fn, "stats") else ())
        return out

    def _report(self, name: str, gained: Mapping[str, int], stats: Counter[str], always: Sequence[str] = ()) -> None:
        """Add `gained` to `stats` as "<name>/<key>", with 0 for every key this reward ever reported."""
        keys = self._stat_keys.setdefault(name, set())
        keys.update(always, gained)
        for key in keys:
            stats[f"{name}/{key}"] += gained.get(key, 0)

    def _run(self, name: str, fn: Callable, completions: list[str], rows: list[Mapping],
             stats: Counter[str], completion_ids: list | None = None) -> list[float | None]:
        keys = {k for row in rows for k in row.keys()} - _NOT_COLUMNS
        columns = {k: [row.get(k) for row in rows] for k in keys}
        values = self._counted(name, fn, lambda: call_reward(fn, completions, columns, completion_ids), stats)
        if len(values) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(values)} scores for {len(completions)}")
        not_applicable = sum(v is None for v in values)
        if not_applicable:
            self._report(name, {"not_applicable": not_applicable}, stats)
        clean = self._clean(name, [v for v in values if v is not None], stats)
        numbers = iter(clean)
        return [None if v is None else next(numbers) for v in values]

    def _clean(self, name: str, values: Sequence[Any], stats: Counter[str]) -> list[float]:
        """Finite floats; anything else becomes 0 and is counted as "<name>/invalid"."""
        clean, invalid = [], 0
        for value in values:
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            invalid += not math.isfinite(number)
            clean.append(number if math.isfinite(number) else 0.0)
        self._report(name, {"invalid": invalid} if invalid else {}, stats)
        return clean

    def _penalise(self, completions: Sequence[str], rows: Sequence[Mapping],
                  stats: Counter[str]) -> tuple[list[float], list[list[str]]]:
        """A penalty with `assess` (ours) gives its reasons too; any other callable only values."""
        n = len(completions)
        penalty_fn = self.format_penalty
        if penalty_fn is None:
            return [0.0] * n, [[] for _ in range(n)]
        prompts = [row.get("prompt") for row in rows]
        if hasattr(penalty_fn, "assess"):
            reasons = self._counted("format_penalty", penalty_fn,
                                    lambda: penalty_fn.assess(completions, prompts=prompts), stats)
            penalty = float(penalty_fn.penalty)
            return [penalty if found else 0.0 for found in reasons], reasons
        raw = self._counted("format_penalty", penalty_fn, lambda: penalty_fn(completions, prompts=prompts), stats)
        values = self._clean("format_penalty", list(raw), stats)
        if len(values) != n:
            raise ValueError(f"format penalty returned {len(values)} values for {n}")
        return values, [[] for _ in range(n)]
