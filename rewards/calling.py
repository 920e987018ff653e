"""How a reward set calls a reward function: our convention and TRL's, unchanged.

    ours   fn(completions: list[str], **columns) -> list[float]
    TRL    fn(prompts=..., completions=..., completion_ids=..., **columns) -> list[float | None]

`call_reward` passes everything by keyword (completions positionally when the function does not
name that parameter), and `prompts` / `completion_ids` only to a function that names them or takes
`**kwargs`; a function without `**kwargs` gets only the columns it names. When the batch is
conversational (its `prompt` column holds message lists, as in TRL's conversational datasets),
completions go out in TRL's conversational form, `[{"role": "assistant", "content": text}]`; our
rewards read either form (`secreason.rewards.as_text`). A None score means "not applicable"
(TRL's meaning): the reward set leaves it out of that reward's mean and of the weighted sum.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping, Sequence


@functools.lru_cache(maxsize=256)
def _signature(fn: Callable) -> tuple[frozenset[str], bool]:
    """(parameter names, takes **kwargs) of a callable; an opaque one takes everything."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset(), True
    names = frozenset(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def is_conversational(prompts: Sequence[Any]) -> bool:
    """TRL's test: the prompts are lists of {"role", "content"} messages."""
    return bool(prompts) and all(isinstance(p, list) and all(isinstance(m, Mapping) for m in p) for p in prompts)


def call_reward(fn: Callable, completions: Sequence[Any], columns: Mapping[str, list],
                completion_ids: Sequence[Sequence[int]] | None = None) -> list:
    """`fn`'s scores for `completions` (one per completion), called by its own convention."""
    prompts = columns.get("prompt")
    if prompts is not None and is_conversational(prompts):
        completions = [[{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in completions]
    try:
        names, var_kw = _signature(fn)
    except TypeError:  # an unhashable callable (a bound method of an unhashable object)
        names, var_kw = _signature.__wrapped__(fn)
    extra = {"prompts": prompts, "completion_ids": completion_ids}
    kwargs = {**columns, **{k: v for k, v in extra.items() if v is not None}}
    if not var_kw:
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    if "completions" in names:
        return list(fn(completions=list(completions), **kwargs))
    return list(fn(list(completions), **kwargs))
