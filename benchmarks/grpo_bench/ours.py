"""One run of ours: `secreason.run.train(cfg)` (the body of `train.py`) with the config composed from conf/.

The phases come from Lightning's profiler: the config's `trainer.profiler` is a PhaseProfiler
(`_target_`), which keeps every profiled action's start and end; GRPOModule and the sampler callbacks
name theirs (`grpo/generate`, `grpo/reward`, `grpo/ref`, `grpo/fwd_bwd`, `grpo/optimizer`, `grpo/sync`).
Completions are forced to the full length through the samplers' public knobs:
`sampler.generate_kwargs.min_new_tokens` (HF) and `sampler.sampling_kwargs.min_tokens` (vLLM).

A StepRecorder callback, added to the config's `callbacks`, records what the profiler does not: each
step's completion lengths, the sampler/trainer logprob diff, the CPU other processes used, and, in a
lever run, switches the lever's public setting from one step to the next (A B A B …).
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from .phases import steps_from_events
from .profiler import PhaseProfiler
from .spec import NUM_GENERATIONS, PROMPTS_PER_STEP, ROOT, OthersCpu

LOGPROB_DIFF_KEYS = ("rollout/logprob_diff_mean", "rollout/logprob_diff_max")


def target(cls: type) -> str:
    """The `_target_` of a class (its module is `grpo_bench.…` when the CLI runs as a script)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def apply_lever(lever: str | None, option: int, pl_module, sampler, threads: int) -> None:
    """Set the lever's public setting for this step: option 0 is the project's default."""
    import torch

    first = option == 0
    if lever == "threads":
        torch.set_num_threads(threads if first else 1)
    elif lever == "engine_threads":
        sampler.engine_threads = 1 if first else threads
    elif lever == "share_prompts":
        pl_module.share_prompts = first
    elif lever == "selective_logprobs":
        pl_module.selective_logprobs = not first
    elif lever == "compile":  # the run has model.compile=true (LEVER_SETTINGS); eager = the compiled forward unset
        for module, compiled in compiled_forwards(pl_module).items():
            module._compiled_call_impl = None if first else compiled
    elif lever is not None:
        raise ValueError(f"unknown lever {lever!r}")


def compiled_forwards(pl_module) -> dict:
    """The compiled forwards (nn.Module.compile) of the policy and a separate reference, kept on first use."""
    if not hasattr(pl_module, "_bench_compiled"):
        modules = [pl_module.model, *getattr(pl_module, "_ref", [])]
        pl_module._bench_compiled = {m: m._compiled_call_impl for m in modules}
        if not all(pl_module._bench_compiled.values()):
            raise RuntimeError("the compile lever needs a run with model.compile=true")
    return pl_module._bench_compiled


