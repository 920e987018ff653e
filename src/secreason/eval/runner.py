"""One evaluation run: items → responses (generated, or read from a file) → scores → outputs.

Outputs in the run dir: `items.jsonl` (one record per item and seed: the raw response, the answer
after the think block, what was extracted and how it scored; it can be re-scored with
`responses=items.jsonl response_column=response`), `summary.json` (the returned dict) and an
offline wandb run. Seeds: each prompt gets `seeds` samples in one sampler call, sample s being
"seed s"; every metric is computed per seed, then averaged, with `<key>_std` beside it.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, TextIO

from omegaconf import DictConfig, OmegaConf

from secreason.errors import ConfigError
from secreason.rewards.extraction import DEFAULT_THINK_TAGS, split_think
from secreason.eval import EvalError, benchmarks, harmbench, metrics, prompts, report_table
from secreason.eval import scoring_ctibench, scoring_report
from secreason.eval.benchmarks import Benchmark, Item
from secreason.eval.files import atomic_open, read_response_file, write_text_atomic
from secreason.eval.taa import ActorGraph

PROTOCOLS = {"report": scoring_report, "ctibench": scoring_ctibench}


def members(cfg: DictConfig) -> tuple[str, ...]:
    name = cfg.benchmark.name
    return benchmarks.SUITES.get(name, (name,))


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked before a model is loaded."""
    from secreason.models import resolve_device

    resolve_device(cfg.get("device", "auto"))  # an unknown device, or cuda on a box without one
    proto = cfg.protocol.name
    if proto not in PROTOCOLS:
        raise EvalError(f"protocol={proto!r} unknown; choose report or ctibench")
    for name in members(cfg):
        bench = resolve(cfg, name)
        if proto == "ctibench" and not bench.ctibench:
            raise EvalError(f"protocol=ctibench applies only to the ctibench_* benchmarks, not {cfg.benchmark.name}")
        if not cfg.get("responses"):  # before a model is loaded, and for every suite member
            bench.check_files(cfg.data_dir)
    if cfg.get("responses"):
        if cfg.benchmark.name in benchmarks.SUITES:
            raise EvalError(f"responses= scores one benchmark; {cfg.benchmark.name} is a suite")
        if not cfg.get("response_column"):
            raise EvalError("responses= needs response_column=<the column holding the raw model output>")
    if cfg.get("report_table") and proto != "report":
        raise EvalError("report_table=true needs protocol=report: the report's figures are FAITH scores")
    positive_int(cfg, "seeds")
    positive_int(cfg, "limit", nullable=True)
    system_prompt_for(cfg)


def positive_int(cfg: DictConfig, key: str, nullable: bool = False) -> int | None:
    """`cfg[key]` as an int ≥ 1 (or None when `nullable`), else a ConfigError naming the key."""
    value = cfg.get(key)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        rule = "must be an integer ≥ 1" + (" or null" if nullable else "")
        raise ConfigError(f"{key}={value!r}: {rule}")
    return value


