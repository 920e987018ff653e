"""Offline, deterministic, verifiable synthetic tasks: SFT traces and RL prompts with ground truth.

Built from sources that ship with pip packages (`cwe2`, `cvss`) plus the ATT&CK technique catalog
that ships in this package (`attack_techniques_enterprise.tsv`, with MITRE's notice), so the demos
and tests need no network and no benchmark data. Texts are kept SHORT
(prompts of at most ~40 words, reasoning of at most ~25) so a tiny random-init model can learn them.

Tasks (answer text after `</think>`, as in docs/CONTRACTS.md):
  math    `What is 3+4+5?`                          think ` 3+4=7. 7+5=12.`      `Answer: 12`     gold "12"
  mcqa    `Which option is CWE-79? A) .. B) .. ..`  think ` CWE-79 is <name>.`   `Answer: C`      gold "C"
          (extra column `choices`: the 4 option names)
  cwe     `Which CWE is "<name>"?` (3 phrasings)    think ` The weakness is <name>.`  `CWE-79`    gold "CWE-79"
  cvss    `Attack vector network, complexity low, .. Give the CVSS vector.`
          think ` AV:N AC:L .. A:H. Base score 9.8.`   `CVSS:3.1/AV:N/...`   gold = vector
          (extra column `base_score`, computed by `cvss.CVSS3`)
  attack  `Which ATT&CK techniques: <name1>; <name2>?`  think ` <name1> is T1059. ..`
          `Answer: T1059, T1566`   gold "T1059, T1566", ids in the order the prompt names them.

Held-out test items: `rl_test` draws only from held-out items, `sft` and `rl_train` never do. The
split is a stable hash of the item (digit triple, CWE id + option set, metric vector, technique
set), so it is the same for every seed and runs can be compared on one test pool. The `cwe` task
has one item per CWE id, so there the held-out unit is one of the 3 phrasings of each id.

CLI: python -m secreason.data.synth --out DIR [--seed 0] [--tasks mcqa,cwe,cvss,attack,math]
     [--n-sft 4000] [--n-rl 2000] [--n-test 200] [--empty-think-frac 0.0]
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import os
import random
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from secreason.errors import ConfigError
from secreason.rewards.extraction import DEFAULT_THINK_TAGS

TASKS = ("mcqa", "cwe", "cvss", "attack", "math")
DOMAINS = {"mcqa": "security", "cwe": "security", "cvss": "security", "attack": "security", "math": "math"}
SPLITS = ("sft", "rl_train", "rl_test")
HELD_OUT_PERCENT = 20
# Package data of secreason.data: id and name of ATT&CK's main Enterprise techniques, MITRE's
# copyright notice and licence in its `#` header lines.
ATTACK_CATALOG = "attack_techniques_enterprise.tsv"

# Well-known weaknesses (mostly the CWE Top 25): few enough for a tiny model to memorise.
CWE_POOL = (79, 89, 20, 22, 78, 94, 119, 125, 787, 416, 190, 352, 287, 434, 476, 502, 798, 862, 918, 77)
CWE_PHRASINGS = ('Which CWE is "{name}"?', 'Give the CWE id for "{name}".', 'What CWE id names "{name}"?')

# (metric, word used in the prompt, value letter -> word), in CVSS v3.1 vector order.
CVSS_METRICS = (
    ("AV", "Attack vector", {"N": "network", "A": "adjacent", "L": "local", "P": "physical"}),
    ("AC", "complexity", {"L": "low", "H": "high"}),
    ("PR", "privileges", {"N": "none", "L": "low", "H": "high"}),
    ("UI", "interaction", {"N": "none", "R": "required"}),
    ("S", "scope", {"U": "unchanged", "C": "changed"}),
    ("C", "impact", {"H": "high", "L": "low", "N": "none"}),
    ("I", "impact", {"H": "high", "L": "low", "N": "none"}),
    ("A", "impact", {"H": "high", "L": "low", "N": "none"}),
)

# Words a truncated name should not end on ("Exposure of Sensitive Information to" reads badly).
_DANGLING = {"a", "an", "and", "by", "during", "for", "from", "in", "of", "on", "or", "the", "to", "used", "with",
             "within"}


@dataclass(frozen=True)
class Item:
    prompt: str
    reasoning: str  # the text between the think tags, leading space included
    answer_text: str  # the text after `</think>`
    gold: str
    held_out: bool
    extras: dict = field(default_factory=dict)


def short_name(name: str, max_words: int = 5) -> str:
    """A catalog name cut to a few words; CWE names carry their common alias as `('Alias')`."""
    alias = re.search(r"\('([^']+)'\)", name)
    words = (alias.group(1) if alias else name).split()[:max_words]
    while len(words) > 1 and words[-1].lower() in _DANGLING:
        words.pop()
    return " ".join(words)


def _stable_percent(*parts: object) -> int:
    """0..99 from a hash that, unlike hash(), is the same in every process."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:12], 16) % 100


