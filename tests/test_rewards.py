"""The correctness rewards, RewardSet routing, Hydra configs and the score CLI.

Every expected value is worked out by hand in a comment next to it.
"""

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from secreason.rewards import Reward
from secreason.rewards.attack import ATTACKReward
from secreason.rewards.cvss_score import CVSSReward
from secreason.rewards.cwe import CWEReward, load_hierarchy
from secreason.rewards.format_penalty import RequireThink, ThinkQuality
from secreason.rewards.math_answer import MathReward
from secreason.rewards.mcqa import MCQAReward
from secreason.score import build_reward_set
from secreason.rewards.sets import RewardResult, RewardSet
from secreason.rewards.timeout import RewardTimeout, run_with_time_limit

REPO = Path(__file__).resolve().parent.parent
THINK = "<think>The description matches this weakness best, checked against the others.</think>"
GOLD_VECTOR = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # base 9.8


def scores(reward, completions, gold):
    return reward(completions, answer=[gold] * len(completions))


# --- MCQA ----------------------------------------------------------------------------------
@pytest.mark.parametrize("answer", [
    "Answer: B", "B", "(B)", "**B**", "Answer: (b)", "Answer: **B**", "The answer is B",
    "\n\nAnswer: B\n", "Answer: B. A buffer overflow lets the attacker write past the end.",
])
def test_mcqa_lenient_forms_score_1(answer):
    assert scores(MCQAReward(), [THINK + answer], "B") == [1.0]


@pytest.mark.parametrize("answer", [
    "Answer: A, B",              # spraying: two letters in a list
    "Answer: B or C",
    "Answer: A\nAnswer: B",      # two answer lines
    "(A) (B) (C) (D)",
    "Answer: B, unless (C)",
    "A B C D",                   # no readable letter
    "Answer: C",                 # wrong
    "",                          # nothing after the think
])
def test_mcqa_spraying_and_wrong_score_0(answer):
    assert scores(MCQAReward(), [THINK + answer], "B") == [0.0]


def test_mcqa_letter_only_in_think_scores_0():
    assert scores(MCQAReward(), ["<think>Answer: B</think>", "<think>Answer: B</think>I am unsure"], "B") == [0.0, 0.0]


def test_mcqa_unclosed_think_reads_the_last_line():
    # Fallback: answer = last non-empty line after <think>; the format penalty judges the format.
    completions = ["<think>A looks wrong\nAnswer: B", "<think>Answer: B\nstill thinking"]
    assert scores(MCQAReward(), completions, "B") == [1.0, 0.0]


def test_mcqa_custom_tags_gold_case_and_extra_columns():
    reward = MCQAReward(think_tags=["<r>", "</r>"])
    out = reward(["<r>x</r>Answer: c", "<think>x</think>Answer: c"], answer=["c", "C"],
                 task=["mcqa", "mcqa"], prompt=["q", "q"], domain=["security", "security"])
    # "<think>" is not a tag here: no tag at all → whole text; its one marker letter is C.
    assert out == [1.0, 1.0]


def test_mcqa_bad_inputs_count_and_score_0():
    reward = MCQAReward()
    assert reward([None, "Answer: B", "Answer: B"], answer=["B", None, "not a letter"]) == [0.0, 0.0, 0.0]
    assert (reward.stats["non_string"], reward.stats["missing_gold"], reward.stats["bad_gold"]) == (1, 1, 1)
    with pytest.raises(ValueError):
        reward(["a", "b"], answer=["B"])  # misaligned columns are a caller bug: loud


# --- CWE -----------------------------------------------------------------------------------
def test_cwe_hierarchy_real_pairs():
    h = load_hierarchy()  # CWE 4.14, view 1000
    assert h.parents[79] == {74} and h.parents[77] == {74} and h.parents[80] == {79}
    assert h.relation(74, 79) == "parent" and h.relation(80, 79) == "child"
    assert h.relation(77, 79) == "sibling"  # both ChildOf CWE-74 (injection)
    assert h.relation(89, 79) is None       # 89 → 943 → 74: a cousin, not a direct neighbour


