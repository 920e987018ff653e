"""Completions for chat messages through the training generators (secreason.sampling).

`backend=auto` takes vLLM when the `vllm` package is installed, else HF generate;
`hf` and `vllm` force one. Sampling settings come from `cfg.sampler`, whose
defaults eval.yaml takes from the protocol. HF generation runs on `cfg.device` (auto: the GPU when
there is one); vLLM places its engine itself. Completions end at the samplers' stop set (eos and
the chat template's end of turn), whose token text is dropped from the answers.
"""
from __future__ import annotations

import logging
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from secreason.data.chat import render_ids
from secreason.eval import EvalError

log = logging.getLogger(__name__)


def resolve_backend(name: str) -> str:
    if name == "auto":
        from secreason.sampling.vllm_engine import vllm_installed

        return "vllm" if vllm_installed() else "hf"
    if name not in ("hf", "vllm"):
        raise EvalError(f"backend={name!r} unknown; choose auto, hf or vllm")
    return name


class Generator:
    """Loads the model once; `__call__(conversations, n)` → n completions per conversation."""

    def __init__(self, cfg: DictConfig):
        from secreason.models import load_causal_lm, load_tokenizer, resolve_device, resolve_model_path

        try:
            self.path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(str(e)) from None
        self.tokenizer = load_tokenizer(self.path, cfg.model.get("chat_template"))
        self.backend = resolve_backend(cfg.backend)
        s = cfg.sampler
        common = dict(temperature=float(s.temperature), top_p=float(s.top_p), max_tokens=int(s.max_tokens),
                      seed=int(s.seed))
        # vLLM only reads these weights into its own engine: they stay on the CPU, leaving it the GPU.
        device = resolve_device(cfg.get("device", "auto")) if self.backend == "hf" else None
        model = load_causal_lm(self.path, dtype=cfg.model.dtype,
                               attn_implementation=cfg.model.get("attn_implementation"),
                               trust_remote_code=cfg.model.get("trust_remote_code", False), device=device).eval()
        # vLLM refuses prompt + completion beyond its max_model_len, so completions are capped to fit
        # it; HF generate has no such limit (RoPE runs past max_position_embeddings): no cap there.
        self.context = 0
        if self.backend == "vllm":
            from secreason.sampling.vllm_engine import VLLMGenerator

            extra = OmegaConf.to_container(cfg.vllm, resolve=True)
            # Prompt + completion tokens, never beyond the model's own context (vLLM refuses that).
            context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
            wanted = int(extra.get("max_model_len") or context)
            extra["max_model_len"] = min(wanted, context) if context else wanted
            self.context = extra["max_model_len"]
            self.sampler = VLLMGenerator(**common, **extra).bind(model, self.tokenizer)
            # The engine holds its own copy of the weights; evaluation never syncs, so free these.
            self.sampler.model = None
            del model
        else:
            from secreason.sampling.hf import HFGenerator

            self.sampler = HFGenerator(**common, batch_size=s.get("batch_size")).bind(model, self.tokenizer)
        self.prompts_per_call = int(s.get("prompts_per_call") or 64)
        self.think_tags = tuple(cfg.think_tags or ())
        log.info("generating with %s from %s%s", self.backend, self.path, f" on {device}" if device else "")

    def __call__(self, conversations: Sequence[list[dict[str, str]]], n: int) -> list[list[str]]:
        return complete(self.sampler, self.tokenizer, conversations, n, self.think_tags, self.prompts_per_call,
                        self.context, progress=True)


def prompt_ids(tokenizer, conversation: list[dict[str, str]]) -> list[int]:
    """The conversation as the model's prompt: chat template, one BOS, the assistant header."""
    return render_ids(tokenizer, conversation, add_generation_prompt=True)


def clean(text: str, tokenizer, think_tags: Sequence[str], stop_ids: Sequence[int] = ()) -> str:
    """Drop eos/pad, the stop tokens (the template's end of turn) and other special-token text the
    samplers keep, but never the think tags."""
    for tok in [*tokenizer.all_special_tokens, *tokenizer.convert_ids_to_tokens(list(stop_ids))]:
        if tok and tok not in think_tags:
            text = text.replace(tok, "")
    return text


def complete(sampler, tokenizer, conversations: Sequence[list[dict[str, str]]], n: int,
             think_tags: Sequence[str] = (), prompts_per_call: int = 64, context: int = 0,
             progress: bool = False) -> list[list[str]]:
    """n completions per conversation from a bound generator (HFGenerator / VLLMGenerator).

    With `context` (vLLM's max_model_len) > 0, completions are capped so prompt + completion
    fit it: the protocols ask for up to 10,000 new tokens, which a small model cannot hold.
    `progress`: a progress bar over the conversations (eval.py; not inside training).
    """
    from tqdm.auto import tqdm

    out: list[list[str]] = []
    wanted = sampler.max_tokens
    bar = tqdm(total=len(conversations), desc="generating", unit="prompt", disable=not progress)
    for start in range(0, len(conversations), prompts_per_call):
        chunk = conversations[start:start + prompts_per_call]
        ids = [prompt_ids(tokenizer, c) for c in chunk]
        longest = max(len(i) for i in ids)
        room = context - longest if context else wanted
        if room < 1:
            raise EvalError(f"a prompt of {longest} tokens does not fit the model's "
                            f"context of {context} positions")
        if room < wanted:
            log.warning("capping completions at %d tokens (model context %d) instead of sampler.max_tokens=%d",
                        room, context, wanted)
        sampler.max_tokens = min(wanted, room)
        try:
            rollout = sampler.generate(ids, n)
        finally:
            sampler.max_tokens = wanted
        texts = [clean(t, tokenizer, think_tags, getattr(sampler, "stop_ids", ())) for t in rollout.texts]
        # Rows i·n … i·n+n−1 belong to prompt i (Rollout's contract).
        out += [texts[i * n:(i + 1) * n] for i in range(len(chunk))]
        bar.update(len(chunk))
    bar.close()
    return out
