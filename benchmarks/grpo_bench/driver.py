"""Each system × configuration runs in its own subprocess (vLLM patches torch process-wide; a fresh
process keeps the systems apart): `run_variant` starts `grpo_step.py --worker SPEC`, and `worker`
is what that process does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .spec import ROOT, cpu_busy_s

WORKER_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false",
              "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


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


def run_variant(script: str, spec: dict, log_path: Path, timeout: int, quiet_idle: float = 0.0,
                quiet_wait: float = 600.0) -> dict:
    """The worker's result ({"steps", "meta", "spec"}), or {"error", "log"} when it failed."""
    if quiet_idle > 0:
        spec["idle_before"] = wait_for_quiet(quiet_idle, quiet_wait)
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], cwd=ROOT,
                                  env=dict(os.environ, **WORKER_ENV), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0 or not Path(spec["result"]).exists():
        tail = log_path.read_text().strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {rc}: {tail[0]}", "log": str(log_path)}
    out = json.loads(Path(spec["result"]).read_text())
    out["spec"] = spec
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident set size (the worker runs one system, vLLM's engine in process):
    getrusage's ru_maxrss, which Linux gives in KiB (macOS in bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def worker(spec: dict) -> None:
    """One run (ours or TRL), its per-step phases written to spec["result"] as JSON."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    t0, load0 = time.perf_counter(), os.getloadavg()
    if spec["system"] == "trl":
        from . import trl_run

        rows = [json.loads(line) for line in open(Path(spec["prompts_dir"]) / "rl_train.jsonl")]
        out = trl_run.run(spec, rows)
    else:
        from . import ours

        out = ours.run(spec)
    out["meta"].update(wall_s=time.perf_counter() - t0, load_start=load0, load_end=os.getloadavg(),
                       peak_rss_bytes=peak_rss_bytes())
    Path(spec["result"]).write_text(json.dumps(out))
