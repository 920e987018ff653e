"""Dynamic sampling that refills (`algorithm.dynamic_sampling.max_rounds`), as in DAPO, verl and SkyRL.

A group whose completions all score the same correctness has advantage 0: it teaches nothing.
After the batch's B prompts are sampled, `refill_batch` keeps the groups with non-zero variance,
draws more prompts (as many as are missing) from an extra prompt stream, samples them, and
repeats until B groups vary or `max_rounds` extra rounds have run. Short of B after the last
round, the batch is topped up with zero-variance groups in the order they were drawn, so it
always has B groups (those train on the KL term only, or are dropped by
`filter_zero_std_groups`).

Variance is judged on `RewardResult.correctness` (the verifier's score, without the format
penalty), so a group that differs only in formatting does not count as informative.

Every extra prompt comes from `ExtraPromptStream` (secreason.data.resumable), whose position is in
the sampler callback's checkpoint state, and every extra `generate` call moves the generator's
call count (its seeds): a resumed run refills exactly as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from secreason.rollout import Rollout


def score_rollout(reward_set: Any, rollout: Rollout, rows: list[dict], n: int):
    """The reward set's RewardResult for `rollout`'s N = len(rows)·n completions (row i's n in a run)."""
    expanded = [row for row in rows for _ in range(n)]
    ids = [row[mask.bool()].tolist() for row, mask in zip(rollout.completion_ids, rollout.completion_mask)]
    return reward_set(rollout.texts, expanded, completion_ids=ids)  # ids: for TRL-style rewards


def varied_groups(correctness: torch.Tensor, group_index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """bool [B]: group g's correctness values (of correctness [N], rows by group_index [N]) are not all equal."""
    lo = torch.full((num_groups,), float("inf")).scatter_reduce(0, group_index, correctness, "amin")
    hi = torch.full((num_groups,), float("-inf")).scatter_reduce(0, group_index, correctness, "amax")
    return hi > lo


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """Rollouts of different prompt/completion widths as one: prompts re-left-padded, completions
    re-right-padded (pad ids from each part's own padding), group indices offset part by part."""
    p_width = max(r.prompt_ids.shape[1] for r in parts)
    c_width = max(r.completion_ids.shape[1] for r in parts)

    def left(x: torch.Tensor, width: int, fill) -> torch.Tensor:
        return torch.cat([torch.full((x.shape[0], width - x.shape[1]), fill, dtype=x.dtype), x], 1)

    def right(x: torch.Tensor, width: int, fill) -> torch.Tensor:
        return torch.cat([x, torch.full((x.shape[0], width - x.shape[1]), fill, dtype=x.dtype)], 1)

    def pad_id(ids: torch.Tensor, mask: torch.Tensor) -> int:
        padding = ids[mask == 0]
        return int(padding[0]) if padding.numel() else 0

    offset, groups = 0, []
    for r in parts:
        groups.append(r.group_index + offset)
        offset += int(r.group_index.max()) + 1 if r.group_index.numel() else 0
    return Rollout(
        prompt_ids=torch.cat([left(r.prompt_ids, p_width, pad_id(r.prompt_ids, r.prompt_mask)) for r in parts]),
        prompt_mask=torch.cat([left(r.prompt_mask, p_width, 0) for r in parts]),
        completion_ids=torch.cat([right(r.completion_ids, c_width, pad_id(r.completion_ids, r.completion_mask))
                                  for r in parts]),
        completion_mask=torch.cat([right(r.completion_mask, c_width, 0) for r in parts]),
        sampler_logprobs=torch.cat([right(r.sampler_logprobs, c_width, 0.0) for r in parts]),
        group_index=torch.cat(groups), truncated=torch.cat([r.truncated for r in parts]),
        texts=[t for r in parts for t in r.texts], meta=dict(parts[0].meta))


def take_groups(rollout: Rollout, groups: list[int]) -> Rollout:
    """The rows of `groups` (in that order) as a Rollout whose group indices are 0…len(groups)-1."""
    rows = torch.cat([(rollout.group_index == g).nonzero().squeeze(-1) for g in groups])
    picked = rollout.select(rows)
    renumber = {g: i for i, g in enumerate(groups)}
    return replace(picked, group_index=torch.tensor([renumber[int(g)] for g in picked.group_index]))


@dataclass
class Refilled:
    rollout: Rollout
    prompt_ids: list[list[int]]
    rows: list[dict]
    rounds: int           # extra sampling rounds run
    extra_prompts: int    # prompts drawn from the extra stream
    varied: int           # groups of the batch with non-zero correctness variance


def refill_batch(prompt_ids: list[list[int]], rows: list[dict], rollout: Rollout, n: int, max_rounds: int,
                 correctness: Callable[[Rollout, list[dict]], torch.Tensor],
                 draw: Callable[[int], tuple[list[list[int]], list[dict]]],
                 generate: Callable[[list[list[int]], int], Rollout]) -> Refilled:
    """Refill the batch of B = len(prompt_ids) groups (`rollout`, sampled from them) to B groups of
    non-zero correctness variance, with at most `max_rounds` extra rounds.

    `correctness(rollout, rows)` -> [N] float; `draw(k)` -> k more (prompt ids, rows) from the stream;
    `generate(prompt_ids, n)` -> their Rollout. Returns the batch to train on (B groups: varied ones
    first in draw order, then zero-variance ones if the rounds ran out) and what the refill did.
    """
    target = len(prompt_ids)
    parts, all_ids, all_rows = [rollout], list(prompt_ids), list(rows)
    varied = varied_groups(correctness(rollout, rows), rollout.group_index, len(rows)).tolist()
    rounds = extra = 0
    while sum(varied) < target and rounds < max_rounds:
        ids, more = draw(target - sum(varied))
        r = generate(ids, n)
        parts.append(r)
        all_ids += ids
        all_rows += more
        varied += varied_groups(correctness(r, more), r.group_index, len(more)).tolist()
        rounds, extra = rounds + 1, extra + len(more)
    if rounds == 0:
        return Refilled(rollout, list(prompt_ids), list(rows), 0, 0, sum(varied))
    good = [g for g, v in enumerate(varied) if v][:target]
    chosen = good + [g for g, v in enumerate(varied) if not v][:target - len(good)]
    batch = take_groups(concat_rollouts(parts), chosen)
    return Refilled(batch, [all_ids[g] for g in chosen], [all_rows[g] for g in chosen], rounds, extra, len(good))