def _held_out(task: str, key: str) -> bool:
    return _stable_percent(task, key) < HELD_OUT_PERCENT


# ---- catalogs -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def cwe_catalog() -> tuple[tuple[int, str], ...]:
    """(id, short name) for the CWE pool. Cached: cwe2 rescans its CSVs on every lookup (~0.1 s)."""
    from cwe2.database import Database

    db, found = Database(), []
    for cwe_id in CWE_POOL:
        try:
            found.append((cwe_id, short_name(db.get(cwe_id).name)))
        except Exception:  # cwe2 raises its own InvalidCWEError for ids its catalog lacks
            continue
    names = [n for _, n in found]
    if len(found) < 4 or len(set(names)) != len(names):
        raise ValueError(f"cwe2 {_version('cwe2')}: need >= 4 distinct short names, got {names}")
    return tuple(found)


def parse_attack_catalog(text: str, source: str) -> tuple[tuple[str, str], ...]:
    """(technique id, short name) for the main techniques (no sub-techniques) of an ID/Name TSV;
    lines starting with `#` (the notice) are skipped. `source` names the file in errors."""
    lines = [line for line in io.StringIO(text, newline="") if not line.startswith("#")]
    reader = csv.DictReader(lines, delimiter="\t")
    if not reader.fieldnames or not {"ID", "Name"} <= set(reader.fieldnames):
        raise ValueError(f"{source}: expected columns ID and Name, found {reader.fieldnames}")
    techniques, seen_names = [], set()
    for row in reader:
        tid, name = (row["ID"] or "").strip(), short_name(row["Name"] or "")
        # Two ids behind one short name would make the gold ambiguous: keep the first.
        if re.fullmatch(r"T\d{4}", tid) and name and name not in seen_names:
            seen_names.add(name)
            techniques.append((tid, name))
    if len(techniques) < 2:
        raise ValueError(f"{source}: fewer than 2 main techniques (ids like T1059)")
    return tuple(techniques)


@functools.lru_cache(maxsize=1)
def attack_catalog() -> tuple[tuple[str, str], ...]:
    """The catalog that ships in this package, parsed once."""
    resource = importlib.resources.files(__package__).joinpath(ATTACK_CATALOG)
    return parse_attack_catalog(resource.read_text(encoding="utf-8"), f"{__package__}/{ATTACK_CATALOG}")


# ---- one item per task ----------------------------------------------------------------------------

def _math_item(rng: random.Random) -> Item:
    a, b, c = (rng.randrange(10) for _ in range(3))
    s, t = a + b, a + b + c
    return Item(f"What is {a}+{b}+{c}?", f" {a}+{b}={s}. {s}+{c}={t}.", f"Answer: {t}", str(t),
                _held_out("math", f"{a},{b},{c}"))


def _mcqa_item(rng: random.Random) -> Item:
    pool = cwe_catalog()
    correct = rng.choice(pool)
    options = [correct, *rng.sample([w for w in pool if w != correct], 3)]
    rng.shuffle(options)
    letter = "ABCD"[options.index(correct)]
    listed = " ".join(f"{lab}) {name}" for lab, (_, name) in zip("ABCD", options))
    option_set = ",".join(str(i) for i in sorted(i for i, _ in options))
    return Item(f"Which option is CWE-{correct[0]}? {listed}", f" CWE-{correct[0]} is {correct[1]}.",
                f"Answer: {letter}", letter, _held_out("mcqa", f"{correct[0]}|{option_set}"),
                {"choices": [name for _, name in options]})


def _cwe_item(rng: random.Random) -> Item:
    cwe_id, name = rng.choice(cwe_catalog())
    phrasing = rng.randrange(len(CWE_PHRASINGS))
    # Holding out whole ids would test recall of facts never taught; hold out a phrasing per id.
    held_out = phrasing == _stable_percent("cwe", cwe_id) % len(CWE_PHRASINGS)
    return Item(CWE_PHRASINGS[phrasing].format(name=name), f" The weakness is {name}.", f"CWE-{cwe_id}",
                f"CWE-{cwe_id}", held_out)


