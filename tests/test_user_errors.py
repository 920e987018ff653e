"""Issue 18, "one line for every user error, from one place": Hydra's own config errors, GRPO settings
of the wrong type, model dirs with a garbage config.json or no weights, eval.py's `limit`, and
undecodable response files each end in one `error: …` line with exit status 2; bugs keep their
traceback. Fast: each subprocess fails before any model is trained."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from secreason import cli
from secreason.errors import ConfigError, MissingPathError
from secreason.models import load_causal_lm, load_tokenizer, resolve_model_path
from secreason.modules.grpo import GRPOModule

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "eval"


def script(name: str, tmp_path: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SECREASON_TRACEBACK", "HYDRA_FULL_ERROR")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    return subprocess.run([sys.executable, str(ROOT / name), f"hydra.run.dir={tmp_path}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# --- Hydra's own config errors ---------------------------------------------------------------------

@pytest.mark.parametrize("name,override,fragments", [
    ("train.py", "algorithm.nope=1", ("Could not override 'algorithm.nope'", "+algorithm.nope=1")),
    ("train.py", "algorithm.kl.beta=[1", ("algorithm.kl.beta=[1",)),
    ("train.py", "callbacks=null", ("Config group override must be a string or a list",)),
    ("eval.py", "nope=1", ("Could not override 'nope'",)),
], ids=["unknown-key", "bad-syntax", "group-null", "eval-unknown-key"])
def test_hydra_config_error_is_one_line_exit_2(tmp_path, name, override, fragments):
    one_line(script(name, tmp_path, override), *fragments)


def test_a_bug_outside_the_task_keeps_its_traceback(monkeypatch, capsys):
    with pytest.raises(RuntimeError):
        with cli.hydra_errors():
            raise RuntimeError("a bug")
    monkeypatch.delenv("SECREASON_TRACEBACK", raising=False)
    from hydra.errors import ConfigCompositionException

    with pytest.raises(SystemExit) as ex:
        with cli.hydra_errors():
            raise ConfigCompositionException("Could not override 'a.b'.\nTo append use +a.b=1")
    assert ex.value.code == 2
    assert capsys.readouterr().err == "error: Could not override 'a.b'; To append use +a.b=1\n"


def test_a_bug_in_the_task_is_not_taken_for_a_config_error(monkeypatch, capsys):
    """A Hydra exception out of the task function whose cause is not a user error is a bug: it passes
    through `hydra_errors` with its traceback, not as one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    monkeypatch.setattr(cli, "sweep_arm", lambda: None)
    with pytest.raises(InstantiationException):
        with cli.hydra_errors():
            cli.run_or_exit(lambda: instantiate({"_target_": "no_such_module.Thing"}))
    assert "error: " not in capsys.readouterr().err


def test_omegaconf_error_names_its_key(monkeypatch, capsys):
    monkeypatch.setattr(cli, "sweep_arm", lambda: None)
    cfg = OmegaConf.create({"algorithm": {"micro_batch_size": "${nope.x}"}})
    with pytest.raises(SystemExit):
        cli.run_or_exit(lambda: cfg.algorithm.micro_batch_size)
    assert capsys.readouterr().err == "error: algorithm.micro_batch_size: Interpolation key 'nope.x' not found\n"


# --- GRPO settings of the wrong type -------------------------------------------------------------

@pytest.mark.parametrize("given,line", [
    ({"num_generations": "abc"}, "algorithm.num_generations='abc': must be an integer"),
    ({"num_generations": 4.5}, "algorithm.num_generations=4.5: must be an integer"),
    ({"micro_batch_size": True}, "algorithm.micro_batch_size=True: must be an integer"),
    ({"clip_eps_low": "abc"}, "algorithm.clip_eps_low='abc': must be a finite number"),
    ({"is_cap": "x"}, "algorithm.is_cap='x': must be a finite number or null"),
    ({"max_grad_norm": float("nan")}, "algorithm.max_grad_norm=nan: must be a finite number or null"),
    ({"kl": {"beta": "abc"}}, "algorithm.kl.beta='abc': must be a finite number"),
    ({"overlong": {"mode": "mask", "buffer": "x"}}, "algorithm.overlong.buffer='x': must be an integer"),
    ({"max_completion_length": "64"}, "sampler.max_tokens='64': must be an integer"),
    ({"share_prompts": "yes"}, "algorithm.share_prompts='yes': must be true or false"),
])
def test_grpo_settings_of_the_wrong_type_name_the_key(given, line):
    with pytest.raises(ConfigError) as e:
        GRPOModule.check_settings(**given)
    assert str(e.value) == line