@pytest.mark.parametrize("answer, binary, partial", [
    ("CWE-79", 1.0, 1.0),
    ("It is\ncwe-79", 1.0, 1.0),
    ("CWE ID: 79", 1.0, 1.0),
    ("CWE-74", 0.0, 0.5),          # parent of 79
    ("CWE-80", 0.0, 0.5),          # child of 79
    ("CWE-77", 0.0, 0.5),          # sibling (shared parent 74)
    ("CWE-89", 0.0, 0.0),          # unrelated
    ("CWE-99999", 0.0, 0.0),       # not in the catalog
    ("CWE-79 or CWE-80", 0.0, 0.0),  # several different ids
    ("CWE-79, ID: 89", 0.0, 0.0),  # several, across the two patterns
    ("cross-site scripting", 0.0, 0.0),
])
def test_cwe_reward(answer, binary, partial):
    assert scores(CWEReward(), [THINK + answer], "CWE-79") == [binary]
    assert scores(CWEReward(partial_credit=0.5), [THINK + answer], "CWE-79") == [partial]


def test_cwe_id_only_in_think_and_category_gold():
    assert scores(CWEReward(), ["<think>CWE-79</think>not sure"], "CWE-79") == [0.0]
    # CWE-264 is a category (outside view 1000) and a CTIBench gold: exact still scores 1.
    assert scores(CWEReward(partial_credit=0.5), [THINK + "CWE-264"], "CWE-264") == [1.0]
    with pytest.raises(ValueError):
        CWEReward(partial_credit=1.5)


# --- CVSS ----------------------------------------------------------------------------------
HIGH_C_I = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:N"   # 9.1
HIGH_C_A = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:H"   # 9.1 too, other metrics
LOCAL = "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"      # 7.8


def test_cvss_binary_score_and_vector():
    by_score, by_vector = CVSSReward(), CVSSReward(match="vector")
    completions = [THINK + GOLD_VECTOR, THINK + HIGH_C_I, THINK + GOLD_VECTOR.lower()]
    assert by_score(completions, answer=[GOLD_VECTOR] * 3) == [1.0, 0.0, 1.0]
    # Same base score 9.1, different metrics: equal by score, not by vector.
    assert by_score([THINK + HIGH_C_A], answer=[HIGH_C_I]) == [1.0]
    assert by_vector([THINK + HIGH_C_A], answer=[HIGH_C_I]) == [0.0]


def test_cvss_graded_by_hand():
    graded = CVSSReward(mode="graded")
    out = graded([THINK + GOLD_VECTOR, THINK + HIGH_C_I, THINK + LOCAL], answer=[GOLD_VECTOR] * 3)
    # 1 - |9.8-9.8|/10 = 1; 1 - |9.1-9.8|/10 = 0.93; 1 - |7.8-9.8|/10 = 0.8
    assert out == pytest.approx([1.0, 0.93, 0.8])
    per_metric = CVSSReward(mode="graded", per_metric=True)
    # LOCAL differs in AV and PR: 6/8 = 0.75 agree; (0.8 + 0.75) / 2 = 0.775
    assert per_metric([THINK + LOCAL], answer=[GOLD_VECTOR]) == pytest.approx([0.775])


@pytest.mark.parametrize("answer", [
    "CVSS:3.1/AV:N/AC:L",                                        # mandatory metrics missing
    "CVSS:3.1/AV:N/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",          # duplicate metric
    "CVSS:3.1/AV:Q/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",               # unknown value
    GOLD_VECTOR + " or " + LOCAL,                                 # two different vectors
    "critical",
])
def test_cvss_invalid_vectors_score_0(answer):
    assert scores(CVSSReward(mode="graded"), [THINK + answer], GOLD_VECTOR) == [0.0]


