"""secreason.cli: which errors end in one line (the project's own UserErrors, OmegaConf's), which keep
their traceback (everything else: a bug), and how a failed sweep arm is recorded and summarised.
Fast: no subprocess, no model (the sweep end to end is tests/test_sweep_errors.py)."""
from __future__ import annotations

import pytest
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from secreason import cli
from secreason.errors import ConfigError, DataError, MissingPathError, UserError


def deep_bug():
    {}["no_such_key"]  # a KeyError from deep inside: a bug, not bad input


def raise_(exc: BaseException):
    def fn():
        raise exc
    return fn


@pytest.fixture
def single_run(monkeypatch):
    monkeypatch.setattr(cli, "sweep_arm", lambda: None)
    monkeypatch.delenv("SECREASON_TRACEBACK", raising=False)


@pytest.fixture
def sweep(monkeypatch):
    """run_or_exit as inside arm #1 of a multirun, with this test's own record of failed arms."""
    monkeypatch.setattr(cli, "sweep_arm", lambda: "#1 (a=1)")
    monkeypatch.setattr(cli, "FAILED_ARMS", [])
    monkeypatch.setattr(cli, "SWEEP_ARMS", [])
    monkeypatch.delenv("SECREASON_TRACEBACK", raising=False)


@pytest.mark.parametrize("exc", [ValueError("x must be > 0"), KeyError("k"), FileNotFoundError("f"),
                                 TypeError("t"), RuntimeError("r")], ids=lambda e: type(e).__name__)
def test_a_plain_error_from_deep_code_keeps_its_traceback(single_run, capsys, exc):
    with pytest.raises(type(exc)):
        cli.run_or_exit(raise_(exc))
    assert "error: " not in capsys.readouterr().err
    assert cli.user_error(exc) is None
    with pytest.raises(KeyError, match="no_such_key"):
        cli.run_or_exit(deep_bug)


@pytest.mark.parametrize("exc", [ConfigError("algorithm.kl.beta=-1.0: must be ≥ 0\nmore"),
                                 DataError("rows.jsonl:3: no messages"),
                                 MissingPathError("model.path=/x: no such directory"),
                                 InstantiationException("Error in call to target")],
                         ids=["ConfigError", "DataError", "MissingPathError", "wrapped"])
def test_a_user_error_is_one_line_and_exit_2(single_run, capsys, exc):
    if isinstance(exc, InstantiationException):  # Hydra wraps what a constructor raises
        exc.__cause__ = ConfigError("sampler.top_p=2: must be in (0, 1]")
    with pytest.raises(SystemExit) as ex:
        cli.run_or_exit(raise_(exc))
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert err.split(": ", 1)[1].strip() == str(exc.__cause__ or exc).splitlines()[0]


def test_an_omegaconf_error_names_its_key(single_run, capsys):
    cfg = OmegaConf.create({"a": "${missing}"})
    with pytest.raises(SystemExit):
        cli.run_or_exit(lambda: cfg.a)
    assert capsys.readouterr().err.startswith("error: ")


def test_one_line_takes_the_message_itself(single_run, capsys):
    from secreason.algos.registry import Registry

    class KeyConfigError(ConfigError, KeyError):
        pass

    assert cli.one_line(KeyConfigError("a.b='x' unknown")) == "a.b='x' unknown"  # not its repr
    assert cli.one_line(ValueError("int() of 'abc'")) == "int() of 'abc'"       # quotes kept
    assert cli.one_line(ConfigError("")) == "ConfigError"
    registry = Registry("advantage", "advantage.name")
    with pytest.raises(SystemExit):
        cli.run_or_exit(registry.get, "nope")
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and len(err.splitlines()) == 1 and '"' not in err, err


def test_the_project_error_classes_are_user_errors():
    from secreason.algos.registry import UnknownNameError
    from secreason.data.rows import DataError as RowsDataError
    from secreason.eval import EvalError
    from secreason.score import InputError

    assert RowsDataError is DataError  # the old import name still works
    for cls in (ConfigError, DataError, MissingPathError, EvalError, InputError, UnknownNameError):
        assert issubclass(cls, UserError), cls
    # the stdlib bases they had stay, so `except ValueError` around them still works
    assert issubclass(EvalError, ValueError) and issubclass(MissingPathError, FileNotFoundError)