class StepRecorder(L.Callback):
    """Per step: the lever's option (index), tokens and completion lengths, logprob diff, others' CPU."""

    def __init__(self, records_path: str, lever: str | None = None, n_options: int = 0) -> None:
        self.records_path, self.lever, self.n_options = records_path, lever, int(n_options)
        self.records: list[dict] = []
        self.cpu = OthersCpu()

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        from secreason.callbacks.sampler import SamplerCallback

        self.threads = torch.get_num_threads()
        self.sampler = next((cb for cb in trainer.callbacks if isinstance(cb, SamplerCallback)), None)

    def _close_step(self) -> None:
        share = self.cpu.mark()
        if self.records and share is not None:
            self.records[-1]["others_cpu"] = share

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._close_step()
        record: dict = {}
        if self.n_options:
            record["option"] = len(self.records) % self.n_options
            apply_lever(self.lever, record["option"], pl_module, self.sampler, self.threads)
        self.records.append(record)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rollout = batch.get("rollout") if isinstance(batch, dict) else None
        if rollout is not None:
            lengths = rollout.completion_mask.sum(-1)
            self.records[-1].update(tokens=int(lengths.sum()), len_min=int(lengths.min()),
                                    len_max=int(lengths.max()))
        for key in LOGPROB_DIFF_KEYS:
            if key in trainer.callback_metrics:
                self.records[-1][key.split("/")[-1]] = float(trainer.callback_metrics[key])

    def on_train_end(self, trainer, pl_module) -> None:
        self._close_step()
        Path(self.records_path).write_text(json.dumps({"records": self.records, "threads": self.threads}))


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def overrides(spec: dict, events_path: Path, records_path: Path) -> list[str]:
    """The Hydra overrides of one run: `+experiment=grpo` at the benchmark's shapes, no checkpoints (not
    even Lightning's default one) or loggers, the PhaseProfiler as the trainer's profiler and the
    StepRecorder as a callback."""
    n_options = len(spec.get("options") or [])
    total = (spec["warmup"] + spec["steps"]) * max(1, n_options)
    full_length = ("sampler.generate_kwargs.min_new_tokens" if spec["system"] == "hf"
                   else "sampler.sampling_kwargs.min_tokens")
    out = [
        "+experiment=grpo", f"model={spec['size']}", f"sampler={spec['system']}",
        f"sampler.max_tokens={spec['max_tokens']}", f"++{full_length}={spec['max_tokens']}",
        f"algorithm.num_generations={NUM_GENERATIONS}",
        f"data.batch_size={PROMPTS_PER_STEP}", f"data.path={_quoted(Path(spec['prompts_dir']))}", "data.tasks=null",
        f"trainer.precision={'bf16-mixed' if spec['precision'] == 'bf16' else '32-true'}",
        f"trainer.max_steps={total}", "trainer.max_epochs=1000", "trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false", "++trainer.enable_checkpointing=false",
        "callbacks.model_checkpoint=null", "callbacks.hf_export=null",
        "logger.wandb=null", "logger.csv=null", f"paths.root_dir={_quoted(ROOT)}",
        f"paths.output_dir={_quoted(Path(spec['out_dir']))}",
        f"trainer.profiler={{_target_:{target(PhaseProfiler)},events_path:{_quoted(events_path)}}}",
        f"+callbacks.bench_recorder={{_target_:{target(StepRecorder)},records_path:{_quoted(records_path)},"
        f"lever:{spec.get('lever') or 'null'},n_options:{n_options}}}",
    ]
    spec = {**SPEC_DEFAULTS, **LEVER_SETTINGS.get(spec.get("lever"), {}), **spec}
    out += [f"{SPEC_KEYS[key]}={_value(spec[key])}" for key in SPEC_KEYS if key in spec]
    return out


# A variant's extra keys (spec.MAIN_VARIANTS) and the public config keys they set.
SPEC_KEYS = {"sampler_dtype": "sampler.dtype", "enforce_eager": "sampler.enforce_eager",
             "engine_threads": "sampler.engine_threads", "async_rollouts": "algorithm.async_rollouts",
             "is_cap": "algorithm.is_cap", "compile": "model.compile",
             "micro_batch_size": "algorithm.micro_batch_size"}
# What a variant gets for a key it does not set, where the benchmark's shape differs from the config's default:
# the whole step's completions in one micro-batch.
SPEC_DEFAULTS = {"micro_batch_size": PROMPTS_PER_STEP * NUM_GENERATIONS}


# What a lever's run needs set to switch it step by step (the compile lever: both forwards compiled).
LEVER_SETTINGS = {"compile": {"compile": True}}


def _value(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def merge_records(steps: list[dict], records: list[dict], options: list[str] | None) -> list[dict]:
    """The profiler's steps with the recorder's per-step fields (an option index becomes its label)."""
    if len(steps) != len(records):
        raise RuntimeError(f"the profiler saw {len(steps)} steps, the recorder {len(records)}")
    merged = []
    for step, record in zip(steps, records):
        record = dict(record)
        if "option" in record:
            record["option"] = options[record["option"]]
        merged.append({**step, **record})
    return merged


def run(spec: dict) -> dict:
    """Train for the spec's steps; {"steps": per-step phases and fields, "meta": the overrides, threads}."""
    from hydra import compose, initialize_config_dir

    from secreason.run import train

    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    events_path, records_path = out_dir / "profiler_events.json", out_dir / "step_records.json"
    ov = overrides(spec, events_path, records_path)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=ov)
    train(cfg)
    recorded = json.loads(records_path.read_text())
    steps = steps_from_events(json.loads(events_path.read_text()))
    return {"steps": merge_records(steps, recorded["records"], spec.get("options")),
            "meta": {"overrides": ov, "threads": recorded["threads"]}}