def test_cvss_bare_metrics_numeric_gold_and_options():
    bare = THINK + "/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # read as CVSS:3.0, also 9.8
    assert scores(CVSSReward(), [bare], GOLD_VECTOR) == [1.0]
    assert CVSSReward()([bare, bare], answer=["9.8", 9.8]) == [1.0, 1.0]
    # Numeric gold can only be compared by score: match="vector" falls back to it.
    assert CVSSReward(match="vector")([bare], answer=["9.8"]) == [1.0]
    assert CVSSReward(mode="graded")([bare], answer=["8.8"]) == pytest.approx([0.9])  # 1 - 1.0/10
    reward = CVSSReward()
    assert reward([bare, bare], answer=["11", "not a vector"]) == [0.0, 0.0]
    assert reward.stats["bad_gold"] == 2
    for bad in ({"mode": "fuzzy"}, {"match": "metrics"}, {"per_metric": True}):
        with pytest.raises(ValueError):
            CVSSReward(**bad)


# --- ATT&CK --------------------------------------------------------------------------------
def test_attack_f1_by_hand():
    gold = "T1059, T1566, T1071"
    out = ATTACKReward()([
        THINK + "Answer: T1059.001, T1566, T1003",   # strip: {1059,1566,1003}: tp2 fp1 fn1 → 4/6
        THINK + "Answer: T1059, T1566, T1071",       # exact → 1
        THINK + "Answer: " + ", ".join(f"T{n}" for n in range(1059, 1069)) + ", T1566, T1071",
        # 12 ids, 3 right: tp3 fp9 fn0 → 6/15 = 0.4 (spraying ids is not free)
        "<think>Answer: T1059, T1566, T1071</think>none",  # only in the think → 0
        THINK + "T1566\n",                            # no marker: last line, tp1 fn2 → 2/4
    ], answer=[gold] * 5)
    assert out == pytest.approx([4 / 6, 1.0, 0.4, 0.0, 0.5])


def test_attack_keep_subtechniques_and_mobile():
    keep = ATTACKReward(subtechniques="keep")
    # {T1059.001, T1566, T1003} vs {T1059, T1566, T1071}: tp1 fp2 fn2 → 2/6
    assert keep([THINK + "Answer: T1059.001, T1566, T1003"], answer=["T1059, T1566, T1071"]) == pytest.approx([1 / 3])
    # Mobile ids (Agent Smith's): {T1404, T1577} vs {T1404, T1406, T1577}: tp2 fn1 → 4/5
    mobile = ATTACKReward()([THINK + "Answer: T1404, T1577"], answer=[["T1404", "T1406", "T1577"]])
    assert mobile == pytest.approx([0.8])
    reward = ATTACKReward()
    assert reward([THINK + "Answer: T1059"], answer=[""]) == [0.0] and reward.stats["bad_gold"] == 1
    with pytest.raises(ValueError):
        ATTACKReward(subtechniques="merge")


# --- math ----------------------------------------------------------------------------------
def test_math_reward_via_math_verify():
    out = scores(MathReward(), [
        THINK + "Answer: 12", THINK + "Answer: 12.0", THINK + "The final answer is $\\boxed{12}$",
        THINK + "Answer: $\\frac{24}{2}$", THINK + "Answer: 13", "<think>Answer: 12</think>", THINK,
    ], "12")
    assert out == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert scores(MathReward(), [THINK + "Answer: 0.5", THINK + "Answer: 1/2"], "\\frac{1}{2}") == [1.0, 1.0]


def test_math_explosive_answers_are_refused_fast():
    reward = MathReward()
    started = time.monotonic()
    out = scores(reward, [THINK + "Answer: 9^9^9", THINK + "Answer: $99999999!$", THINK + "Answer: 2**99999"], "12")
    assert out == [0.0, 0.0, 0.0] and reward.stats["explosive"] == 3
    assert time.monotonic() - started < 5  # unguarded, each runs for more than 20 s


# --- time limit and the never-raise base -------------------------------------------------
class Spin(Reward):
    """A scorer that overruns, fails or returns junk on demand."""

    def score(self, completion, gold):
        if completion == "raise":
            raise KeyError("boom")
        if completion == "nan":
            return math.nan
        if completion == "big":
            return 7.0
        # Spins far past any limit used here, but ends: an abandoned worker thread must not
        # keep a core busy for the rest of the session.
        spin(2)
        return 1.0


