"""The tiny offline model: a random-init Llama plus a BPE tokenizer trained here.

Nothing can be downloaded at run time, so tests and demos build a model from a config and a
tokenizer from the project's own synthetic corpus, save both as an ordinary HF directory and
load that directory back through `AutoModelForCausalLM.from_pretrained` like any hub model.
Built once per (size, seed) into a cache dir; the build is deterministic for a seed.

head_dim is 64 in every size because vLLM's CPU attention rejects smaller heads.
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


def build(out_dir: str | Path, seed: int = 0, size: str = "tiny") -> Path:
    """Build the model + tokenizer into `out_dir` (written to a temp dir, then renamed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from secreason.data.synth import tokenizer_corpus

    if size not in SIZES:
        raise ConfigError(f"model.tiny_size={size!r} unknown; choose one of {sorted(SIZES)}")
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(tokenizer_corpus(seed=seed))
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id, rms_norm_eps=1e-6, **SIZES[size],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "secreason_tiny.json").write_text(json.dumps(
            {"seed": seed, "size": size, "format_version": FORMAT_VERSION}))
        if out_dir.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_tiny(cache_dir: str | Path, seed: int = 0, size: str = "tiny") -> Path:
    """Path of the cached model dir for (size, seed), building it on first use."""
    path = Path(cache_dir) / f"{size}-llama-s{seed}-v{FORMAT_VERSION}"
    if (path / "secreason_tiny.json").exists():
        return path
    return build(path, seed=seed, size=size)