def test_grpo_settings_defaults_and_ints_as_floats_pass():
    GRPOModule.check_settings(clip_eps_low=0, clip_eps_high=1, is_cap=2, max_grad_norm=None)


def test_train_py_num_generations_abc_is_one_line(tmp_path):
    one_line(script("train.py", tmp_path, "+experiment=grpo", "logger=csv", "algorithm.num_generations=abc"),
             "error: algorithm.num_generations='abc': must be an integer")


# --- model dirs: one line naming model.path ------------------------------------------------------

@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    return d


def test_garbage_config_json(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=rf"^model.path={model_copy}: config.json is not valid JSON"):
        resolve_model_path({"path": str(model_copy)}, "unused")
    (model_copy / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="config.json holds a list, not a JSON object"):
        resolve_model_path({"path": str(model_copy)}, "unused")


def test_model_dir_without_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(MissingPathError, match=rf"^model.path={model_copy}: no weights there"):
        resolve_model_path({"path": str(model_copy)}, "unused")


def test_load_errors_name_model_path(model_copy):
    (model_copy / "config.json").write_text(json.dumps({"model_type": "no_such_model"}))
    with pytest.raises(ConfigError, match=rf"^model.path={model_copy}: cannot load the model \(ValueError"):
        load_causal_lm(str(model_copy))
    (model_copy / "tokenizer.json").write_text("{garbage")
    with pytest.raises(ConfigError, match=rf"^model.path={model_copy}: cannot load its tokenizer"):
        load_tokenizer(str(model_copy))


def test_truncated_weights_name_model_path(model_copy):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConfigError, match=rf"^model.path={model_copy}: cannot load the model"):
        load_causal_lm(str(model_copy))


def test_train_py_garbage_config_is_one_line(model_copy, tmp_path):
    (model_copy / "config.json").write_text("{not json")
    one_line(script("train.py", tmp_path / "run", "+experiment=sft", "logger=csv", f"model.path={model_copy}"),
             f"error: model.path={model_copy}: config.json is not valid JSON")


# --- eval.py -------------------------------------------------------------------------------------

def mcq10(tmp_path: Path) -> Path:
    f = tmp_path / "mcq10.jsonl"
    f.write_text("".join((FIX / "mcq.jsonl").read_text().splitlines(keepends=True)[:10]))
    return f


@pytest.mark.parametrize("limit", ["-3", "0", "abc", "2.5"])
def test_eval_limit_must_be_positive_or_null(tmp_path, limit):
    proc = script("eval.py", tmp_path / "run", "benchmark=ctibench_mcq", f"responses={mcq10(tmp_path)}",
                  "response_column=response", f"limit={limit}", "wandb.enabled=false")
    one_line(proc, "error: limit=", ": must be an integer ≥ 1 or null")


def test_eval_limit_3_scores_3(tmp_path):
    proc = script("eval.py", tmp_path / "run", "benchmark=ctibench_mcq", f"responses={mcq10(tmp_path)}",
                  "response_column=response", "limit=3", "wandb.enabled=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["n"] == 3


def test_eval_non_utf8_response_file_names_file_line(tmp_path):
    bad = tmp_path / "vsp.csv"
    bad.write_bytes((FIX / "vsp.csv").read_bytes().replace(b"A made-up", b"A m\xe9de-up", 1))
    proc = script("eval.py", tmp_path / "run", "benchmark=ctibench_vsp", f"responses={bad}",
                  "response_column=response", "wandb.enabled=false")
    one_line(proc, f"error: {bad}:2: not UTF-8 (byte 0xe9 at column 10")


def test_eval_without_data_dir_says_how_to_get_it(tmp_path):
    env_less = {k: v for k, v in os.environ.items() if k != "SECREASON_DATA_DIR"}
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"hydra.run.dir={tmp_path}", "benchmark=ctibench_mcq",
                           "wandb.enabled=false"], cwd=ROOT, env=env_less, capture_output=True, text=True, timeout=120)
    one_line(proc, "data_dir is not set", "AI4Sec/cti-bench", "python -m secreason.eval.fetch --out DIR --only ctibench")


def test_taa_responses_without_data_dir_is_one_line(tmp_path):
    env_less = {k: v for k, v in os.environ.items() if k != "SECREASON_DATA_DIR"}
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"hydra.run.dir={tmp_path}", "benchmark=ctibench_taa",
                           f"responses={FIX / 'taa.jsonl'}", "response_column=response", "wandb.enabled=false"],
                          cwd=ROOT, env=env_less, capture_output=True, text=True, timeout=120)
    one_line(proc, "data_dir is not set: ctibench_taa is scored with ctibench/alias_dict.json")
