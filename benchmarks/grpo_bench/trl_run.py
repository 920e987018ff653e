"""One run of TRL's GRPOTrainer on the same model, prompts, rewards and shapes as ours (optional).

TRL is a benchmark-only dependency: `unavailable()` says why it cannot run (then the CLI skips the TRL
rows). TRL names no phases, so its own methods are timed by wrapping them (its code, not ours):
`_generate_single_turn` → generate, `_calculate_rewards` → reward, no-grad
`_get_per_token_logps_and_entropies` → ref/old, `training_step` outside `_prepare_inputs` → fwd+bwd,
grad clipping and the optimizer's step (torch's public step hooks) → optim. The wrappers record events
under the profiler's phase names, and the steps are TRL's callback steps (`on_step_begin` to the
next), so `phases.phase_seconds` reads both systems alike.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .phases import PHASE_ACTIONS, phase_seconds
from .spec import NUM_GENERATIONS, PROMPTS_PER_STEP, ROOT, OthersCpu


def unavailable() -> str | None:
    """None when `import trl` works, else the reason."""
    try:
        import trl  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"{type(e).__name__}: {e}"
    return None


class EventLog:
    """(action, start, end) events, step windows and per-step fields of a TRL run."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float]] = []
        self.starts: list[float] = []
        self.end: float | None = None
        self.records: list[dict] = []
        self.cpu = OthersCpu()

    def wrap(self, obj, name: str, phase: str, when=None) -> None:
        """Record every call of obj.name as a `phase` event (only when `when()` is true, if given)."""
        fn, action = getattr(obj, name), PHASE_ACTIONS[phase]

        def timed(*args, **kwargs):
            if when is not None and not when():
                return fn(*args, **kwargs)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.events.append((action, t, time.perf_counter()))

        setattr(obj, name, timed)

    def step_begin(self) -> None:
        self.mark_cpu()
        self.starts.append(time.perf_counter())
        self.records.append({})

    def mark_cpu(self) -> None:
        share = self.cpu.mark()
        if self.records and share is not None:
            self.records[-1]["others_cpu"] = share

    def steps(self) -> list[dict]:
        ends = self.starts[1:] + [self.end if self.end is not None else time.perf_counter()]
        return [{**s, **r} for s, r in zip(phase_seconds(self.events, list(zip(self.starts, ends))), self.records)]


def time_fwd_bwd(log: EventLog, trainer) -> None:
    """training_step = _prepare_inputs (generate, rewards, ref) + the loss's forward + backward: the time
    outside _prepare_inputs is recorded as fwd+bwd segments."""
    prepared: list[tuple[float, float]] = []
    prepare, step = trainer._prepare_inputs, trainer.training_step

    def timed_prepare(*a, **k):
        t = time.perf_counter()
        try:
            return prepare(*a, **k)
        finally:
            prepared.append((t, time.perf_counter()))

    def timed_step(*a, **k):
        prepared.clear()
        t = time.perf_counter()
        try:
            return step(*a, **k)
        finally:
            for s, e in zip([t] + [e for _, e in prepared], [s for s, _ in prepared] + [time.perf_counter()]):
                log.events.append((PHASE_ACTIONS["fwd_bwd"], s, e))

    trainer._prepare_inputs, trainer.training_step = timed_prepare, timed_step


def run(spec: dict, rows: list[dict]) -> dict:
    import torch
    from datasets import Dataset
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from secreason.data.chat import encode_prompt

    torch.set_num_threads(os.cpu_count() or 1)  # what our train() does (num_threads: null)
    out_dir, model_path = Path(spec["out_dir"]), spec["model_path"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=grpo", f"paths.root_dir={ROOT}",
                                                      f"paths.output_dir={out_dir}"])
    reward_set = instantiate(cfg.rewards)  # the same reward set (rewards=cyber + format penalty)
    row_keys = sorted({k for r in rows for k in r})

    def reward_fn(prompts, completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        batch_rows = [{k: kwargs[k][i] for k in row_keys if k in kwargs} for i in range(len(texts))]
        return [float(x) for x in reward_set(texts, batch_rows).total]

    reward_fn.__name__ = "secreason_reward_set"
    tok = AutoTokenizer.from_pretrained(model_path)
    data = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             **{k: r.get(k) for k in row_keys if k != "prompt"}} for r in rows]
    bf16 = spec["precision"] == "bf16"
    args = GRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=PROMPTS_PER_STEP * NUM_GENERATIONS,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, num_generations=NUM_GENERATIONS,
        max_completion_length=spec["max_tokens"], generation_kwargs={"min_new_tokens": spec["max_tokens"]},
        temperature=1.0, top_p=1.0, top_k=0, beta=0.02, epsilon=0.2, loss_type="grpo", scale_rewards="group",
        learning_rate=1e-6, lr_scheduler_type="cosine", weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", max_steps=spec["warmup"] + spec["steps"], logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, bf16=bf16, fp16=False, seed=0, disable_tqdm=True, dataloader_num_workers=0,
        log_completions=False, model_init_kwargs={"dtype": "float32", "attn_implementation": "sdpa"},
    )
    trainer = GRPOTrainer(model=model_path, reward_funcs=reward_fn, args=args, train_dataset=Dataset.from_list(data),
                          processing_class=tok)
    for r in rows[:PROMPTS_PER_STEP]:  # the same prompt token ids as ours (encode_prompt)
        theirs = trainer._tokenize_prompts([[{"role": "user", "content": r["prompt"]}]])[0][0]
        if list(theirs) != encode_prompt(tok, r["prompt"]):
            raise RuntimeError("TRL tokenizes the prompts differently from ours")

    log = EventLog()
    log.wrap(trainer, "_generate_single_turn", "generate")
    generate = trainer._generate_single_turn

    def generate_and_record(*a, **k):
        out = generate(*a, **k)
        lengths = [len(c) for c in out[0]]
        if log.records:
            log.records[-1].update(tokens=sum(lengths), len_min=min(lengths), len_max=max(lengths))
        return out

    trainer._generate_single_turn = generate_and_record
    log.wrap(trainer, "_calculate_rewards", "reward")
    log.wrap(trainer, "_get_per_token_logps_and_entropies", "ref_old", when=lambda: not torch.is_grad_enabled())
    time_fwd_bwd(log, trainer)
    log.wrap(torch.nn.utils, "clip_grad_norm_", "optim")
    optim_t: dict = {}

    class Steps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
            opt.register_step_pre_hook(lambda *a: optim_t.__setitem__("t", time.perf_counter()))
            opt.register_step_post_hook(
                lambda *a: log.events.append((PHASE_ACTIONS["optim"], optim_t["t"], time.perf_counter())))

        def on_step_begin(self, args, state, control, **kw):
            log.step_begin()

        def on_train_end(self, args, state, control, **kw):
            log.end = time.perf_counter()
            log.mark_cpu()

    trainer.add_callback(Steps())
    trainer.train()
    return {"steps": log.steps(), "meta": {"trl_args": {"bf16": bf16, "loss_type": "grpo", "beta": 0.02},
                                           "threads": torch.get_num_threads()}}
