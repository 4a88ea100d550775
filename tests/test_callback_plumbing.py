"""The plumbing both callbacks share: one key list, warnings from rank 0 only, the version, the W&B run lookup."""

from __future__ import annotations

import importlib.metadata
import warnings

import pytest

from probattr_monitor import distributed
from probattr_monitor.monitor import ProbAttrMonitor
from probattr_monitor.monitor.keys import scalar_keys, scalar_names
from probattr_monitor.report import AS_CLASSES, METRIC_NAMES, metrics_from_probes

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from helpers.hf import PROBES, make_trainer  # noqa: E402
from helpers.probes import scoring_config as scoring  # noqa: E402
from helpers.probes import write_probes as _write_probes  # noqa: E402


def write_probes(directory):
    return _write_probes(directory / "probes.jsonl", PROBES)


def test_one_key_list_for_monitor_and_both_callbacks(tmp_path):
    from probattr_monitor.callbacks.hf import producible_metric_names

    names = scalar_names()
    assert names == list(metrics_from_probes((), n_boot=0).scalars(prefix=""))  # what a scoring produces
    assert {"n_tokens", "n_probes"} | {f"count_{c}" for c in AS_CLASSES} <= set(names)
    assert {f"{m}_ci_low" for m in METRIC_NAMES} <= set(names)
    monitor = ProbAttrMonitor(write_probes(tmp_path), prefix="pa")
    assert monitor.scalar_keys() == scalar_keys("pa") == [f"pa/{n}" for n in names]
    assert producible_metric_names() == names
    pytest.importorskip("lightning.pytorch")
    from probattr_monitor.callbacks.lightning import logged_keys

    assert logged_keys("pa") == ["pa/step"] + scalar_keys("pa")


def test_rank_zero_warn_warns_on_rank_zero_only(monkeypatch):
    with pytest.warns(RuntimeWarning, match="once"):
        distributed.rank_zero_warn("once")
    monkeypatch.setattr(distributed, "global_rank", lambda: 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distributed.rank_zero_warn("not from rank 1")
    assert distributed.gatherer(1) is None and distributed.gatherer(2) is None  # no process group here


def test_version_comes_from_the_installed_metadata():
    import probattr_monitor

    assert probattr_monitor.__version__ == importlib.metadata.version("probattr-monitor")


def test_wandb_run_lookup_never_imports_wandb_for_auto(monkeypatch):
    import sys

    from probattr_monitor.callbacks.common import wandb_run_for
    from probattr_monitor.sinks.wandb import current_run

    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    assert current_run(import_wandb=False) is None and "wandb" not in sys.modules
    assert wandb_run_for("auto", owner="X", no_run="none") is None and "wandb" not in sys.modules
    assert wandb_run_for(False, owner="X", no_run="none") is None
    own = object()
    assert wandb_run_for("auto", owner="X", no_run="none", framework_run=own) is own


def test_failed_scoring_injects_no_key_at_all(tmp_path):
    # A scoring that produced nothing logs nothing: no eval_probattr_* key (issue 12; it used to inject NaN
    # for every key, which HF's EarlyStoppingCallback then counted as an evaluation without improvement).
    from probattr_monitor.callbacks import ProbAttrTrainerCallback

    cb = ProbAttrTrainerCallback(probes=str(write_probes(tmp_path)), scoring=scoring(), wandb=False, plots=False)

    def broken(model, step, **kw):
        raise RuntimeError("probe engine exploded")

    cb.monitor.run = broken
    trainer = make_trainer(tmp_path, [cb], max_steps=4)
    with pytest.warns(RuntimeWarning, match=r"scoring at step 4 \(evaluate\) failed: RuntimeError"):
        trainer.train()
    (record,) = [r for r in trainer.state.log_history if "eval_loss" in r]
    assert not any(k.startswith("eval_probattr_") for k in record)
    assert [(h.step, h.status) for h in cb.history] == [(4, "failed")]
