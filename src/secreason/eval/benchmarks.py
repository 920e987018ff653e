"""The benchmarks: where each one's rows live under `data_dir`, its gold column, and its quirks.

A benchmark's rows keep the file's own column names, so a response file holding "the benchmark's
columns plus a response column" is read by the same code (`items_from_rows`) as the data itself.
Item positions (`Item.index`) are 0-based positions in the file, or in FAITH's subset lists for
SecEval and SecBench (shared/data/*/faith_subset*.json).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from secreason.eval import EvalError
from secreason.eval import files

MCQ_LETTERS = ("A", "B", "C", "D")
# Where each top-level folder of data_dir comes from, named in the error when it is missing.
DATA_SOURCES = {
    "ctibench": "hub dataset AI4Sec/cti-bench (or github.com/xashru/cti-bench)",
    "mmlu_computer_security": "hub dataset cais/mmlu, subset computer_security",
    "seceval": "hub dataset XuanwuAI/SecEval",
    "secbench": "hub dataset secbench-hf/SecBench",
    "harmbench": "github.com/centerforaisafety/HarmBench, data/behavior_datasets/",
}


def how_to_get(folder: str) -> str:
    """Where a data_dir folder comes from and the command that downloads it, for error messages."""
    return (f"the data: {DATA_SOURCES[folder]}; `python -m secreason.eval.fetch --out DIR --only {folder}` "
            f"downloads it into DIR")


@dataclass
class Item:
    index: int
    row: dict[str, Any]          # the benchmark's own columns
    gold: Any                    # normalised gold: "B", "CWE-79", a vector, a frozenset of ids, a name
    fields: dict[str, Any] = field(default_factory=dict)  # what the prompts need
    quirks: list[str] = field(default_factory=list)       # data quirks met on this row


@dataclass(frozen=True)
class Benchmark:
    name: str
    family: str                  # mcq | rcm | vsp | ate | taa | harmbench
    files: tuple[str, ...]       # relative to data_dir; all must exist
    gold_column: str | None
    id_column: str | None
    read: Callable[[Path], list[dict]]
    ctibench: bool = False
    # Rows whose runs of spaces are stray ones inside sentences: FAITH collapses them instead of
    # making them paragraph breaks (only CTIBench-RCM row 391).
    stray_space_rows: tuple[int, ...] = ()

    def check_files(self, data_dir: str | Path | None) -> None:
        get = how_to_get(self.files[0].split("/")[0])
        if data_dir is None or str(data_dir) == "":
            raise EvalError(f"data_dir is not set (benchmark {self.name}): set SECREASON_DATA_DIR or data_dir= "
                            f"to a folder holding {self.files[0]}; {get}")
        missing = [f for f in self.files if not (Path(data_dir) / f).is_file()]
        if missing:
            raise EvalError(f"data_dir={data_dir} has no {missing[0]} (benchmark {self.name}); "
                            f"point data_dir (or SECREASON_DATA_DIR) at the benchmark data folder; {get}")

    def rows(self, data_dir: str | Path) -> list[dict]:
        self.check_files(data_dir)
        return self.read(Path(data_dir))


# ---- readers: data_dir → rows with the file's own columns -------------------------------------

def _cti(name: str) -> Callable[[Path], list[dict]]:
    return lambda d: files.read_upstream_tsv(d / "ctibench" / name)


def _cti_taa(d: Path) -> list[dict]:
    """cti-taa.tsv has no GT; cti-taa-gt.tsv holds it in the same row order (SCORING.md)."""
    rows = files.read_upstream_tsv(d / "ctibench" / "cti-taa.tsv")
    gts = files.read_upstream_tsv(d / "ctibench" / "cti-taa-gt.tsv")
    if len(rows) != len(gts) or any(r["URL"] != g["URL"] for r, g in zip(rows, gts)):
        raise EvalError(f"{d}/ctibench: cti-taa.tsv and cti-taa-gt.tsv rows do not line up by URL")
    return [{**r, "GT": g["GT"]} for r, g in zip(rows, gts)]


def _mmlu(d: Path) -> list[dict]:
    return files.read_csv(d / "mmlu_computer_security/data/test/computer_security_test.csv",
                          header=["question", "A", "B", "C", "D", "answer"])


def mmlu_dev(d: Path) -> list[dict]:
    """The 5-item few-shot pool (used when benchmark.num_shots > 0)."""
    return files.read_csv(d / "mmlu_computer_security/data/dev/computer_security_dev.csv",
                          header=["question", "A", "B", "C", "D", "answer"])


def _subset(rows: list[dict], indices: list[int], d: Path, rel: str) -> list[dict]:
    """The rows at FAITH's subset positions; a position past the end means another copy of the data."""
    if bad := [i for i in indices if not 0 <= i < len(rows)]:
        raise EvalError(f"{d / rel}: {len(rows)} rows, but its FAITH subset names row {bad[0]}: an incomplete or "
                        f"different copy of the data? {how_to_get(rel.split('/')[0])}")
    return [{**rows[i], "_position": i} for i in indices]