def _cvss_item(rng: random.Random) -> Item:
    from cvss import CVSS3

    letters = [rng.choice(list(values)) for _, _, values in CVSS_METRICS]
    words = [values[v] for (_, _, values), v in zip(CVSS_METRICS, letters)]
    vector = "CVSS:3.1/" + "/".join(f"{m}:{v}" for (m, _, _), v in zip(CVSS_METRICS, letters))
    score = float(CVSS3(vector).base_score)
    stated = ", ".join(f"{label} {w}" for (_, label, _), w in zip(CVSS_METRICS[:5], words[:5]))
    prompt = f"{stated}, impact {'/'.join(words[5:])}. Give the CVSS vector."
    mapped = " ".join(f"{m}:{v}" for (m, _, _), v in zip(CVSS_METRICS, letters))
    return Item(prompt, f" {mapped}. Base score {score}.", vector, vector, _held_out("cvss", vector),
                {"base_score": score})


def _attack_item(rng: random.Random) -> Item:
    chosen = rng.sample(attack_catalog(), rng.choice((1, 2)))
    ids = [tid for tid, _ in chosen]
    noun = "technique" if len(chosen) == 1 else "techniques"
    prompt = f"Which ATT&CK {noun}: {'; '.join(name for _, name in chosen)}?"
    reasoning = "".join(f" {name} is {tid}." for tid, name in chosen)
    return Item(prompt, reasoning, f"Answer: {', '.join(ids)}", ", ".join(ids),
                _held_out("attack", ",".join(sorted(ids))))


MAKERS: dict[str, Callable[[random.Random], Item]] = {
    "math": _math_item, "mcqa": _mcqa_item, "cwe": _cwe_item, "cvss": _cvss_item, "attack": _attack_item,
}


# ---- splits ---------------------------------------------------------------------------------------

def _draw(task: str, rng: random.Random, n: int, held_out: bool, prefer_unique: bool) -> list[Item]:
    """n items of the wanted side of the hold-out split, by rejection (the held-out share is ~20%)."""
    items, seen, rejected = [], set(), 0
    budget = 200 * n + 2000  # only spent when a side is empty or, for unique test prompts, exhausted
    while len(items) < n:
        item = MAKERS[task](rng)
        duplicate = prefer_unique and item.prompt in seen and rejected < budget
        if item.held_out != held_out or duplicate:
            rejected += 1
            if rejected > 2 * budget:
                raise RuntimeError(f"synth task {task!r}: no {'held-out' if held_out else 'training'} items")
            continue
        seen.add(item.prompt)
        items.append(item)
    return items


def _per_task_counts(n: int, tasks: tuple[str, ...], weights: dict[str, float] | None) -> dict[str, int]:
    """Split n over tasks by weight (default even), largest remainder first so the sum is exact."""
    w = {t: float((weights or {}).get(t, 1.0 if weights is None else 0.0)) for t in tasks}
    total = sum(w.values())
    exact = {t: n * w[t] / total for t in tasks}
    counts = {t: int(exact[t]) for t in tasks}
    for t in sorted(tasks, key=lambda t: (counts[t] - exact[t], tasks.index(t)))[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


def _check_args(tasks, n_sft, n_rl, n_test, think_tags, empty_think_frac, task_weights) -> tuple[str, ...]:
    tasks = tuple(tasks.split(",")) if isinstance(tasks, str) else tuple(tasks)
    unknown = [t for t in tasks if t not in MAKERS]
    if not tasks or unknown or len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks={list(tasks)}: give distinct names from {list(TASKS)}")
    for name, n in (("n_sft", n_sft), ("n_rl", n_rl), ("n_test", n_test)):
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"{name}={n!r}: must be an integer >= 0")
    if not 0.0 <= empty_think_frac <= 1.0:
        raise ConfigError(f"empty_think_frac={empty_think_frac}: must be in [0, 1]")
    if len(think_tags) != 2 or not all(isinstance(t, str) and t for t in think_tags):
        raise ConfigError(f"think_tags={think_tags!r}: need (open, close), both non-empty")
    if task_weights is not None:
        extra = set(task_weights) - set(tasks)
        if extra or any(v < 0 for v in task_weights.values()) or sum(task_weights.values()) <= 0:
            raise ConfigError(f"task_weights={task_weights}: weights >= 0 for tasks in {list(tasks)}, sum > 0")
    return tasks


