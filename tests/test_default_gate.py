"""The default gate: ``mean_surprisal_prefix`` (lower is better), and a gate's mode from its metric's direction.

The validity study (docs/validation.md) found the paper's ``noise_rate`` does not
track convergence, so the monitor, both callbacks and ``probattr select`` gate on
:data:`~probattr_monitor.report.DEFAULT_GATE_METRIC` by default, and ``mode``
defaults to the metric's declared direction (:func:`~probattr_monitor.report.gate_mode`).
"""

from __future__ import annotations

import pytest

from helpers.probes import write_probes
from probattr_monitor.monitor import ProbAttrMonitor
from probattr_monitor.report import DEFAULT_GATE_METRIC, HIGHER_IS_BETTER, METRIC_NAMES, gate_mode
from probattr_monitor.report import definitions

PROBES = ({"id": "p1", "prompt": "the cat sees the ball"}, {"id": "p2", "prompt": "the dog likes the river"})


@pytest.fixture
def probes(tmp_path):
    return str(write_probes(tmp_path / "probes.jsonl", PROBES))


# --------------------------------------------------------------------------- gate_mode


def test_default_gate_metric_is_the_prefix_surprisal():
    assert DEFAULT_GATE_METRIC == "mean_surprisal_prefix"
    assert DEFAULT_GATE_METRIC in METRIC_NAMES
    assert HIGHER_IS_BETTER[DEFAULT_GATE_METRIC] is False


@pytest.mark.parametrize("metric", [m for m, higher in HIGHER_IS_BETTER.items() if higher is False])
def test_gate_mode_is_min_for_lower_is_better_metrics(metric):
    assert gate_mode(metric) == "min"


def test_gate_mode_of_the_named_lower_is_better_metrics():
    for metric in ("noise_rate", "near_zero_rate", "mean_surprisal_prefix", "mean_surprisal_prompt",
                   "mean_surprisal_full"):
        assert gate_mode(metric) == "min", metric


def test_gate_mode_is_max_for_higher_is_better_metrics(monkeypatch):
    higher = [m for m, h in HIGHER_IS_BETTER.items() if h is True]
    for metric in higher:
        assert gate_mode(metric) == "max", metric
    # no shipped metric declares "higher is better" today: declare one to check the rule itself
    monkeypatch.setitem(definitions.HIGHER_IS_BETTER, "mean_abs_as", True)
    assert gate_mode("mean_abs_as") == "max"


@pytest.mark.parametrize("metric", [m for m, higher in HIGHER_IS_BETTER.items() if higher is None])
def test_gate_mode_refuses_a_metric_without_a_direction(metric):
    with pytest.raises(ValueError, match=f"'{metric}'.*pass mode="):
        gate_mode(metric)


def test_gate_mode_refuses_an_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric 'noise_rte'"):
        gate_mode("noise_rte")


def test_every_metric_has_a_declared_direction_entry():
    assert set(HIGHER_IS_BETTER) == set(METRIC_NAMES)


# --------------------------------------------------------------------------- ProbAttrMonitor


def test_monitor_defaults_to_the_prefix_surprisal_lower_is_better(probes):
    monitor = ProbAttrMonitor(probes)
    assert monitor.metric == "mean_surprisal_prefix" and monitor.mode == "min"
    assert monitor.monitor_key == "probattr/mean_surprisal_prefix"
    assert monitor.state_dict()["metric"] == "mean_surprisal_prefix" and monitor.state_dict()["mode"] == "min"


def test_monitor_mode_follows_the_metric_direction(probes):
    monitor = ProbAttrMonitor(probes, metric="noise_rate")
    assert (monitor.metric, monitor.mode, monitor.monitor_key) == ("noise_rate", "min", "probattr/noise_rate")
    assert ProbAttrMonitor(probes, metric="noise_rate", mode="max").mode == "max"  # an explicit mode wins


def test_monitor_metric_without_a_direction_needs_an_explicit_mode(probes):
    with pytest.raises(ValueError, match="'mean_kl'.*pass mode="):
        ProbAttrMonitor(probes, metric="mean_kl")
    monitor = ProbAttrMonitor(probes, metric="mean_kl", mode="max")
    assert (monitor.metric, monitor.mode) == ("mean_kl", "max")
    assert ProbAttrMonitor(probes, metric="mean_kl", mode="min").mode == "min"


def test_monitor_still_refuses_an_unknown_metric_or_mode(probes):
    with pytest.raises(ValueError, match="metric must be one of"):
        ProbAttrMonitor(probes, metric="noise_rte")
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        ProbAttrMonitor(probes, mode="lowest")


# --------------------------------------------------------------------------- the callbacks take the monitor's default


def test_lightning_callback_defaults_to_the_default_gate(probes):
    pytest.importorskip("lightning.pytorch")
    from probattr_monitor.callbacks import ProbAttrCallback

    cb = ProbAttrCallback(probes=probes, wandb=False)
    assert cb.monitor_key == "probattr/mean_surprisal_prefix" and cb.monitor.mode == "min"
    cb = ProbAttrCallback(probes=probes, wandb=False, metric="noise_rate")
    assert cb.monitor_key == "probattr/noise_rate" and cb.monitor.mode == "min"
    with pytest.raises(ValueError, match="'mean_kl'.*pass mode="):
        ProbAttrCallback(probes=probes, wandb=False, metric="mean_kl")
    assert ProbAttrCallback(probes=probes, wandb=False, metric="mean_kl", mode="max").monitor.mode == "max"


def test_hf_callback_defaults_to_the_default_gate(probes):
    pytest.importorskip("transformers")
    from probattr_monitor.callbacks.hf import ProbAttrTrainerCallback

    cb = ProbAttrTrainerCallback(probes=probes, wandb=False)
    assert (cb.monitor.metric, cb.monitor.mode) == ("mean_surprisal_prefix", "min")
    assert cb.monitor.monitor_key == "probattr/mean_surprisal_prefix"
