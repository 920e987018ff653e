"""Dependencies point one way (docs/CONTRACTS.md, "Layers"), read from the source with `ast`:

    entry points (train.py, eval.py, benchmarks/)  →  secreason.callbacks  →  secreason core
                                                                               │
                                                     secreason.rewards  ◀──────┘

- the core (src/secreason) never imports secreason.callbacks or an entry point;
- secreason.rewards imports nothing of ours but itself and secreason.errors (no torch either:
  rewards are plain text work);
- secreason.callbacks imports no entry point;
- nobody imports the bare top-level names `callbacks` / `rewards` (they are not installed);
- vLLM is imported by exactly one module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VLLM_MODULE = "secreason.sampling.vllm_engine"
ENTRY = "entry"


def module_name(path: Path) -> str:
    """The dotted import name of a project file (entry points keep their file stem)."""
    rel = path.relative_to(REPO)
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] == "src":
        return ".".join(parts[1:])
    if parts[0] in ("callbacks", "rewards"):
        return ".".join(["secreason", *parts])
    return ".".join(parts)


SHARED = "secreason.errors"  # the one small module every layer may import (no torch, no imports of ours)


def layer(module: str) -> str:
    if module == SHARED:
        return "shared"
    if module.startswith(("secreason.callbacks", "callbacks")):
        return "callbacks"
    if module.startswith(("secreason.rewards", "rewards")):
        return "rewards"
    if module == "secreason" or module.startswith("secreason."):
        return "core"
    return ENTRY


# (importer layer) → layers it may import. Third-party modules are outside every layer.
ALLOWED = {
    "shared": set(),
    "core": {"core", "rewards", "shared"},
    "rewards": {"rewards", "shared"},
    "callbacks": {"callbacks", "core", "rewards", "shared"},
    ENTRY: {"callbacks", "core", "rewards", "shared", ENTRY},
}
OURS = ("secreason", "callbacks", "rewards", "train", "eval", "benchmarks")


def imports_of(path: Path, source: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file, including ones inside functions and
    `importlib.import_module("…")` / `importlib.util.find_spec("…")` calls with a literal name."""
    tree = ast.parse(source, filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "find_spec", "__import__") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def project_files() -> list[Path]:
    files = [p for d in ("src", "callbacks", "rewards", "benchmarks") for p in (REPO / d).rglob("*.py")]
    return files + [REPO / f for f in ("train.py", "eval.py")]


def violations(files: list[Path], sources: dict[Path, str] | None = None) -> list[str]:
    """One line per import against the layers; `sources` stands in for files not on disk."""
    bad = []
    for path in files:
        source = (sources or {}).get(path) or path.read_text()
        src = layer(module_name(path)) if path.parent != REPO and path.parts[len(REPO.parts)] != "benchmarks" \
            else ENTRY
        for line, name in imports_of(path, source):
            top = name.split(".")[0]
            where = f"{path.relative_to(REPO)}:{line} imports {name}"
            if top in ("callbacks", "rewards"):
                bad.append(f"{where}: use secreason.{name} (bare top-level names are not installed)")
            elif top == "vllm" and module_name(path) != VLLM_MODULE:
                bad.append(f"{where}: only {VLLM_MODULE} imports vllm")
            elif src in ("rewards", "shared") and top == "torch":
                bad.append(f"{where}: {src} stays free of torch")
            elif top in OURS and layer(name) not in ALLOWED[src]:
                bad.append(f"{where}: {src} may not import {layer(name)}")
    return bad


def test_the_project_follows_the_layers():
    assert not violations(project_files()), "\n".join(violations(project_files()))


def test_the_layers_cover_every_package():
    names = {module_name(p) for p in project_files()}
    assert any(n.startswith("secreason.callbacks.") for n in names)
    assert any(n.startswith("secreason.rewards.") for n in names)
    assert VLLM_MODULE in names, f"{VLLM_MODULE} is the one vLLM module; it moved?"


@pytest.mark.parametrize("folder, source, why", [
    ("src/secreason", "from secreason.callbacks.sampler import SamplerCallback\n", "core may not import callbacks"),
    ("src/secreason/eval", "def f():\n    import importlib\n    importlib.import_module('secreason.callbacks.x')\n",
     "core may not import callbacks"),
    ("src/secreason", "import train\n", "core may not import entry"),
    ("rewards", "from secreason.data.jsonl import iter_jsonl\n", "rewards may not import core"),
    ("rewards", "from ..modules import grpo\n", "rewards may not import core"),
    ("rewards", "import torch\n", "rewards stays free of torch"),
    ("callbacks", "from benchmarks import grpo_step\n", "callbacks may not import entry"),
    ("src/secreason", "from rewards.extraction import split_think\n", "bare top-level names"),
    ("src/secreason/modules", "import vllm\n", "only secreason.sampling.vllm_engine imports vllm"),
    ("src/secreason/errors.py", "import torch\n", "shared stays free of torch"),
    ("src/secreason/errors.py", "from secreason.models import DTYPES\n", "shared may not import core"),
])
def test_a_back_edge_is_caught(folder, source, why):
    """Each rule fires on a deliberately added bad import, as if in a new module of `folder`."""
    path = REPO / folder if folder.endswith(".py") else REPO / folder / "_layering_probe.py"
    found = violations([path], {path: source})
    assert len(found) == 1 and why in found[0], found
