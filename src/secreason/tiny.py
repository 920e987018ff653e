"""The tiny offline model: a random-init Llama plus a BPE tokenizer trained here.

Nothing can be downloaded at run time, so tests and demos build a model from a config and a
tokenizer from the project's own synthetic corpus, save both as an ordinary HF directory and
load that directory back through `AutoModelForCausalLM.from_pretrained` like any hub model.
Built once per (size, seed, flavor) into a cache dir; the build is deterministic for a seed.

head_dim is 64 in every size because vLLM's CPU attention rejects smaller heads.

Two flavors (`model.tiny_flavor`):
- `tiny`: the project's own tokenizer, whose eos `<|end|>` also ends every chat turn, with its
  own chat template.
- `llama31`: shaped like Llama-3.1's base model (Foundation-Sec-8B), so what the 8B run would hit
  shows here: the BPE vocabulary, then Llama-3.1's 256 special tokens with their names in their
  order (`<|begin_of_text|>` = vocabulary size + 0 ≙ 128000, `<|end_of_text|>` + 1 ≙ 128001,
  `<|start_header_id|>` + 6, `<|end_header_id|>` + 7, `<|eom_id|>` + 8, `<|eot_id|>` + 9 ≙ 128009,
  reserved tokens in between and after); bos `<|begin_of_text|>`, which the tokenizer adds to
  every encode (its post-processor, as Llama's); eos `<|end_of_text|>`; no pad token; NO chat
  template (the project's fallback, secreason.models.DEFAULT_CHAT_TEMPLATE, applies); a
  generation config listing only `<|end_of_text|>`; untied embeddings and llama3 RoPE scaling
  (8192 → 131072 positions) as in the 8B. The vocabulary is kept small (512 + 256): the layout is
  Llama's, the ids are not.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from secreason.errors import ConfigError

SPECIAL_TOKENS = ["<pad>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<think>", "</think>"]
PAD, EOS = "<pad>", "<|end|>"

# Prefix-stable on purpose: rendering messages[:i] is a prefix of rendering messages[:i+1], which
# is what assistant-only masking relies on. No newline after <|end|>: eos is the last trained token.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

SIZES = {
    # 0.4M params: the learning and reward-hacking demos (shared/notes).
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=64),
    # ~23M params: the GRPO-step benchmark's "small" model.
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=64),
}
VOCAB_SIZE = 512
FORMAT_VERSION = 1
FLAVORS = ("tiny", "llama31")

LLAMA31_BOS, LLAMA31_EOS = "<|begin_of_text|>", "<|end_of_text|>"
# Llama-3.1's special tokens 128000…128255 in order (its tokenizer_config.json): reserved tokens
# fill the gaps between the named ones, and 3…247 follow <|python_tag|>.
_LLAMA31_NAMED = {0: LLAMA31_BOS, 1: LLAMA31_EOS, 4: "<|finetune_right_pad_id|>", 6: "<|start_header_id|>",
                  7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>", 10: "<|python_tag|>"}


def _llama31_special_tokens() -> list[str]:
    reserved = iter(range(256 - len(_LLAMA31_NAMED)))
    return [_LLAMA31_NAMED[i] if i in _LLAMA31_NAMED else f"<|reserved_special_token_{next(reserved)}|>"
            for i in range(256)]


LLAMA31_SPECIAL_TOKENS = _llama31_special_tokens()
# Llama-3.1-8B's rope scaling (its config.json), so the miniature runs the same RoPE code path.
LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_theta": 500000.0}


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE (never an unknown token, whatever the model writes) as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train_llama31_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE of `vocab_size` ids, then Llama-3.1's 256 special tokens in Llama's order;
    every encode starts with <|begin_of_text|> (add_special_tokens=True), as Llama's does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    offset = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA31_SPECIAL_TOKENS])
    bos_id = tok.token_to_id(LLAMA31_BOS)
    if bos_id != offset or tok.get_vocab_size() != offset + len(LLAMA31_SPECIAL_TOKENS):
        raise RuntimeError("the special tokens did not land right after the BPE vocabulary")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA31_BOS} $A", pair=f"{LLAMA31_BOS} $A {LLAMA31_BOS} $B:1",
        special_tokens=[(LLAMA31_BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=LLAMA31_BOS, eos_token=LLAMA31_EOS)


def _model_and_tokenizer(seed: int, size: str, flavor: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from secreason.data.synth import tokenizer_corpus

    corpus = tokenizer_corpus(seed=seed)
    if flavor == "llama31":
        tokenizer = train_llama31_tokenizer(corpus)
        ids = dict(pad_token_id=None, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   tie_word_embeddings=False, rope_parameters=dict(LLAMA31_ROPE), rms_norm_eps=1e-5,
                   max_position_embeddings=131072)
    else:
        tokenizer = train_tokenizer(corpus)
        ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                   bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, rms_norm_eps=1e-6,
                   max_position_embeddings=1024)
    config = LlamaConfig(vocab_size=len(tokenizer), **ids, **SIZES[size])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model.generation_config.bos_token_id = ids["bos_token_id"]
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # a base model's: eos only
    return model, tokenizer


def build(out_dir: str | Path, seed: int = 0, size: str = "tiny", flavor: str = "tiny") -> Path:
    """Build the model + tokenizer into `out_dir` (written to a temp dir, then renamed)."""
    if size not in SIZES:
        raise ConfigError(f"model.tiny_size={size!r} unknown; choose one of {sorted(SIZES)}")
    if flavor not in FLAVORS:
        raise ConfigError(f"model.tiny_flavor={flavor!r} unknown; choose one of {list(FLAVORS)}")
    out_dir = Path(out_dir)
    model, tokenizer = _model_and_tokenizer(seed, size, flavor)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "secreason_tiny.json").write_text(json.dumps(
            {"seed": seed, "size": size, "flavor": flavor, "format_version": FORMAT_VERSION}))
        if out_dir.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_tiny(cache_dir: str | Path, seed: int = 0, size: str = "tiny", flavor: str = "tiny") -> Path:
    """Path of the cached model dir for (size, seed, flavor), building it on first use."""
    kind = "llama" if flavor == "tiny" else flavor  # the tiny flavor keeps its cache dir name
    path = Path(cache_dir) / f"{size}-{kind}-s{seed}-v{FORMAT_VERSION}"
    if (path / "secreason_tiny.json").exists():
        return path
    return build(path, seed=seed, size=size, flavor=flavor)
