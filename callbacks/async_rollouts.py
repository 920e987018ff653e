"""One-step off-policy rollouts (`algorithm.async_rollouts=1`): the next batch's rollouts are
generated in a background thread while this batch trains.

At the start of training batch t the sampler callback takes batch t's rollout (generated during
step t-1, from the weights step t-1 started from) and starts the job for batch t+1 from the
current weights. Batch t+1's prompts are known ahead because the data stream is a fixed order
(`ResumableDataModule.stream_batch`); the loader's batch is checked against them, and a mismatch
(or no job, as at the first batch) falls back to generating in line. `rollout/staleness` is the
number of optimizer steps between the weights that generated a batch and the weights it trains
from: 0 in line, `updates_per_batch` ahead.

Which weights: an HF generator samples from the live policy, so the job runs on a frozen copy
(`shadow`) loaded from the policy as the job starts; a vLLM engine already holds the weights of
the last sync, and the sync after the step waits for the job. The staleness is corrected by the
truncated IS weights (`algorithm.is_cap`): their π_old is the trainer's current policy, their
π_sampler the generating policy's logprobs as the sampler reported them.

Exact resume: a checkpoint waits for the job and stores its rollout (`state`), so a resumed run
trains batch t+1 on the very rollout an uninterrupted run does. Caveat: HF sampling seeds torch's
global generator in the job thread (under fork_rng), so training must not draw from it meanwhile;
GRPO does not (no dropout), and the equivalence test checks the result bit for bit.

Threads (CPU): while the job runs it has half the cores and the training thread the rest; the
training thread takes them all back at the first backward hook after the job is done. That point
depends on timing, so with more than one thread a kernel may run at another thread count than in
the uninterrupted run: eager bf16 forwards and gradients are bit-identical at 1 and 2 threads on
the small model, compiled gradients differ by rounding (1.9e-9 in 1 of 74 tensors). At one thread
per process (the tests) nothing moves.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import asdict
from typing import Any, Callable

import torch

from secreason.rollout import Rollout

log = logging.getLogger(__name__)


class RolloutAhead:
    """At most one background generate call: the rollout of stream batch `index` from `prompt_ids`,
    generated from the weights of optimizer step `made_at_step`."""

    def __init__(self) -> None:
        self.index: int | None = None
        self.prompt_ids: list[list[int]] | None = None
        self.made_at_step = 0
        self.busy_s = 0.0  # seconds the last job ran
        self._thread: threading.Thread | None = None
        self._result: Rollout | None = None
        self._error: BaseException | None = None

    @property
    def pending(self) -> bool:
        return self.index is not None

    def start(self, generate: Callable[[list[list[int]]], Rollout], prompt_ids: list[list[int]], index: int,
              step: int) -> None:
        self.wait()
        self.index, self.prompt_ids, self.made_at_step = index, prompt_ids, step
        self._result, self._error = None, None
        # The cores are split while the job runs: generation and training each at full width would
        # oversubscribe them (OpenMP workers spinning against each other). A new thread's OpenMP team
        # would otherwise take every core. The training thread takes its count back as soon as the job
        # is done (`reclaim_threads`, between micro-batches), not at the step's end: generation is the
        # shorter half, and training on half the cores for the rest of the step made the async step
        # barely faster than the synchronous one (benchmarks/RESULTS.md).
        self._threads = threads = torch.get_num_threads()
        job_threads = max(1, threads // 2)
        torch.set_num_threads(max(1, threads - job_threads))

        def run() -> None:
            torch.set_num_threads(job_threads)
            t0 = time.perf_counter()
            try:
                self._result = generate(prompt_ids)
            except BaseException as e:  # re-raised in the training thread by `take`/`wait`
                self._error = e
            self.busy_s = time.perf_counter() - t0

        self._thread = threading.Thread(target=run, name="rollouts-ahead", daemon=True)
        self._thread.start()

    def reclaim_threads(self) -> None:
        """In the training thread: its full thread count back once the job has finished (OpenMP's
        thread count is per calling thread, so the job cannot hand it back itself)."""
        if self._thread is not None and not self._thread.is_alive() and torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)

    def wait(self) -> None:
        """Block until the running job (if any) has finished; its error, if it raised, is raised here."""
        if self._thread is not None:
            self._thread.join()
            self.reclaim_threads()
            self._thread = None
        if self._error is not None:
            error, self._error, self.index = self._error, None, None
            raise error

    def take(self, index: int, prompt_ids: list[list[int]]) -> tuple[Rollout, int] | None:
        """(the rollout, the step its weights are from) if the job was for batch `index` with these
        prompts; None otherwise (the job, if any, is dropped)."""
        self.wait()
        match = self.index == index and self.prompt_ids == list(prompt_ids) and self._result is not None
        if self.index is not None and not match:
            log.warning("async_rollouts: the rollout generated ahead was for other prompts than batch %d's "
                        "(a data order this sampler cannot foresee); generating in line", index)
        result = (self._result, self.made_at_step) if match else None
        self.index, self.prompt_ids, self._result = None, None, None
        return result

    def state(self) -> dict | None:
        """The finished job as plain tensors and lists (for the checkpoint), or None."""
        self.wait()
        if self.index is None or self._result is None:
            return None
        return {"index": self.index, "prompt_ids": self.prompt_ids, "made_at_step": self.made_at_step,
                "rollout": asdict(self._result)}

    def load_state(self, state: dict | None) -> None:
        self.wait()
        if state is None:
            self.index, self.prompt_ids, self._result = None, None, None
            return
        self.index, self.prompt_ids = int(state["index"]), [list(p) for p in state["prompt_ids"]]
        self.made_at_step, self._result = int(state["made_at_step"]), Rollout(**state["rollout"])


class Shadow:
    """A frozen copy of the policy for an HF generator's background job, reloaded from the policy
    each time (one copy for the run, so no allocation per step)."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None

    def of(self, policy: torch.nn.Module) -> torch.nn.Module:
        if self.model is None:
            self.model = copy.deepcopy(policy).requires_grad_(False)
        else:
            with torch.no_grad():
                for mine, theirs in zip(self.model.state_dict().values(), policy.state_dict().values()):
                    mine.copy_(theirs)
        return self.model


def generator_on(gen: Any, model: torch.nn.Module | None) -> Any:
    """A shallow copy of generator `gen` bound to `model` (None: the same model): the job's own
    object, so the training thread's generator is not touched while it runs; its call count is
    copied back when the job is taken."""
    clone = copy.copy(gen)
    if model is not None:
        clone.model = model
    return clone