def test_base_turns_timeouts_errors_and_nan_into_0():
    reward = Spin(timeout_s=0.05)
    assert reward(["spin", "raise", "nan", "big"], answer=["g"] * 4) == [0.0, 0.0, 0.0, 1.0]  # 7 clamped to 1
    assert (reward.stats["timeouts"], reward.stats["errors"], reward.stats["non_finite"]) == (1, 1, 1)


def test_time_limit_outside_the_main_thread():
    result = {}
    worker = threading.Thread(target=lambda: result.update(v=Spin(timeout_s=0.05)(["spin"], answer=["g"])))
    worker.start()
    worker.join(5)
    assert result["v"] == [0.0]


def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_time_limit_survives_a_swallowed_timeout():
    # Python drops an exception raised inside a gc callback; the timer must fire again.
    def stubborn():
        try:
            spin(2)
        except RewardTimeout:
            pass  # swallowed
        spin(2)
    started = time.monotonic()
    with pytest.raises(RewardTimeout):
        run_with_time_limit(stubborn, 0.05)
    assert time.monotonic() - started < 1.5  # 0.05 s + one 0.05 s retry, not the 4 s of spinning


def test_time_limit_restores_an_outer_timer():
    def inner():
        assert run_with_time_limit(lambda: 3, 0.01) == 3
        time.sleep(1)  # the outer 0.2 s limit must still fire here
    with pytest.raises(RewardTimeout):
        run_with_time_limit(inner, 0.2)


# --- RewardSet -----------------------------------------------------------------------------
def fixed(value):
    return lambda completions, **columns: [value] * len(completions)


def test_reward_set_routes_weights_and_marks_unrouted():
    rs = RewardSet({
        "mcqa": {"fn": MCQAReward(), "weight": 1.0, "tasks": ["mcqa"]},
        "bonus": {"fn": fixed(0.5), "weight": 2.0, "tasks": ["mcqa", "cwe"]},
        "cwe": {"fn": CWEReward(), "weight": 1.0, "tasks": "cwe"},
    })
    rows = [{"task": "mcqa", "answer": "B"}, {"task": "cwe", "answer": "CWE-79"}, {"task": "poetry", "answer": "x"}]
    result = rs([THINK + "Answer: B", THINK + "CWE-79", THINK + "x"], rows)
    # mcqa row: 1·1 + 2·0.5 = 2; cwe row: 2·0.5 + 1·1 = 2; poetry: unrouted → 0
    assert result.correctness == [2.0, 2.0, 0.0] and result.total == [2.0, 2.0, 0.0]
    assert result.per_reward == {"mcqa": [1.0, None, None], "bonus": [0.5, 0.5, None], "cwe": [None, 1.0, None]}
    assert result.routed == [True, True, False] and result.stats["unrouted"] == 1
    metrics = result.metrics()
    assert metrics["train/reward/mcqa"] == 1.0 and metrics["train/reward/bonus"] == 0.5  # routed rows only
    assert metrics["train/reward_stats/unrouted"] == 1.0
    assert metrics["train/reward/correctness"] == pytest.approx(4 / 3)
    # a batch with no cwe row still logs cwe's counters (as 0), so the chart exists from step 1
    quiet = rs([THINK + "Answer: B"], rows[:1]).metrics()
    assert quiet["train/reward_stats/cwe/timeouts"] == 0.0 and quiet["train/reward_stats/cwe/errors"] == 0.0
    assert "train/reward/cwe" not in quiet  # no routed row: no mean


