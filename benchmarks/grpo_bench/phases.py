"""Profiler events → seconds per phase for each training step (pure: no torch, no Lightning).

GRPOModule and the sampler callbacks name their phases through Lightning's profiler
(`trainer.profiler.profile("grpo/…")`); Lightning itself profiles every hook and the step body.
An event is (action name, start, end) in seconds of one clock. A step opens at the first
`*.on_train_batch_start` hook after the previous step's `run_training_batch` (the sampler generates
in that hook) and runs to the next step's opening; the last step ends with its last
`*.on_train_batch_end` hook (where the sampler syncs). "other" is the step's time outside every
named phase: rollout metrics, logging, data loading, Lightning's own work.

TRL's run (trl_run.py) records events under the same phase names and its own step windows, and
goes through `phase_seconds` too.
"""
from __future__ import annotations

from typing import Iterable, Sequence

# column → profiler action
PHASE_ACTIONS = {"generate": "grpo/generate", "reward": "grpo/reward", "ref_old": "grpo/ref",
                 "fwd_bwd": "grpo/fwd_bwd", "optim": "grpo/optimizer", "sync": "grpo/sync"}
PHASES = (*PHASE_ACTIONS, "other")
STEP_BODY = "run_training_batch"
OPENING_HOOK, CLOSING_HOOK = ".on_train_batch_start", ".on_train_batch_end"

Event = Sequence  # (name: str, start: float, end: float); JSON gives lists
Window = tuple[float, float]


def step_windows(events: Iterable[Event]) -> list[Window]:
    """(start, end) of each Lightning training step, in order, whatever the events' order (ties included).

    Each step body (`run_training_batch`) opens at the earliest opening hook between the previous
    body's end and its own start; the last step closes at its last closing hook's end.
    """
    events = list(events)
    bodies = sorted((s, e) for name, s, e in events if name == STEP_BODY)
    opens = [s for name, s, _ in events if name.endswith(OPENING_HOOK)]
    starts, prev_end = [], float("-inf")
    for body_start, body_end in bodies:
        starts.append(min([s for s in opens if prev_end <= s <= body_start], default=body_start))
        prev_end = body_end
    if not starts:
        return []
    closes = [e for name, s, e in events if name.endswith(CLOSING_HOOK) and s >= prev_end]
    return list(zip(starts, starts[1:] + [max(closes, default=prev_end)]))


def phase_seconds(events: Sequence[Event], windows: Sequence[Window]) -> list[dict[str, float]]:
    """One dict per window: seconds in each of PHASES, and "total" (the window's length).

    A phase event counts in the window where it starts; a phase called several times in a step
    (μ > 1 updates, several micro-batch segments) adds up.
    """
    steps = []
    for start, end in windows:
        step = {phase: sum(e - s for name, s, e in events if name == action and start <= s < end)
                for phase, action in PHASE_ACTIONS.items()}
        step["total"] = end - start
        step["other"] = step["total"] - sum(step[p] for p in PHASE_ACTIONS)
        steps.append(step)
    return steps


def steps_from_events(events: Sequence[Event]) -> list[dict[str, float]]:
    """The phases of each Lightning training step, from a PhaseProfiler's events."""
    return phase_seconds(events, step_windows(events))
