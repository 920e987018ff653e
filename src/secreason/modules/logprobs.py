"""Per-token log-probabilities of completions under a causal LM (policy, reference, old policy)."""
from __future__ import annotations

import torch

from secreason.packing import flatten_rows, supports_padding_free


def completion_logprobs(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        completion_ids: torch.Tensor, completion_mask: torch.Tensor, temperature: float = 1.0,
                        with_entropy: bool = False, share_prompts: bool = False, padding_free: bool = False,
                        selective: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(completion token | prefix) for every completion position.

    prompt_ids/prompt_mask [N, P] (left-padded), completion_ids/completion_mask [N, T]
    (right-padded) → logprobs [N, T] (0 on padding) and, if asked, entropy [N, T] (detached).
    Logits are divided by `temperature` so the result is the distribution the sampler drew from.
    Position ids count real tokens only, so left padding does not shift positions.

    share_prompts: rows with the same prompt (GRPO's n completions of one prompt) run that prompt
    through the model once; its KV cache is then copied per row (differentiably) for the
    completions. Same values and gradients, (n − 1)/n fewer prompt-token FLOPs. Falls back to one
    forward over [prompt, completion] when no prompt repeats or the cache is unusable (gradient
    checkpointing turns it off in training).

    padding_free: the rows' real tokens run as one packed varlen row (secreason.packing): no FLOPs
    on padding, same values and gradients. It takes the place of share_prompts (a shared prompt
    would need a tree mask that position ids cannot express); a model whose attention cannot split
    packed rows falls back to the paths above.

    selective: the logprobs from logits[id] − logsumexp (`selected_logprobs`) instead of gathering
    from a full-vocabulary log_softmax; same values and gradients, one [N, T, V] tensor less.
    """
    p, t = prompt_ids.shape[1], completion_ids.shape[1]
    logits = None
    if padding_free and supports_padding_free(model):
        logits = _packed_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    elif share_prompts and not (model.training and getattr(model, "is_gradient_checkpointing", False)):
        logits = _shared_prompt_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    if logits is None:
        input_ids = torch.cat([prompt_ids, completion_ids], 1)
        attn = torch.cat([prompt_mask, completion_mask], 1)
        logits = model(input_ids=input_ids, attention_mask=attn, position_ids=_positions(attn), use_cache=False,
                       **_last_logits(model, t + 1)).logits
        logits = logits[:, -(t + 1):-1]  # positions p − 1 … p + t − 2 predict the completion
    if selective:
        logp, entropy = selected_logprobs(logits, completion_ids, temperature, with_entropy)
        return logp * completion_mask, None if entropy is None else entropy * completion_mask
    logits = logits.float()
    if temperature not in (0, 1):
        logits = logits / temperature
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) * completion_mask
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1) * completion_mask
    return logp, entropy


def selected_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                      with_entropy: bool = False, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / temperature) at `ids`, without the [N, T, V] log-softmax tensor.

    logits [N, T, V] (any float dtype), ids [N, T] → logprobs [N, T] float32 and, if asked, the
    entropy [N, T] (float32, detached). logprob = z[id] − logsumexp(z) with z = logits / temperature
    in float32: the same value and gradient (onehot − softmax) as gathering from log_softmax, but
    only the float32 logits are kept for backward, not a second [N, T, V] tensor (a 128k
    vocabulary makes each one the step's largest). The entropy, lse − Σ softmax(z)·z, is computed
    `chunk` positions at a time under no_grad, so its softmax never exists for the whole batch.
    """
    z = logits.float()
    if temperature not in (0, 1):
        z = z / temperature
    lse = z.logsumexp(-1)
    logp = z.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        with torch.no_grad():
            flat, flat_lse = z.detach().flatten(0, -2), lse.detach().flatten()
            parts = [flat_lse[i: i + chunk] - (flat[i: i + chunk].softmax(-1) * flat[i: i + chunk]).sum(-1)
                     for i in range(0, flat.shape[0], chunk)]
            entropy = torch.cat(parts).view_as(lse) if parts else lse.clone()
    return logp, entropy


def _shared_prompt_logits(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor | None:
    """Logits [N, T, V] predicting each completion token, each distinct prompt run once; None when
    sharing saves nothing (every prompt distinct) or the model returns no selectable cache."""
    p = prompt_ids.shape[1]
    distinct, row_prompt = torch.unique(torch.cat([prompt_ids, prompt_mask], 1), dim=0, return_inverse=True)
    if distinct.shape[0] == prompt_ids.shape[0]:
        return None
    u_ids, u_mask = distinct[:, :p], distinct[:, p:]
    first = model(input_ids=u_ids, attention_mask=u_mask, position_ids=_positions(u_mask), use_cache=True,
                  **_last_logits(model, 1))
    cache = getattr(first, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    cache.batch_select_indices(row_prompt)  # [distinct, ...] → [N, ...]; index_select keeps the graph
    attn = torch.cat([prompt_mask, completion_mask], 1)
    rest = model(input_ids=completion_ids, attention_mask=attn, position_ids=_positions(attn)[:, p:],
                 past_key_values=cache, use_cache=True).logits
    # The prompt's last position predicts completion token 0; completion position j predicts j + 1.
    return torch.cat([first.logits[:, -1:].index_select(0, row_prompt), rest[:, :-1]], 1)


def _packed_logits(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Logits [N, T, V] predicting each completion token (0 on padding) from one padding-free forward
    of every row's [prompt, completion] real tokens, end to end."""
    ids, mask = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
    flat, positions = flatten_rows(ids, mask)
    # A row's real tokens are contiguous (left-padded prompt, right-padded completion), so completion
    # token j is predicted by the real token just before it in the packed row.
    where = (mask.flatten().cumsum(0) - 1).view_as(mask)[:, prompt_ids.shape[1]:]
    real = completion_mask.bool()
    predictors = where[real] - 1
    supports = getattr(model, "_supports_logits_to_keep", None)
    keep = {"logits_to_keep": predictors} if supports is not None and supports() else {}
    logits = model(input_ids=flat, position_ids=positions, use_cache=False, **keep).logits[0]
    if not keep:
        logits = logits.index_select(0, predictors)
    out = logits.new_zeros(*completion_ids.shape, logits.shape[-1])
    out[real] = logits
    return out


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only, so left padding does not shift them."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def _last_logits(model: torch.nn.Module, k: int) -> dict:
    """`logits_to_keep=k` where the model's forward takes it: no logits over prompt positions, whose
    [N, P, vocab] float tensor would dominate memory for long prompts and a 128k vocabulary."""
    supports = getattr(model, "_supports_logits_to_keep", None)
    return {"logits_to_keep": k} if supports is not None and supports() else {}
