"""Profiler events → seconds per phase for each training step.

GRPOModule and the sampler callbacks name their phases through Lightning's profiler
(`trainer.profiler.profile("grpo/…")`); Lightning itself profiles every hook and the step body.
An event is (action name, start, end) in seconds of one clock. A step opens at the first
`*.on_train_batch_start` hook after the previous step's `run_training_batch` (the sampler generates
in that hook) and runs to the next step's opening; the last step ends with its last
`*.on_train_batch_end` hook (where the sampler syncs). "other" is the step's time outside every
named phase: rollout metrics, logging, data loading, Lightning's own work.
"""
from __future__ import annotations

from typing import Iterable, Sequence

# column → profiler action
PHASE_ACTIONS = {"generate": "grpo/generate", "reward": "grpo/reward", "ref_old": "grpo/ref",
                 "fwd_bwd": "grpo/fwd_bwd", "optim": "grpo/optimizer", "sync": "grpo/sync"}
PHASES = (*PHASE_ACTIONS, "other")
STEP_BODY = "run_training_batch"
OPENING_HOOK, CLOSING_HOOK = ".on_train_batch_start", ".on_train_batch_end"

Event = tuple[str, float, float]


def step_windows(events: Iterable[Event]) -> list[tuple[float, float]]:
    """(start, end) of each training step, in order."""
    starts: list[float] = []
    body_seen, last_close = True, None
    for name, start, end in sorted(events, key=lambda e: e[1]):
        if name.endswith(OPENING_HOOK) and body_seen:
            starts.append(start)
            body_seen = False
        elif name == STEP_BODY:
            body_seen = True
        elif name.endswith(CLOSING_HOOK) and starts:
            last_close = end if last_close is None else max(last_close, end)
    if not starts:
        return []
    ends = starts[1:] + [last_close if last_close is not None and last_close > starts[-1] else starts[-1]]
    return list(zip(starts, ends))


def steps_from_events(events: Sequence[Event]) -> list[dict[str, float]]:
    """One dict per step: seconds in each of PHASES, and "total" (the step's wall time).

    A phase event counts in the step where it starts; a phase called several times in a step
    (μ > 1 updates) adds up.
    """
    steps = []
    for start, end in step_windows(events):
        step = {phase: 0.0 for phase in PHASE_ACTIONS}
        for phase, action in PHASE_ACTIONS.items():
            step[phase] = sum(e - s for name, s, e in events if name == action and start <= s < end)
        step["total"] = end - start
        step["other"] = step["total"] - sum(step[p] for p in PHASE_ACTIONS)
        steps.append(step)
    return steps