def _seceval(d: Path) -> list[dict]:
    rows = files.read_json_array(d / "seceval/questions-data.js")
    subset = json.loads((d / "seceval/faith_subset.json").read_text(encoding="utf-8"))
    return _subset(rows, subset["indices"], d, "seceval/questions-data.js")


def _secbench(key: str) -> Callable[[Path], list[dict]]:
    def read(d: Path) -> list[dict]:
        rows = files.read_jsonl(d / "secbench/data/MCQs_2730.jsonl")
        subsets = json.loads((d / "secbench/faith_subsets.json").read_text(encoding="utf-8"))
        return _subset(rows, subsets[key]["indices"], d, "secbench/data/MCQs_2730.jsonl")
    return read


def _harmbench(split: str) -> Callable[[Path], list[dict]]:
    return lambda d: files.read_csv(d / f"harmbench/harmbench_behaviors_text_{split}.csv")


def attack_techniques(data_dir: str | Path, platform: str) -> list[tuple[str, str]]:
    """(id, name) of the platform's ATT&CK techniques, as embedded in every ATE prompt."""
    path = Path(data_dir) / "ctibench" / f"attack-techniques-{platform.strip().lower()}.tsv"
    if not path.is_file():
        raise EvalError(f"data_dir={data_dir} has no {path.name} (ATE platform {platform!r})")
    return [(r["ID"], r["Name"]) for r in files.read_upstream_tsv(path)]


_CTI = "ctibench/"
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("ctibench_mcq", "mcq", (_CTI + "cti-mcq.tsv",), "GT", "URL", _cti("cti-mcq.tsv"), True),
    Benchmark("ctibench_rcm", "rcm", (_CTI + "cti-rcm.tsv",), "GT", "URL", _cti("cti-rcm.tsv"), True, (391,)),
    Benchmark("ctibench_rcm_2021", "rcm", (_CTI + "cti-rcm-2021.tsv",), "GT", "URL",
              _cti("cti-rcm-2021.tsv"), True),
    Benchmark("ctibench_vsp", "vsp", (_CTI + "cti-vsp.tsv",), "GT", "URL", _cti("cti-vsp.tsv"), True),
    Benchmark("ctibench_ate", "ate", (_CTI + "cti-ate.tsv", _CTI + "attack-techniques-enterprise.tsv",
                                      _CTI + "attack-techniques-mobile.tsv"),
              "GT", "URL", _cti("cti-ate.tsv"), True),
    Benchmark("ctibench_taa", "taa", (_CTI + "cti-taa.tsv", _CTI + "cti-taa-gt.tsv",
                                      _CTI + "alias_dict.json", _CTI + "related_dict.json"),
              "GT", "URL", _cti_taa, True),
    Benchmark("mmlu_security", "mcq",
              ("mmlu_computer_security/data/test/computer_security_test.csv",), "answer", None, _mmlu),
    Benchmark("seceval", "mcq", ("seceval/questions-data.js", "seceval/faith_subset.json"),
              "answer", "id", _seceval),
    Benchmark("secbench_eng", "mcq", ("secbench/data/MCQs_2730.jsonl", "secbench/faith_subsets.json"),
              "label", None, _secbench("secbench-mcqa-eng")),
    Benchmark("secbench_eng_reasoning", "mcq",
              ("secbench/data/MCQs_2730.jsonl", "secbench/faith_subsets.json"),
              "label", None, _secbench("secbench-mcqa-eng-reasoning")),
    Benchmark("harmbench", "harmbench", ("harmbench/harmbench_behaviors_text_all.csv",), None,
              "BehaviorID", _harmbench("all")),
]}

# Suites run their members one after another and report them side by side.
SUITES: dict[str, tuple[str, ...]] = {
    # The public benchmarks of the report's Table 1 (CyberMetric and the proprietary two are absent).
    "cyber": ("ctibench_mcq", "ctibench_rcm", "ctibench_vsp", "ctibench_ate", "mmlu_security",
              "secbench_eng", "seceval"),
}


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        known = ", ".join(sorted([*BENCHMARKS, *SUITES]))
        raise EvalError(f"unknown benchmark {name!r}; choose one of: {known}")
    return BENCHMARKS[name]


def harmbench_split(split: str) -> Benchmark:
    """HarmBench over another split file (all = the report's 400, test = 320, val = 80)."""
    if split not in ("all", "test", "val"):
        raise EvalError(f"harmbench split={split!r} unknown; choose all, test or val")
    base = BENCHMARKS["harmbench"]
    return Benchmark(base.name, base.family, (f"harmbench/harmbench_behaviors_text_{split}.csv",),
                     None, base.id_column, _harmbench(split))


# ---- rows → items ------------------------------------------------------------------------------

