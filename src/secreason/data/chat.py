"""Chat templating with a loss mask on assistant tokens only.

The assistant spans are found by rendering growing prefixes of the conversation: the tokens
between render(messages[:i], add_generation_prompt=True) and render(messages[:i+1]) are the i-th
(assistant) turn, including its end-of-turn token. This works for any prefix-stable template, so
it needs no `{% generation %}` markers in the template.

Every sequence starts with exactly one BOS where the model has one (`text_ids`): a template that
writes `{{ bos_token }}` (Llama-3.1's, the project's fallback) gives it, and the tokenizer's own
(Llama's adds one to every encode) is never added on top; a template without one gets the
tokenizer's. The token that ends an assistant turn is read off the template (`end_of_turn_id`),
so samplers stop there without a hard-coded id.
"""
from __future__ import annotations

import logging

from secreason.errors import ConfigError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def adds_bos(tokenizer) -> int | None:
    """The tokenizer's bos id if encoding with special tokens puts it first (Llama's
    post-processor does), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids[:1] == [bos] else None


def text_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a whole rendered sequence (a chat, a raw prompt) with exactly one leading BOS
    where the tokenizer adds one: the text's own BOS is kept, a second one dropped, a missing one
    added."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = adds_bos(tokenizer)
    if bos is None:
        return ids
    while ids[:2] == [bos, bos]:
        ids = ids[1:]
    return ids if ids[:1] == [bos] else [bos, *ids]


def render_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return text_ids(tokenizer, text)


_PROBE_ANSWER = "secreason-probe-answer"
_unrenderable: set[str] = set()  # templates already warned about (samplers ask on every call)


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant turn's content
    (Llama-3.1's `<|eot_id|>`, the tiny template's `<|end|>`, ChatML's `<|im_end|>`), read off a
    rendered probe conversation; None when the template puts no special token there or cannot
    render the probe."""
    probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _PROBE_ANSWER}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception as e:  # noqa: BLE001 - any template error means: nothing to derive
        if str(tokenizer.chat_template) not in _unrenderable:
            _unrenderable.add(str(tokenizer.chat_template))
            log.warning("the chat template cannot render a user + assistant turn (%s); completions stop at "
                        "eos only", " ".join(str(e).split())[:200])
        return None
    at = text.rfind(_PROBE_ANSWER)
    if at < 0:
        return None
    ids = tokenizer(text[at + len(_PROBE_ANSWER):], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return ids[0] if ids and ids[0] in special else None


def encode_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels = IGNORE_INDEX everywhere except assistant turns."""
    ids = render_ids(tokenizer, messages)
    labels = [IGNORE_INDEX] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = render_ids(tokenizer, messages[:i], add_generation_prompt=True)
        turn = render_ids(tokenizer, messages[: i + 1])
        start, end = len(head), len(turn)
        if ids[:start] != head or ids[:end] != turn:
            raise ConfigError("the chat template (model.chat_template, else the tokenizer's) is not prefix-stable; "
                              "assistant masking needs one")
        labels[start:end] = ids[start:end]
    return ids, labels


def encode_prompt(tokenizer, prompt: str | list[dict], system: str | None = None) -> list[int]:
    """Token ids of a chat prompt, ending with the assistant header (generation prompt). `prompt`: the
    user message's text, or a conversation (TRL's conversational prompt: a list of {role, content});
    `system` is put first unless the conversation has its own system message."""
    turns = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    has_system = any(m.get("role") == "system" for m in turns)
    messages = ([{"role": "system", "content": system}] if system and not has_system else []) + turns
    return render_ids(tokenizer, messages, add_generation_prompt=True)