def test_reward_set_penalty_and_bad_reward_values_never_nan():
    rs = RewardSet({"mcqa": {"fn": MCQAReward(), "weight": 1.0, "tasks": ["mcqa"]},
                    "broken": {"fn": lambda c, **k: [None, math.nan], "weight": 1.0, "tasks": ["mcqa"]}},
                   format_penalty=ThinkQuality())
    rows = [{"task": "mcqa", "answer": "B", "prompt": "Pick one."}] * 2
    result = rs(["<think> No</think>Answer: B", THINK + "Answer: B"], rows)
    # hack: 1 (mcqa) + nothing (None: not applicable) - 1 = 0; honest: 1 + 0 (NaN→0) + 0 = 1
    assert result.total == [0.0, 1.0] and result.correctness == [1.0, 1.0]
    assert result.penalised == [True, False] and result.penalty_reasons == [["short_think"], []]
    assert result.per_reward["broken"] == [None, 0.0]
    assert result.stats["broken/invalid"] == 1 and result.stats["broken/not_applicable"] == 1


def test_reward_result_metrics_by_hand():
    result = RewardResult(total=[1.0, 0.0, 0.5, 0.5, -1.0], correctness=[1.0, 0.0, 0.5, 0.5, 0.0],
                          format_penalty=[0.0, 0.0, 0.0, 0.0, -1.0],
                          per_reward={"a": [1.0, 0.0, None, None, 0.0], "b": [None, None, 0.5, 0.5, None],
                                      "never": [None] * 5},
                          penalised=[False, False, False, False, True], routed=[True] * 5,
                          penalty_reasons=[[], ["short_think"], [], ["short_think", "no_think"], ["no_think"]],
                          stats={"a/timeouts": 2, "a/errors": 0, "unrouted": 0},
                          reason_names=("no_think", "short_think", "empty_think"))
    m = result.metrics(group_index=[0, 0, 1, 1, 2])
    assert m["train/reward/total"] == pytest.approx(1.0 / 5)
    assert m["train/reward/correctness"] == pytest.approx(2.0 / 5)
    assert m["train/reward/format_penalty"] == pytest.approx(-1.0 / 5)
    assert m["train/format_penalty_rate"] == pytest.approx(1 / 5)
    assert m["train/reward/a"] == pytest.approx(1 / 3) and m["train/reward/b"] == 0.5 and "train/reward/never" not in m
    # groups {1, 0}: unbiased std √0.5; {0.5, 0.5}: 0; {-1}: a group of one has no spread → mean √0.5 / 3
    assert m["train/reward/std"] == pytest.approx(math.sqrt(0.5) / 3)
    # fractions of rows where each reason fired (a row's reason counts once)
    assert m["train/penalty/short_think"] == pytest.approx(2 / 5) and m["train/penalty/no_think"] == pytest.approx(2 / 5)
    assert m["train/penalty/empty_think"] == 0.0  # declared, never fired: logged as 0
    assert m["train/reward_stats/a/timeouts"] == 2.0 and m["train/reward_stats/a/errors"] == 0.0
    assert m["train/reward_stats/unrouted"] == 0.0
    assert "train/reward/std" not in result.metrics()  # no groups given


def test_reward_set_stats_are_this_batchs_counts_by_reward():
    """Each call reports what its rewards counted during that call only, under "<name>/<stat>";
    timeouts and errors are always there (0), other counters from their first count on."""
    mcqa, penalty = MCQAReward(), ThinkQuality()
    rs = RewardSet({"mcqa": {"fn": mcqa, "weight": 1.0, "tasks": ["mcqa"]},
                    "plain": {"fn": lambda c, **k: ["x"] * len(c), "weight": 1.0, "tasks": ["mcqa"]}},
                   format_penalty=penalty)
    row = {"task": "mcqa", "answer": "B", "prompt": "Pick one."}
    first = rs([THINK + "Answer: B", None, THINK + "Answer: B"], [row, row, {"task": "poetry"}])
    assert first.stats == {"mcqa/timeouts": 0, "mcqa/errors": 0, "mcqa/non_string": 1,
                           "plain/invalid": 2, "format_penalty/timeouts": 0, "format_penalty/errors": 0,
                           "unrouted": 1}
    assert first.penalty_reasons[1] == ["not_text"] and first.reason_names == ThinkQuality.REASONS
    second = rs([THINK + "Answer: B"], [row])
    assert second.stats == {"mcqa/timeouts": 0, "mcqa/errors": 0, "mcqa/non_string": 0,
                            "plain/invalid": 1, "format_penalty/timeouts": 0, "format_penalty/errors": 0,
                            "unrouted": 0}
    assert mcqa.stats["non_string"] == 1  # the reward's own counter keeps the running total
    assert second.metrics()["train/reward_stats/mcqa/non_string"] == 0.0