def generate(seed: int = 0, tasks=TASKS, n_sft: int = 4000, n_rl: int = 2000, n_test: int = 200,
             think_tags=DEFAULT_THINK_TAGS, empty_think_frac: float = 0.0,
             task_weights: dict[str, float] | None = None) -> dict[str, list[dict]]:
    """{"sft", "rl_train", "rl_test"} rows, shuffled, identical for the same arguments."""
    tasks = _check_args(tasks, n_sft, n_rl, n_test, think_tags, empty_think_frac, task_weights)
    open_tag, close_tag = think_tags
    out: dict[str, list[dict]] = {}
    for split, n in (("sft", n_sft), ("rl_train", n_rl), ("rl_test", n_test)):
        rows = []
        for task, count in _per_task_counts(n, tasks, task_weights).items():
            # One stream per (seed, split, task): adding a task does not change the others' items.
            rng = random.Random(f"secreason-synth|{seed}|{split}|{task}")
            for item in _draw(task, rng, count, split == "rl_test", prefer_unique=split == "rl_test"):
                if split == "sft":
                    trace = f"{open_tag}{item.reasoning}{close_tag}{item.answer_text}"
                    rows.append({"messages": [{"role": "user", "content": item.prompt},
                                              {"role": "assistant", "content": trace}],
                                 "task": task, "answer": item.gold, "domain": DOMAINS[task]})
                else:
                    rows.append({"task": task, "prompt": item.prompt, "answer": item.gold,
                                 "domain": DOMAINS[task], **item.extras})
        random.Random(f"secreason-synth|{seed}|{split}|shuffle").shuffle(rows)
        out[split] = rows
    # Empty thinks: exactly round(frac * n) traces, picked by the seed, for the reward-hacking demo.
    sft = out["sft"]
    empty_rng = random.Random(f"secreason-synth|{seed}|empty-think")
    for i in empty_rng.sample(range(len(sft)), round(empty_think_frac * len(sft))):
        answer_text = sft[i]["messages"][1]["content"].split(close_tag, 1)[1]
        sft[i]["messages"][1]["content"] = f"{open_tag}{close_tag}{answer_text}"
    return out


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Texts covering every task's vocabulary, for training the tiny BPE tokenizer (~3k lines)."""
    splits = generate(seed, TASKS, n_sft=1500, n_rl=0, n_test=0, empty_think_frac=0.1)
    texts = [m["content"] for row in splits["sft"] for m in row["messages"]]
    # Every catalog name and CVSS word at least once, even those the sample above missed.
    texts += [f"CWE-{i} is {name}." for i, name in cwe_catalog()]
    texts += [f"{name} is {tid}." for tid, name in attack_catalog()]
    texts += [" ".join(f"{label} {word} {m}:{v}" for v, word in values.items()) for m, label, values in CVSS_METRICS]
    return texts


# ---- files ----------------------------------------------------------------------------------------

def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; the data is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(out_dir, splits: dict[str, list[dict]], meta: dict | None = None) -> None:
    """`<split>.jsonl` for each split, then `manifest.json` (counts per split and task, versions, meta)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, rows in splits.items():
        _write_atomic(out / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        per_task: dict[str, int] = {}
        for r in rows:
            per_task[r["task"]] = per_task.get(r["task"], 0) + 1
        counts[split] = {"total": len(rows), **dict(sorted(per_task.items()))}
    manifest = {**(meta or {}), "counts": counts, "held_out_percent": HELD_OUT_PERCENT,
                "sources": {"cwe2": _version("cwe2"), "cvss": _version("cvss"), "attack_catalog": f"{__package__}/{ATTACK_CATALOG}"}}
    _write_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m secreason.data.synth", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    parser.add_argument("--n-sft", type=int, default=4000)
    parser.add_argument("--n-rl", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--empty-think-frac", type=float, default=0.0)
    args = parser.parse_args(argv)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    try:
        splits = generate(args.seed, tasks, args.n_sft, args.n_rl, args.n_test,
                          empty_think_frac=args.empty_think_frac)
        write(args.out, splits, meta={"seed": args.seed, "tasks": list(tasks),
                                      "empty_think_frac": args.empty_think_frac})
    except (ValueError, OSError, RuntimeError) as e:
        print(f"synth: error: {e}", file=sys.stderr)
        return 2
    sizes = " ".join(f"{k}={len(v)}" for k, v in splits.items())
    print(f"synth: wrote {args.out}: {sizes} tasks={','.join(tasks)} seed={args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
