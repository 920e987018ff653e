"""`callbacks=with_eval`: benchmark subsets scored during training, logged as val/<benchmark>/<key>."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from secreason.callbacks.eval_callback import EvalCallback

needs_data = pytest.mark.usefixtures("benchmark_data_dir")  # conftest.py: skips when $SECREASON_DATA_DIR has none


class _Module:
    """What the callback reads from a LightningModule: model, tokenizer and log()."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.logged = model, tokenizer, {}

    def log(self, key, value, **kwargs):
        self.logged[key] = value


@needs_data
def test_runs_every_n_steps_and_logs_val_keys(tiny_model, tokenizer, benchmark_data_dir):
    cb = EvalCallback(benchmarks=["ctibench_mcq", "harmbench"], data_dir=str(benchmark_data_dir), limit=2, every_n_steps=2,
                      max_tokens=4, seeds=2)
    module = _Module(tiny_model.train(), tokenizer)
    cb.setup(None, module, "fit")
    for step in (1, 2, 3):
        cb.on_train_batch_end(SimpleNamespace(global_step=step, is_global_zero=True), module, None, None, 0)
        if step == 1:
            assert module.logged == {}  # not a multiple of every_n_steps
    assert cb.last_step == 2
    assert {"val/ctibench_mcq/accuracy", "val/ctibench_mcq/lenient_accuracy", "val/ctibench_mcq/accuracy_std",
            "val/harmbench/pass_rate", "val/harmbench/pass_rate_std"} <= set(module.logged)
    assert all(0.0 <= v <= 1.0 for k, v in module.logged.items() if not k.endswith("_std"))
    assert tiny_model.training  # the sampler gives the policy back in train mode


def test_missing_data_fails_at_setup(tmp_path, tiny_model, tokenizer):
    cb = EvalCallback(benchmarks=["ctibench_rcm"], data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="has no ctibench/cti-rcm.tsv"):
        cb.setup(None, _Module(tiny_model, tokenizer), "fit")


@pytest.mark.slow
@needs_data
def test_train_py_with_eval_callbacks_logs_val_metrics(run_train):
    proc = run_train("+experiment=sft", "debug=fast", "callbacks=with_eval", "trainer.max_steps=2",
                     "callbacks.eval_subset.every_n_steps=1", "callbacks.eval_subset.limit=2",
                     "callbacks.eval_subset.max_tokens=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(next(proc.run_dir.glob("csv/**/metrics.csv")))))
    logged = [r for r in rows if r.get("val/ctibench_rcm/accuracy")]
    assert len(logged) == 2 and "val/ctibench_mcq/lenient_accuracy" in rows[0]
