"""Chat templating with a loss mask on assistant tokens only.

The assistant spans are found by rendering growing prefixes of the conversation: the tokens
between render(messages[:i], add_generation_prompt=True) and render(messages[:i+1]) are the i-th
(assistant) turn, including its end-of-turn token. This works for any prefix-stable template, so
it needs no `{% generation %}` markers in the template.
"""
from __future__ import annotations

from secreason.errors import ConfigError

IGNORE_INDEX = -100


def render_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


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


def encode_prompt(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat prompt, ending with the assistant header (generation prompt)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return render_ids(tokenizer, messages, add_generation_prompt=True)
