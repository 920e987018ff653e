"""Completions forced to the full `max_tokens` under vLLM, through vLLM's public engine option
`logits_processors` (the sampler passes `sampler.engine_kwargs` to `vllm.LLM`):

    +sampler.engine_kwargs.logits_processors=[grpo_bench.full_length.FullLengthLogitsProcessor]

vLLM's own min-tokens processor masks every stop token (eos included) until a request has
`min_tokens` outputs; this one does the same with `max_tokens` as the minimum, for every request.
Our sampler's `SamplingParams` are not reachable from config, so this is the knob that is.
"""
from __future__ import annotations

from typing import Sequence

from vllm import SamplingParams
from vllm.v1.sample.logits_processor.builtin import MinTokensLogitsProcessor


class FullLengthLogitsProcessor(MinTokensLogitsProcessor):
    @staticmethod
    def add_request(params: SamplingParams, _: list[int] | None,
                    output_tok_ids: list[int]) -> tuple[int, Sequence[int], set[int], bool] | None:
        if not params.max_tokens or len(output_tok_ids) >= params.max_tokens:
            return None
        return params.max_tokens, output_tok_ids, params.all_stop_token_ids, params.structured_outputs is not None