def load_items(bench: Benchmark, data_dir: str | Path, limit: int | None = None) -> list[Item]:
    items = items_from_rows(bench, bench.rows(data_dir), source=f"data_dir={data_dir}")
    if bench.family == "ate":
        lists = {p: attack_techniques(data_dir, p) for p in ("Enterprise", "Mobile")}
        for item in items:
            platform = item.fields["platform"]
            techniques = lists.get(platform) or attack_techniques(data_dir, platform)
            item.fields["techniques"] = techniques
            # Row 9 (Agent Smith) is labelled Enterprise but its gold ids are all Mobile.
            if not item.gold <= {t for t, _ in techniques}:
                item.quirks.append("gold_outside_platform_list")
    return items[:limit] if limit else items


def items_from_rows(bench: Benchmark, rows: list[dict], source: str) -> list[Item]:
    if bench.gold_column and rows and bench.gold_column not in rows[0]:
        raise EvalError(f"{source}: no {bench.gold_column!r} column (the gold of {bench.name}); "
                        f"columns are {sorted(rows[0])}")
    build = _BUILDERS[bench.family]
    items = []
    for i, row in enumerate(rows):
        index = _position(row, i)
        item = Item(index=index, row={k: v for k, v in row.items() if k != "_position"}, gold=None)
        gold_raw = str(row.get(bench.gold_column, "")) if bench.gold_column else ""
        if bench.gold_column:
            if not gold_raw.strip():
                item.quirks.append("empty_gold")
            elif gold_raw != gold_raw.strip():
                item.quirks.append("gold_whitespace")
        build(item, gold_raw)
        if index in bench.stray_space_rows:
            item.quirks.append("stray_spaces_row")
        items.append(item)
    return items


def _position(row: dict, i: int) -> int:
    """FAITH-subset position, else the `index` a per-item output file carries, else the row number."""
    for key in ("_position", "index"):
        value = row.get(key)
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return int(value)
    return i


def _mcq(item: Item, gold_raw: str) -> None:
    row = item.row
    gold = gold_raw.strip()
    if gold != gold.upper():
        item.quirks.append("lowercase_gold")  # CTIBench-MCQ row 109 has `b`
    item.gold = gold.upper()
    if "Option A" in row:      # CTIBench
        question, choices = row.get("Question", ""), [row.get(f"Option {c}", "") for c in MCQ_LETTERS]
    elif "answers" in row:     # SecBench: `answers` is a list of 4 (7 Chinese rows have 5)
        question, choices = row.get("question", ""), _as_list(row.get("answers"))
    elif "choices" in row:     # SecEval: FAITH keeps only the text after the last ": "
        question = row.get("question", "")
        raw = _as_list(row.get("choices"))
        choices = [str(c).split(": ")[-1] for c in raw]
        if any(str(c).count(": ") > 1 for c in raw):
            item.quirks.append("choice_truncated_after_last_colon")
    elif "A" in row:           # MMLU
        question, choices = row.get("question", ""), [row.get(c, "") for c in MCQ_LETTERS]
    else:                      # a response file with the gold column only: nothing to prompt with
        question, choices = row.get("question", ""), []
    if any(str(c) == "" for c in choices):
        item.quirks.append("empty_option")
    # FAITH loads through HF datasets, where an empty cell is null and is rendered as "None".
    item.fields = {"question": str(question).strip(),
                   "choices": [str(c) if str(c) != "" else "None" for c in choices]}


def _as_list(value: Any) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.startswith("["):
        try:
            parsed = json.loads(value)
            return parsed if isinstance(parsed, list) else [value]
        except json.JSONDecodeError:
            return [value]
    return [] if value in (None, "") else [value]


def _upper(item: Item, gold_raw: str) -> None:
    """RCM (`CWE-79`) and VSP (a CVSS vector): compared upper-cased."""
    item.gold = gold_raw.strip().upper()
    item.fields = {"description": item.row.get("Description", "")}


def _ate(item: Item, gold_raw: str) -> None:
    item.gold = frozenset(s.strip().upper() for s in gold_raw.split(",") if s.strip())
    item.fields = {"description": item.row.get("Description", ""),
                   "platform": str(item.row.get("Platform", "Enterprise")).strip() or "Enterprise"}


def _taa(item: Item, gold_raw: str) -> None:
    item.gold = gold_raw.strip()
    item.fields = {"text": item.row.get("Text", "")}


def _harm(item: Item, gold_raw: str) -> None:
    row = item.row
    item.gold = None
    item.fields = {"behavior": row.get("Behavior", ""), "context": row.get("ContextString", ""),
                   "semantic": row.get("SemanticCategory", "") or "unknown",
                   "functional": row.get("FunctionalCategory", "") or "unknown"}


_BUILDERS: dict[str, Callable[[Item, str], None]] = {
    "mcq": _mcq, "rcm": _upper, "vsp": _upper, "ate": _ate, "taa": _taa, "harmbench": _harm,
}