def test_reward_set_rejects_bad_specs():
    with pytest.raises(ValueError):
        RewardSet({})
    with pytest.raises(ValueError):
        RewardSet({"total": {"fn": fixed(1.0), "tasks": ["mcqa"]}})
    with pytest.raises(ValueError):
        RewardSet({"x": {"fn": 3, "tasks": ["mcqa"]}})
    with pytest.raises(ValueError):
        RewardSet({"x": {"fn": fixed(1.0), "tasks": []}})
    with pytest.raises(ValueError):
        RewardSet({"x": {"fn": fixed(1.0), "tasks": ["a"]}})(["c"], [])


@pytest.mark.parametrize("name", ["cyber", "graded", "mcqa_only", "math_only"])
def test_hydra_configs_build(name):
    rs = build_reward_set(name, "think_quality", REPO / "conf")
    assert isinstance(rs, RewardSet) and isinstance(rs.format_penalty, ThinkQuality)
    assert all(r.weight == 1.0 for r in rs.rewards.values())
    if name == "graded":
        assert rs.rewards["cvss"].fn.mode == "graded" and rs.rewards["cwe"].fn.partial_credit == 0.5
    if name == "cyber":
        assert {n: set(r.tasks) for n, r in rs.rewards.items()} == {
            "mcqa": {"mcqa"}, "cwe": {"cwe"}, "cvss": {"cvss"}, "attack": {"attack"}, "math": {"math"}}
        assert rs.rewards["cvss"].fn.mode == "binary" and rs.rewards["cwe"].fn.partial_credit == 0.0


def test_hydra_instantiate_with_omegaconf_nodes_and_uninstantiated_fns():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"_target_": "secreason.rewards.sets.RewardSet", "rewards": {"mcqa": {
        "fn": {"_target_": "secreason.rewards.mcqa.MCQAReward"}, "weight": 2, "tasks": ["mcqa"]}}})
    rs = instantiate(cfg, format_penalty=RequireThink())
    assert rs([THINK + "B"], [{"task": "mcqa", "answer": "B"}]).total == [2.0]
    raw = RewardSet(OmegaConf.create({"mcqa": {"fn": {"_target_": "secreason.rewards.mcqa.MCQAReward"}, "tasks": ["mcqa"]}}))
    assert raw([THINK + "B"], [{"task": "mcqa", "answer": "B"}]).total == [1.0]