def run(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    generator: list[Any] = []

    def get_generator():
        if not generator:
            from secreason.eval.generate import Generator

            generator.append(Generator(cfg))
        return generator[0]

    names = members(cfg)
    # Written whole or not at all (a temp file renamed on success): a failed run leaves no empty
    # or half-written items.jsonl in place of a previous one.
    with atomic_open(run_dir / "items.jsonl") as sink:
        results = {name: evaluate(cfg, name, sink, get_generator) for name in names}
    if len(names) == 1:
        summary = results[names[0]]
    else:
        summary = {"benchmark": cfg.benchmark.name, "protocol": cfg.protocol.name, **results}
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    if cfg.wandb.enabled:
        log_wandb(cfg, results, run_dir)
    if cfg.get("report_table"):
        print(report_table.format_table(results))
    return summary


def response_groups(cfg: DictConfig, bench: Benchmark) -> list[tuple[int, list[Item], list[str]]]:
    """(seed, items, raw responses) from a response file; a `seed` column splits it by seed."""
    rows = read_response_file(cfg.responses)
    if not rows:
        raise EvalError(f"responses={cfg.responses}: no rows")
    column = str(cfg.response_column)
    if column not in rows[0]:
        raise EvalError(f"responses={cfg.responses}: no column {column!r}; columns are {sorted(rows[0])}")
    by_seed: dict[int, list[dict]] = {}
    for row in rows:
        by_seed.setdefault(int(row.get("seed") or 0), []).append(row)
    groups = []
    for seed, seed_rows in sorted(by_seed.items()):
        seed_rows = seed_rows[:cfg.limit] if cfg.get("limit") else seed_rows
        items = benchmarks.items_from_rows(bench, seed_rows, f"responses={cfg.responses}")
        groups.append((seed, items, [str(r.get(column, "")) for r in seed_rows]))
    return groups


def resolve(cfg: DictConfig, name: str) -> Benchmark:
    if name == "harmbench":
        return benchmarks.harmbench_split(cfg.benchmark.get("split", "all"))
    return benchmarks.get(name)


def evaluate(cfg: DictConfig, name: str, sink: TextIO, get_generator: Callable) -> dict[str, Any]:
    bench = resolve(cfg, name)
    proto, family = cfg.protocol.name, bench.family
    # Built first: judges and alias tables fail here, not after a long generation.
    scorer = Scorer(bench, proto, cfg.data_dir, tuple(cfg.think_tags or ()), cfg.get("judge"), cfg.get("guard"),
                    device=cfg.get("device", "auto"))
    if cfg.get("responses"):
        groups = response_groups(cfg, bench)
    else:
        items = benchmarks.load_items(bench, cfg.data_dir, cfg.get("limit"))
        if not items:
            raise EvalError(f"{name}: no items to score")
        shots = few_shot_pool(cfg, name)
        system_prompt = system_prompt_for(cfg)
        conversations = [prompts.messages(proto, family, it, system_prompt, shots) for it in items]
        outputs = get_generator()(conversations, int(cfg.seeds))
        groups = [(s, items, [o[s] for o in outputs]) for s in range(int(cfg.seeds))]

    per_seed, per_seed_counts = [], []
    response_quirks: Counter = Counter()
    for seed, items, responses in groups:
        records, seed_metrics, counts = scorer.score(items, responses)
        for rec in records:
            response_quirks.update(rec.pop("_quirks"))
            sink.write(json.dumps({"benchmark": name, "protocol": proto, "seed": seed, **rec},
                                  ensure_ascii=False, default=_jsonable) + "\n")
        per_seed.append(seed_metrics)
        per_seed_counts.append(counts)

    metric_keys = scorer.metric_keys
    result: dict[str, Any] = {"benchmark": name, "protocol": proto, "n": len(groups[0][1]), "seeds": len(groups)}
    result.update({k: round(v, 6) for k, v in metrics.over_seeds(per_seed, metric_keys).items()})
    for key, value in metrics.over_seeds(per_seed_counts, ()).items():
        result[key] = int(value) if value == int(value) else round(value, 3)
    quirks = Counter(q for it in groups[0][1] for q in it.quirks) + response_quirks
    if quirks:
        result["quirks"] = dict(sorted(quirks.items()))
    return result


class Scorer:
    """Scores one seed's responses; holds what scoring needs across seeds (alias graphs, judges)."""

    def __init__(self, bench: Benchmark, protocol: str, data_dir: str | Path,
                 think_tags: tuple[str, ...] | None = DEFAULT_THINK_TAGS,
                 judge_cfg: Any = None, guard_cfg: Any = None, device: str | None = "auto"):
        self.bench, self.family, self.proto = bench, bench.family, protocol
        self.think_tags = tuple(think_tags) if think_tags else None
        self.ctx: dict[str, Any] = {}
        if self.family == "taa":
            if data_dir is None or str(data_dir) == "":  # TAA is scored with CTIBench's alias tables
                raise EvalError(f"data_dir is not set: {bench.name} is scored with ctibench/alias_dict.json and "
                                f"related_dict.json; {benchmarks.how_to_get('ctibench')}")
            cti = Path(data_dir) / "ctibench"
            if protocol == "ctibench":
                self.ctx = {"actors": ActorGraph.from_dir(cti, keep_nan=True),
                            "actors_without_nan": ActorGraph.from_dir(cti, keep_nan=False)}
            else:
                self.ctx = {"actors": ActorGraph.from_dir(cti, keep_nan=False)}
        if self.family == "harmbench":
            self.judge_cfg = judge_cfg or {"name": "refusal"}
            self.judge = harmbench.make_judge(self.judge_cfg, device)
            self.guard = harmbench.make_guard(guard_cfg or {"name": "none"}, device)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        return ("pass_rate",) if self.family == "harmbench" else PROTOCOLS[self.proto].METRIC_KEYS[self.family]

    def score(self, items: list[Item], responses: list[str]):
        """(records, metrics, counts); each record keeps a `_quirks` list for the caller to pop."""
        records, answers = [], []
        for item, raw in zip(items, responses):
            split = split_think(raw, self.think_tags)
            quirks = []
            if not raw.strip():
                quirks.append("empty_response")
            if self.think_tags and split.opened and not split.closed:
                quirks.append("think_unclosed")
            rec = {"index": item.index, "id": item.row.get(self.bench.id_column) if self.bench.id_column else None}
            if self.bench.gold_column:
                rec[self.bench.gold_column] = item.row.get(self.bench.gold_column)
            records.append({**rec, "response": raw, "answer": split.answer, "_quirks": quirks})
            answers.append(split.answer)
        if self.family == "harmbench":
            return self._score_harmbench(items, records, answers)
        module = PROTOCOLS[self.proto]
        for item, rec, answer in zip(items, records, answers):
            rec.update(module.score_item(self.family, answer, item, **self.ctx))
        seed_metrics, counts = module.aggregate(self.family, records)
        return records, seed_metrics, counts

    def _score_harmbench(self, items, records, answers):
        users = [prompts.harmbench_user_message(it) for it in items]
        final, guard_records = harmbench.guard_responses(self.guard, users, answers)
        judged = self.judge.records(items, users, final)
        for item, rec, g, j, answer in zip(items, records, guard_records, judged, final):
            rec.update({"semantic": item.fields["semantic"], "functional": item.fields["functional"],
                        "final_answer": answer, **g, **j})
        seed_metrics, counts = harmbench.aggregate(items, [{**g, **j} for g, j in zip(guard_records, judged)])
        return records, seed_metrics, counts


def system_prompt_for(cfg: DictConfig) -> str | None:
    """ctibench: upstream's system prompt. report: none (PROTOCOLS.md) unless system_prompt=safety."""
    if cfg.protocol.name == "ctibench":
        return prompts.CTIBENCH_SYSTEM_PROMPT
    choice = str(cfg.get("system_prompt") or "none")
    if choice == "none":
        return None
    if choice == "safety":
        return str(cfg.safety_system_prompt)
    raise EvalError(f"system_prompt={choice!r} unknown; choose none or safety")


def few_shot_pool(cfg: DictConfig, name: str) -> list[Item]:
    k = int(cfg.benchmark.get("num_shots") or 0)
    if not k:
        return []
    if name != "mmlu_security":
        raise EvalError(f"benchmark.num_shots={k}: only mmlu_security has a few-shot pool")
    rows = benchmarks.mmlu_dev(Path(cfg.data_dir))
    if k > len(rows):
        raise EvalError(f"benchmark.num_shots={k}: the dev split has only {len(rows)} items")
    return benchmarks.items_from_rows(benchmarks.get(name), rows[:k], "mmlu dev split")


def log_wandb(cfg: DictConfig, results: dict[str, dict], run_dir: Path) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(project=cfg.wandb.project, name=f"{cfg.benchmark.name}-{cfg.protocol.name}",
                     dir=str(run_dir), config=OmegaConf.to_container(cfg, resolve=True), reinit=True)
    flat = {f"eval/{name}/{k}": v for name, res in results.items() for k, v in res.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    columns, data = items_table((run_dir / "items.jsonl").read_text().splitlines())
    run.log({**flat, "eval/items": wandb.Table(columns=columns, data=data)})  # one row per item and seed
    run.summary.update(flat)
    run.finish()


def items_table(lines: list[str]) -> tuple[list[str], list[list[Any]]]:
    """items.jsonl lines as (columns, data) for a wandb.Table: every key any record has, in first-seen
    order; a value that is not a str/number/bool (a list, a dict) as its JSON text."""
    records = [json.loads(line) for line in lines if line.strip()]
    columns = list(dict.fromkeys(k for rec in records for k in rec))

    def cell(value: Any) -> Any:
        return value if value is None or isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)

    return columns, [[cell(rec.get(c)) for c in columns] for rec in records]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)
