"""Benchmark subsets during training (`callbacks=with_eval`): logs `val/<benchmark>/<key>`.

Every `every_n_steps` optimizer steps (and at each epoch end) the first `limit` items of each
benchmark are answered by the live policy through an `HFGenerator` bound to it, like the HF rollout
sampler, and scored by the same code as `eval.py` (the report protocol by default). It runs on
global rank zero only, the other ranks waiting at a barrier. Under FSDP generating is collective
(secreason.sampling.hf), so every rank generates the same subset in step and rank zero alone
scores and logs it. HarmBench is scored with the offline refusal judge here.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import lightning as L

from secreason.errors import ConfigError
from secreason.eval import benchmarks, metrics, prompts
from secreason.eval.generate import complete
from secreason.eval.runner import Scorer
from secreason.rewards.extraction import DEFAULT_THINK_TAGS
from secreason.sampling.hf import HFGenerator, fsdp_root

log = logging.getLogger(__name__)


class EvalCallback(L.Callback):
    def __init__(self, benchmarks: Sequence[str] = ("ctibench_mcq",), data_dir: str = "../shared/data",
                 limit: int = 16, every_n_steps: int = 50, at_epoch_end: bool = True, protocol: str = "report",
                 temperature: float = 0.6, top_p: float = 0.95, max_tokens: int = 256, seeds: int = 1,
                 seed: int = 0, batch_size: int | None = 8,
                 think_tags: Sequence[str] | None = DEFAULT_THINK_TAGS) -> None:
        if every_n_steps < 1 or limit < 1 or seeds < 1:
            raise ConfigError(f"eval callback: need every_n_steps, limit and seeds ≥ 1 "
                             f"(got {every_n_steps}, {limit}, {seeds})")
        self.names = list(benchmarks)
        self.data_dir, self.limit, self.every_n_steps = data_dir, int(limit), int(every_n_steps)
        self.at_epoch_end, self.protocol, self.seeds = at_epoch_end, protocol, int(seeds)
        self.think_tags = tuple(think_tags) if think_tags else ()
        self.sampler = HFGenerator(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                                 batch_size=batch_size)
        self.tasks: list[tuple[str, list, list, Scorer]] = []
        self.last_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Load the subsets up front, so a missing data_dir fails before training starts."""
        if self.tasks:
            return
        for name in self.names:
            bench = benchmarks.get(name)
            if self.protocol == "ctibench" and not bench.ctibench:
                raise ConfigError(f"eval callback: protocol=ctibench applies only to ctibench_*, not {name}")
            items = benchmarks.load_items(bench, self.data_dir, self.limit)
            system = prompts.CTIBENCH_SYSTEM_PROMPT if self.protocol == "ctibench" else None
            conversations = [prompts.messages(self.protocol, bench.family, it, system) for it in items]
            self.tasks.append((name, items, conversations, Scorer(bench, self.protocol, self.data_dir,
                                                                  self.think_tags)))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self.last_step:
            self.run(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_epoch_end and trainer.global_step != self.last_step:
            self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        self.last_step = trainer.global_step
        strategy = getattr(trainer, "strategy", None)  # None: a stand-in trainer, one process
        unit = fsdp_root(pl_module.model, getattr(strategy, "model", None))
        logged: dict[str, float] = {}
        if trainer.is_global_zero or unit is not None:  # under FSDP generation is collective: all ranks
            logged = self._evaluate(trainer, pl_module, unit)
        if strategy is not None:
            strategy.barrier("eval_callback")  # the other ranks wait for rank zero's eval
        return logged

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, unit) -> dict[str, float]:
        self.sampler.bind(pl_module.model, pl_module.tokenizer)
        self.sampler.gather_from(unit)
        logged: dict[str, float] = {}
        for name, items, conversations, scorer in self.tasks:
            outputs = complete(self.sampler, pl_module.tokenizer, conversations, self.seeds, self.think_tags)
            if not trainer.is_global_zero:  # it only stepped along with rank zero's generation
                continue
            per_seed = [scorer.score(items, [o[s] for o in outputs])[1] for s in range(self.seeds)]
            for key, value in metrics.over_seeds(per_seed, scorer.metric_keys).items():
                logged[f"val/{name}/{key}"] = value
        if not trainer.is_global_zero:
            return {}
        for key, value in logged.items():
            pl_module.log(key, value, rank_zero_only=True, batch_size=1)
        log.info("step %d eval subset: %s", trainer.global_step, logged)
        return logged
