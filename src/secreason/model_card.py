"""The model card (README.md) of an exported HF directory: what it was trained from and by which config.

`model_card(...)` is a pure function of what the export callback knows: the base model, the
algorithm, and the Hydra config that made the run (its name and command-line overrides), so a
pushed model says how to make it again.
"""
from __future__ import annotations

from typing import Sequence


def model_card(base_model: str | None, algorithm: str | None, config_name: str | None,
               overrides: Sequence[str] = (), adapter: bool = False) -> str:
    """Markdown with a YAML header (the hub reads `base_model`, `library_name`, `tags`)."""
    header = ["---", "library_name: transformers", "tags: [secreason, cybersecurity, reasoning]"]
    if base_model:
        header.append(f"base_model: {base_model}")
    header.append("---")
    command = " ".join(["python train.py", *overrides]) if config_name else None
    lines = [*header, "", "# secreason policy", "",
             f"- base model: `{base_model or 'unknown'}`",
             f"- algorithm: `{algorithm or 'unknown'}`",
             f"- config: `conf/{config_name}.yaml`" + (f" with overrides `{' '.join(overrides)}`" if overrides else "")
             if config_name else "- config: not recorded (trained outside `train.py`)"]
    if command:
        lines += ["", "Made by:", "", "```", command, "```"]
    lines += ["", "The weights are merged (LoRA folded into the base) and load with `AutoModelForCausalLM`."]
    if adapter:
        lines.append("`adapter/` holds the LoRA adapter alone, for `PeftModel.from_pretrained(base, 'adapter')`.")
    return "\n".join(lines) + "\n"