# --- score CLI -----------------------------------------------------------------------------
def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=f"src{os.pathsep}.")
    return subprocess.run([sys.executable, "-m", "secreason.score", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_score_cli_ranks_the_hack_below_honest_reasoning(tmp_path):
    rows = [
        {"task": "mcqa", "prompt": "Which CWE fits?", "completion": "<think> No</think>Answer: B", "answer": "B"},
        {"task": "mcqa", "prompt": "Which CWE fits?", "completion": THINK + "Answer: B", "answer": "B"},
        {"task": "cwe", "prompt": "Map it.", "completion": THINK + "CWE-80", "answer": "CWE-79"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = run_cli("--rewards", "graded", "--format-penalty", "think_quality", "--input", str(path))
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["total"] for o in out] == [0.0, 1.0, 0.5]  # 1-1, 1+0, partial 0.5 (80 is 79's child)
    assert out[0]["penalty_reasons"] == ["short_think"] and out[0]["mcqa"] == 1.0 and out[0]["cwe"] is None
    assert set(out[2]) >= {"total", "correctness", "format_penalty", "mcqa", "cwe", "cvss", "attack", "math"}


@pytest.mark.parametrize("content, message", [
    ('{"task": "mcqa", "completion": "B", "answer": "B"}\n{not json\n', "rows.jsonl:2: invalid JSON"),
    ('{"task": "mcqa", "answer": "B"}\n', "rows.jsonl:1: missing key(s) completion"),
    ('["a list"]\n', "rows.jsonl:1: a row must be a JSON object"),
    ("\n", "no rows"),
])
def test_score_cli_bad_input_is_one_line_and_nonzero(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    done = run_cli("--input", str(path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr


def test_score_cli_missing_file_and_unknown_config(tmp_path):
    done = run_cli("--input", str(tmp_path / "absent.jsonl"))
    assert done.returncode == 2 and "absent.jsonl: cannot read" in done.stderr
    (tmp_path / "rows.jsonl").write_text('{"task": "mcqa", "completion": "B", "answer": "B"}\n')
    done = run_cli("--input", str(tmp_path / "rows.jsonl"), "--rewards", "nope")
    assert done.returncode == 2 and "unknown rewards config 'nope'" in done.stderr


# ------------------------------------------------------------------------------------ TRL's conventions

def test_a_conversational_completion_scores_as_its_string_content():
    text = THINK + "Answer: B"
    chat = [{"role": "assistant", "content": text}]
    rows = [{"task": "mcqa", "answer": "B", "prompt": "Pick one."}]
    rs = RewardSet({"mcqa": {"fn": MCQAReward(), "weight": 1.0, "tasks": ["mcqa"]}}, format_penalty=ThinkQuality())
    plain, conversational = rs([text], rows), rs([chat], rows)
    assert plain.total == conversational.total == [1.0] and conversational.penalty_reasons == [[]]
    assert MCQAReward()([chat, {"role": "assistant", "content": text}], answer=["B", "B"]) == [1.0, 1.0]
    wrong = [{"role": "assistant", "content": THINK + "Answer: C"}]
    assert MCQAReward()([wrong], answer=["B"]) == [0.0]
    assert MCQAReward()([[{"role": "assistant", "content": 3}]], answer=["B"]) == [0.0]  # not text: 0, no raise


def test_a_trl_style_reward_plugs_in_unchanged():
    """TRL calls fn(prompts=, completions=, completion_ids=, **columns); conversational prompts get
    conversational completions; None is "not applicable"."""
    seen = {}

    def trl_reward(prompts, completions, completion_ids, solution, **kwargs):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, kwargs=sorted(kwargs))
        return [1.0 if c[0]["content"].endswith(s) else None for c, s in zip(completions, solution)]

    def named_only(completions, solution):  # no **kwargs: gets only what it names
        return [0.5 for _ in completions]

    rs = RewardSet({"trl": {"fn": trl_reward, "weight": 2.0, "tasks": ["t"]},
                    "named": {"fn": named_only, "weight": 1.0, "tasks": ["t"]}})
    prompt = [{"role": "user", "content": "Say ok."}]
    rows = [{"task": "t", "prompt": prompt, "solution": "ok"}, {"task": "t", "prompt": prompt, "solution": "no"}]
    result = rs(["fine, ok", "fine, ok"], rows, completion_ids=[[1, 2], [3]])
    assert seen["prompts"] == [prompt, prompt] and seen["ids"] == [[1, 2], [3]]
    assert seen["completions"] == [[{"role": "assistant", "content": "fine, ok"}]] * 2
    assert "task" in seen["kwargs"] and "completion_ids" not in seen["kwargs"]
    # row 0: 2·1 + 0.5; row 1: the TRL reward does not apply (None) → only 0.5
    assert result.correctness == [2.5, 0.5] and result.per_reward["trl"] == [1.0, None]
    assert result.stats["trl/not_applicable"] == 1 and "trl/invalid" not in result.stats
    assert result.metrics()["train/reward/trl"] == 1.0  # the mean leaves the None out


def test_our_positional_convention_still_works():
    rs = RewardSet({"len": {"fn": lambda texts, **columns: [float(len(t)) for t in texts], "tasks": ["t"]}})
    assert rs(["ab", "abc"], [{"task": "t"}, {"task": "t"}]).correctness == [2.0, 3.0]
