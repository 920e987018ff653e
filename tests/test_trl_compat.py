"""TRL compatibility both ways: a data set written in TRL's format (conversational `prompt`, its own
column names, no `task`) trains GRPO with TRL-style reward functions named by `_target_`, and our
rewards score a conversational completion as its string content.

The TRL-shaped reward below runs in every CI; the one from `trl.rewards` only where trl is installed."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from secreason.data.prompts import PromptDataModule
from secreason.errors import ConfigError, DataError
from secreason.rewards.sets import RewardSet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# TRL's conversational prompt format, its `solution` column, no `task`; "n/a": the reward does not apply.
TRL_ROWS = [{"prompt": [{"role": "system", "content": "Think, then answer."},
                        {"role": "user", "content": f"What is {a}+{b}?"}],
             "solution": str(a + b) if a != 3 else "n/a", "source": "arith"}
            for a, b in [(1, 2), (2, 2), (3, 4), (5, 1)]]
CALLS: list[dict] = []


def solution_in_completion(prompts, completions, completion_ids, solution, **kwargs) -> list[float | None]:
    """Shaped exactly as TRL calls a reward: everything by keyword, conversational in and out."""
    CALLS.append({"prompts": prompts, "completions": completions, "ids": completion_ids, "solution": solution,
                  "kwargs": sorted(kwargs)})
    return [None if s == "n/a" else float(s in c[0]["content"]) for c, s in zip(completions, solution)]


def trl_file(tmp_path: Path) -> Path:
    f = tmp_path / "trl.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in TRL_ROWS))
    return f


def grpo_cfg(compose_train, data: Path, rewards: dict, *overrides: str):
    cfg = compose_train("+experiment=grpo", f"data.path={data}", "data.columns.answer=solution", "data.task=math",
                        "data.batch_size=2", "algorithm.num_generations=2", "sampler.max_tokens=8",
                        "trainer.max_steps=2", "logger=csv", "callbacks.hf_export=null", "num_threads=1",
                        "trainer.enable_progress_bar=false", *overrides)
    with open_dict(cfg):
        cfg.rewards.rewards = rewards
    return cfg


def test_trl_format_data_with_a_trl_shaped_reward_by_target_trains_two_steps(compose_train, tmp_path):
    from secreason.run import train

    CALLS.clear()
    rewards = {"solution": {"fn": {"_target_": f"{__name__}.solution_in_completion", "_partial_": True},
                            "weight": 1.0, "tasks": ["math"]},
               "math": {"fn": {"_target_": "secreason.rewards.math_answer.MathReward"}, "weight": 1.0,
                        "tasks": ["math"]}}
    cfg = grpo_cfg(compose_train, trl_file(tmp_path), rewards)
    metrics = train(cfg)
    assert len(CALLS) == 2  # one call per GRPO step, 2 prompts × 2 completions each
    for call in CALLS:
        assert len(call["prompts"]) == len(call["completions"]) == len(call["ids"]) == 4
        assert all(p[-1]["role"] == "user" for p in call["prompts"])                    # TRL's prompt, unchanged
        assert all(c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) for c in call["completions"])
        assert all(isinstance(i, list) and all(isinstance(t, int) for t in i) for i in call["ids"])
        assert set(call["solution"]) <= {r["solution"] for r in TRL_ROWS}               # the mapped column's own name
        assert {"answer", "source", "task"} <= set(call["kwargs"])
    assert "train/loss" in metrics
    # 4 prompts, 2 steps of 2: the "n/a" prompt's 2 completions were "not applicable" (None), counted
    # and left out of the solution reward's mean, which is over the other 6 only
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("train/reward/total")]
    assert sum(float(r.get("train/reward_stats/solution/not_applicable") or 0) for r in logged) == 2.0
    calls = list(CALLS)  # re-scoring below appends to CALLS
    returned = [solution_in_completion(c["prompts"], c["completions"], c["ids"], c["solution"]) for c in calls]
    for row, values in zip(logged, returned):
        scored = [v for v in values if v is not None]
        assert float(row["train/reward/solution"]) == pytest.approx(sum(scored) / len(scored))


def test_trl_format_data_with_trls_own_reward(compose_train, tmp_path):
    if importlib.util.find_spec("trl") is None:
        pytest.skip("trl is not installed in this venv (pip install trl): TRL's own reward cannot be imported")
    from trl.rewards import accuracy_reward  # noqa: F401 (the reward the config names)

    from secreason.run import train

    rewards = {"accuracy": {"fn": {"_target_": "trl.rewards.accuracy_reward", "_partial_": True},
                            "weight": 1.0, "tasks": ["math"]}}
    metrics = train(grpo_cfg(compose_train, trl_file(tmp_path), rewards))
    assert "train/loss" in metrics and "train/reward/total" in metrics


def test_data_columns_map_and_task_constant(tokenizer, tmp_path):
    dm = PromptDataModule(tokenizer, path=str(trl_file(tmp_path)), split="train", batch_size=2,
                          columns={"answer": "solution"}, task="math", reward_tasks={"math"})
    dm.setup()
    row = dm.train_items[0]["row"]
    assert row["answer"] == row["solution"] == "3" and row["task"] == "math" and isinstance(row["prompt"], list)
    ids = dm.train_items[0]["prompt_ids"]
    text = tokenizer.decode(ids)
    assert "Think, then answer." in text and "What is 1+2?" in text  # the conversation, system message included


@pytest.mark.parametrize("rows,kw,needle", [
    ([{"prompt": "hi", "answer": "1"}], {}, "1: missing 'task' (name the column that holds it: data.task=<name>"),
    ([{"prompt": "hi", "task": "math"}], {"columns": {"answer": "solution"}},
     "1: missing 'answer' (data.columns.answer=solution: the row has no column 'solution')"),
    ([{"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "answer": "1"}],
     {"task": "math"}, "1: 'prompt' ends with an assistant message"),
    ([{"prompt": [{"role": "robot", "content": "hi"}], "answer": "1"}], {"task": "math"}, "1: prompt[0] must be"),
    ([{"prompt": {"text": "hi"}, "answer": "1"}], {"task": "math"}, "1: 'prompt' is a dict"),
])
def test_bad_trl_rows_name_file_line(tokenizer, tmp_path, rows, kw, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=f"{f}:" + needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace("+", r"\+")):
        PromptDataModule(tokenizer, path=str(f), split="train", batch_size=1, **kw).setup()


def test_a_column_map_for_a_column_we_do_not_have(tokenizer):
    with pytest.raises(ConfigError, match=r"data\.columns\.solution: not a column the RL rows have"):
        PromptDataModule(tokenizer, path="x.jsonl", columns={"solution": "answer"})


GOLD_AND_TEXT = [("mcqa", "B", "Answer: B"), ("cwe", "CWE-79", "CWE-79"), ("math", "12", "Answer: 12"),
                 ("attack", "T1059, T1566", "Answer: T1059, T1566"),
                 ("cvss", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")]


@pytest.mark.parametrize("task,gold,answer", GOLD_AND_TEXT, ids=[t for t, _, _ in GOLD_AND_TEXT])
def test_every_cyber_reward_scores_a_conversational_completion_as_its_text(compose_train, task, gold, answer):
    from hydra.utils import instantiate

    reward_set: RewardSet = instantiate(compose_train().rewards)
    texts = ["<think>Reasoning about the question step by step here.</think>" + answer,
             "<think>Reasoning about it.</think>Answer: nothing useful"]
    prompt = [{"role": "user", "content": "Question?"}]
    rows = [{"task": task, "answer": gold, "prompt": prompt}] * 2
    plain = reward_set(texts, rows)
    chat = reward_set([[{"role": "assistant", "content": t}] for t in texts], rows)
    assert plain.total == chat.total and plain.per_reward == chat.per_reward
    assert plain.correctness[0] == 1.0 and plain.correctness[1] == 0.0  # the comparison can tell them apart
