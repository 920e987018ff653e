"""PhaseProfiler: Lightning's SimpleProfiler that also keeps when each action ran.

Given as the trainer's profiler (`trainer.profiler._target_=grpo_bench.profiler.PhaseProfiler`), it
records every profiled action as (name, start, end) and writes them as JSON to `events_path` when
the run ends (Lightning calls `teardown`), for `phases.steps_from_events` to read.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from lightning.pytorch.profilers import SimpleProfiler


class PhaseProfiler(SimpleProfiler):
    def __init__(self, events_path: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.events_path = events_path
        self.events: list[tuple[str, float, float]] = []
        self._open: dict[str, float] = {}

    def start(self, action_name: str) -> None:
        super().start(action_name)
        self._open[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        end = time.perf_counter()
        super().stop(action_name)
        self.events.append((action_name, self._open.pop(action_name), end))

    def teardown(self, stage: str | None) -> None:
        if self.events_path:
            Path(self.events_path).write_text(json.dumps(self.events))
        super().teardown(stage)
