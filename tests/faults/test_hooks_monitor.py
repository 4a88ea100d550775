"""Faults caught by the monitor itself, before any training: a bad time budget, a probe that cannot fit.

Also what a scoring that falls short leaves in the history: its status, no best value.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest

from helpers.lit import PROBES, word_tokenizer
from helpers.models import one_layer_gpt2
from helpers.probes import scoring_config, write_probes
from probattr_monitor.monitor import ProbAttrMonitor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture
def probes(tmp_path):
    return str(write_probes(tmp_path / "probes.jsonl", PROBES))


@pytest.mark.parametrize(
    "bad, error",
    [(math.nan, ValueError), (math.inf, ValueError), (0, ValueError), (-1.5, ValueError), ("10", TypeError),
     (True, TypeError)],
    ids=["nan", "inf", "zero", "negative", "string", "bool"],
)
def test_time_budget_must_be_none_or_a_positive_finite_number(probes, bad, error):
    with pytest.raises(error, match=r"time_budget_s must be None or a .*number of seconds, got"):
        ProbAttrMonitor(probes, time_budget_s=bad)
    pytest.importorskip("lightning.pytorch")
    from probattr_monitor.callbacks import ProbAttrCallback

    with pytest.raises(error, match="time_budget_s"):
        ProbAttrCallback(probes=probes, time_budget_s=bad)


@pytest.mark.parametrize("good", [None, 1, 2.5, np.float64(0.25)])
def test_time_budget_accepts_none_and_positive_seconds(probes, good):
    monitor = ProbAttrMonitor(probes, time_budget_s=good)
    assert monitor.time_budget_s == (None if good is None else float(good))


def test_setup_counts_a_fixed_response_by_its_own_tokens(tok, tmp_path):
    model = one_layer_gpt2(len(tok))  # 32 positions
    wordy = " ".join(["a child helps her mother"] * 7)  # 35 tokens
    long = write_probes(tmp_path / "long.jsonl", [{"id": "wordy", "prompt": "the cat sees the ball", "response": wordy}])
    monitor = ProbAttrMonitor(str(long), scoring=scoring_config())  # max_new_tokens=3 would fit
    with pytest.raises(ValueError, match=r"probe 'wordy' of .* needs 41 tokens \(prompt 6 \+ fixed response 35\) "
                                         r"but the model's context window is 32"):
        monitor.setup(model, tok)
    # and the other way round: a short fixed response fits, whatever max_new_tokens says for generated ones
    short = write_probes(tmp_path / "short.jsonl", [{"id": "brief", "prompt": "the cat sees the ball",
                                                     "response": "today ."}])
    monitor = ProbAttrMonitor(str(short), scoring=dataclasses.replace(scoring_config(), max_new_tokens=30))
    monitor.setup(model, tok)  # 6 + 2 tokens, not 6 + 30


def test_a_scoring_that_falls_short_is_recorded_with_its_status_and_never_best(tok, probes):
    model = one_layer_gpt2(len(tok))
    monitor = ProbAttrMonitor(probes, tokenizer=tok, scoring=scoring_config())
    monitor.run(model, 1)
    complete = monitor.entry(1)
    assert complete.status == "complete" and complete.complete and monitor.state.best_step == 1
    failed = monitor.record_failure(2, "RuntimeError: boom")
    assert (failed.status, failed.scalars, failed.n_scored) == ("failed", {}, 0) and math.isnan(failed.value)
    assert monitor.already_scored(2) and monitor.state.best_step == 1
    monitor.time_budget_s = 0.04  # each forward takes 50 ms: the budget runs out during the first probe
    model.register_forward_hook(lambda *args: time.sleep(0.05))
    report = monitor.run(model, 3)
    partial = monitor.entry(3)
    assert (partial.status, partial.n_scored, report.meta["status"]) == ("partial", 1, "partial")
    assert set(partial.errors) == {"p2", "p3"} and monitor.state.best_step == 1  # never a best value
    restored = ProbAttrMonitor(probes)
    restored.load_state_dict(monitor.state_dict())
    assert [(h.step, h.status) for h in restored.state.history] == [(1, "complete"), (2, "failed"), (3, "partial")]