def test_the_model_and_data_raise_sites_raise_user_errors(tmp_path):
    from secreason.models import resolve_model_path, torch_dtype

    with pytest.raises(ConfigError, match="model.dtype='fp8'"):
        torch_dtype("fp8")
    with pytest.raises(MissingPathError, match="no such directory"):
        resolve_model_path({"path": str(tmp_path / "absent")}, tmp_path)
    with pytest.raises(ConfigError, match="model.path is not set"):
        resolve_model_path({}, tmp_path)


def test_a_user_error_in_a_sweep_arm_fails_that_arm_only(sweep, capsys):
    assert cli.run_or_exit(raise_(ConfigError("algorithm.kl.beta=-1.0: must be ≥ 0"))) is None
    assert capsys.readouterr().err == "error: sweep arm #1 (a=1): algorithm.kl.beta=-1.0: must be ≥ 0\n"
    assert cli.run_or_exit(lambda: {"train/loss": 1.0}) == {"train/loss": 1.0}  # the next arm runs
    with pytest.raises(SystemExit) as ex:
        with cli.sweep_summary():
            pass
    assert ex.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: 1 of 2 sweep arms failed:", "  #1 (a=1): algorithm.kl.beta=-1.0: must be ≥ 0"]


def test_a_bug_in_a_sweep_arm_keeps_its_traceback_and_is_named_in_the_summary(sweep, capsys):
    with pytest.raises(KeyError):  # Hydra's job runner catches it: the arm fails, the sweep goes on
        cli.run_or_exit(deep_bug)
    err = capsys.readouterr().err
    assert err.startswith("error: sweep arm #1 (a=1): KeyError: no_such_key\nTraceback"), err
    assert "deep_bug" in err
    with pytest.raises(SystemExit) as ex:  # Hydra's own exit after the sweep: the summary still comes
        with cli.sweep_summary():
            raise SystemExit(1)
    assert ex.value.code == 1
    assert "  #1 (a=1): KeyError: no_such_key (traceback above)" in capsys.readouterr().err


def optuna_best_trial_of_an_empty_study():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study().best_trial  # what Hydra's Optuna sweeper asks for after the arms


def test_a_sweep_whose_every_arm_failed_ends_in_lines_not_the_sweepers_traceback(sweep, capsys):
    for _ in range(2):
        assert cli.run_or_exit(raise_(MissingPathError("model.path: no such directory /absent"))) is None
    capsys.readouterr()
    with pytest.raises(SystemExit) as ex:
        with cli.sweep_summary():
            optuna_best_trial_of_an_empty_study()
    assert ex.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: 2 of 2 sweep arms failed:", "  #1 (a=1): model.path: no such directory /absent",
        "  #1 (a=1): model.path: no such directory /absent",
        "error: no sweep arm returned a result, so the sweeper has none: ValueError: No trials are completed yet."]


@pytest.mark.parametrize("case", ["one arm succeeded", "raised by our code", "SECREASON_TRACEBACK"])
def test_a_sweepers_error_keeps_its_traceback_unless_every_arm_failed_on_bad_input(sweep, monkeypatch, case):
    assert cli.run_or_exit(raise_(MissingPathError("model.path: no such directory /absent"))) is None
    if case == "one arm succeeded":
        assert cli.run_or_exit(lambda: 0.5) == 0.5
    if case == "SECREASON_TRACEBACK":
        monkeypatch.setenv("SECREASON_TRACEBACK", "1")
    failing = raise_(ValueError("No trials are completed yet.")) if case == "raised by our code" \
        else optuna_best_trial_of_an_empty_study
    with pytest.raises(ValueError, match="No trials are completed yet"):
        with cli.sweep_summary():
            failing()


def test_no_failed_arm_no_summary(sweep, capsys):
    with cli.sweep_summary():
        cli.run_or_exit(lambda: None)
    assert capsys.readouterr().err == ""


def test_sweep_arm_reads_hydras_multirun_job(compose_train):
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    saved = instance.cfg
    try:
        cfg = compose_train("+experiment=grpo", "algorithm.kl.beta=-1", "hydra.mode=MULTIRUN", "hydra.job.num=3",
                            return_hydra_config=True)
        instance.set_config(cfg)
        arm = cli.sweep_arm()  # the job number and the arm's task overrides (compose_train adds paths.*)
        assert arm.startswith("#3 (") and arm.endswith(" +experiment=grpo algorithm.kl.beta=-1)"), arm
        assert "hydra." not in arm
        cfg = compose_train("+experiment=grpo", "hydra.mode=RUN", return_hydra_config=True)
        instance.set_config(cfg)
        assert cli.sweep_arm() is None
    finally:
        instance.cfg = saved
