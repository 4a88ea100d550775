"""Bad arguments to the text helper and the scoring settings fail at once, naming the argument.

``attribute_text`` makes every check ``attribute`` makes, before it generates
anything: ids that are not integers (floats, ``bool``, strings, bytes) are
refused, never truncated or read as bytes. ``memory_budget_mb`` has one
validator (a positive finite number) used by ``attribute``, ``attribute_text``
and ``ScoringConfig``; a scoring deadline must be a finite time.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from helpers.models import tiny_gpt2

from probattr_monitor import attribute
from probattr_monitor.engine import Budget, attribute_text
from probattr_monitor.probes import Probe
from probattr_monitor.scoring import ScoringConfig, build_report, score_probes

pytestmark = pytest.mark.usefixtures("one_thread")

V = 7
PROMPT = [0, 3, 5, 1]
RESPONSE = [2, 6]
VT = (ValueError, TypeError)


class NumberWords:
    """Tokenizer of space-separated ids ("0 3 5"); BOS 0, no EOS."""

    bos_token_id = 0
    eos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(w) for w in text.split()]}

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids)


@pytest.fixture
def model():
    return tiny_gpt2(V, 0)


@pytest.fixture
def forwards(model):
    """How many forwards ``model`` has run (a pre-hook on the root module)."""
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


BAD_IDS = [
    pytest.param([0, 1.5, 2], id="float"),
    pytest.param([0.0, 3.0, 5.0], id="integral-floats"),
    pytest.param([0, True, 2], id="bool-item"),
    pytest.param(True, id="bool"),
    pytest.param(["0", "1", "2"], id="str-items"),
    pytest.param(b"\x00\x03\x05", id="bytes"),
    pytest.param(bytearray(b"\x00\x03"), id="bytearray"),
    pytest.param(np.array([0.0, 3.0, 5.0]), id="float-ndarray"),
    pytest.param(torch.tensor([0.0, 3.0, 5.0]), id="float-tensor"),
    pytest.param(torch.tensor([True, False]), id="bool-tensor"),
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_attribute_text_refuses_bad_prompt_ids(model, forwards, bad):
    with pytest.raises(TypeError, match=r"^prompt\b"):
        attribute_text(model, NumberWords(), bad, RESPONSE)
    assert forwards == []


@pytest.mark.parametrize("bad", BAD_IDS)
def test_attribute_text_refuses_bad_response_ids(model, forwards, bad):
    with pytest.raises(TypeError, match=r"^response\b"):
        attribute_text(model, NumberWords(), PROMPT, bad)
    assert forwards == []


@pytest.mark.parametrize("bad", BAD_IDS)
def test_attribute_text_refuses_bad_candidates_before_generating(model, forwards, bad):
    with pytest.raises(TypeError, match=r"^candidates\b"):
        attribute_text(model, NumberWords(), PROMPT, candidates=bad)
    assert forwards == [], "the response was generated before the candidates were checked"


@pytest.mark.parametrize("bad", BAD_IDS)
def test_attribute_text_refuses_bad_positions_before_generating(model, forwards, bad):
    with pytest.raises(VT, match=r"positions"):
        attribute_text(model, NumberWords(), PROMPT, positions=bad)
    assert forwards == []


@pytest.mark.parametrize("prompt, kwargs, name", [([0, V], {}, r"prompt\[1\]"),
                                                  (PROMPT, {"candidates": [1, V + 3]}, r"candidates\[1\]")],
                         ids=["prompt", "candidates"])
def test_attribute_text_refuses_out_of_vocabulary_ids_before_generating(model, forwards, prompt, kwargs, name):
    with pytest.raises(ValueError, match=rf"{name} = \d+ is outside the model's vocabulary \[0, {V}\)"):
        attribute_text(model, NumberWords(), prompt, **kwargs)
    assert forwards == []


def test_attribute_text_takes_good_ids_as_given(model):
    """The checks refuse only what is wrong: int ids, numpy and tensor ints still work and agree."""
    ref = attribute(model, PROMPT, RESPONSE, candidates=[1, 2, 4], positions=[1, 2])
    for prompt in (PROMPT, tuple(PROMPT), np.array(PROMPT), torch.tensor(PROMPT)):
        res = attribute_text(model, NumberWords(), prompt, np.array(RESPONSE), candidates=[1, 2, 4], positions=[1, 2])
        np.testing.assert_array_equal(res.attribution, ref.attribution)


def test_attribute_text_refuses_unknown_engine_keywords_before_generating(model, forwards):
    with pytest.raises(TypeError, match=r"memory_budget"):
        attribute_text(model, NumberWords(), PROMPT, memory_budget=64)
    assert forwards == []


# --------------------------------------------------------------------------- memory_budget_mb

BAD_BUDGETS = [
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(float("-inf"), id="-inf"),
    pytest.param("big", id="str"),
    pytest.param("512", id="numeric-str"),
    pytest.param(True, id="bool"),
    pytest.param(None, id="None"),
    pytest.param(0, id="zero"),
    pytest.param(-5.0, id="negative"),
]


@pytest.mark.parametrize("candidates", ["all", Budget()], ids=["exact", "budgeted"])
@pytest.mark.parametrize("bad", BAD_BUDGETS)
def test_attribute_names_a_bad_memory_budget(model, forwards, bad, candidates):
    with pytest.raises(VT, match=r"memory_budget_mb"):
        attribute(model, PROMPT, RESPONSE, candidates=candidates, memory_budget_mb=bad)
    assert forwards == []


@pytest.mark.parametrize("bad", BAD_BUDGETS)
def test_attribute_text_names_a_bad_memory_budget_before_generating(model, forwards, bad):
    with pytest.raises(VT, match=r"memory_budget_mb"):
        attribute_text(model, NumberWords(), PROMPT, memory_budget_mb=bad)
    assert forwards == []


@pytest.mark.parametrize("bad", BAD_BUDGETS)
def test_scoring_config_names_a_bad_memory_budget(bad):
    with pytest.raises(VT, match=r"memory_budget_mb"):
        ScoringConfig(memory_budget_mb=bad)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "8"], ids=["zero", "negative", "float", "bool", "str"])
def test_scoring_config_names_a_bad_batch_size(bad):
    with pytest.raises(VT, match=r"batch_size"):
        ScoringConfig(batch_size=bad)


@pytest.mark.parametrize("field", ["max_new_tokens", "num_samples"])
@pytest.mark.parametrize("bad", [0, 2.5, 3.0, True, "3"], ids=["zero", "float", "integral-float", "bool", "str"])
def test_scoring_config_names_a_bad_count(field, bad):
    """Counts of the response settings are positive integers, checked when the config is made, not at scoring."""
    with pytest.raises(VT, match=field):
        ScoringConfig(**{field: bad})


def test_a_good_memory_budget_is_taken(model):
    res = attribute(model, PROMPT, RESPONSE, candidates=[1, 2], memory_budget_mb=np.float32(0.5))
    assert np.isfinite(res.attribution).all()
    assert ScoringConfig(memory_budget_mb=1).memory_budget_mb == 1


# --------------------------------------------------------------------------- the scoring deadline


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "soon", True], ids=["nan", "inf", "str", "bool"])
def test_scoring_deadline_must_be_a_finite_time(model, forwards, bad):
    """NaN never compares greater: taken as a deadline it would mean "no budget" silently."""
    with pytest.raises(ValueError, match=r"deadline"):
        score_probes(model, NumberWords(), [Probe("p", "3 5 1", response="2")], ScoringConfig(candidates="all"),
                     on_error="record", deadline=bad)
    assert forwards == []


def test_deadline_that_expires_mid_set_skips_the_rest_and_says_so(model):
    """Probes not started by the deadline are recorded as skipped; the report holds the one scored."""
    probes = [Probe(f"p{i}", "3 5 1", response="2") for i in range(3)]
    deadline = time.monotonic() + 1.0

    def wait_past_deadline(index, probe_id):
        while time.monotonic() <= deadline:
            time.sleep(0.05)

    config = ScoringConfig(candidates="all", n_boot=0)
    scores = score_probes(model, NumberWords(), probes, config, on_error="record", deadline=deadline,
                          progress=wait_past_deadline)
    assert [s.error for s in scores] == [None, "skipped: time budget exhausted", "skipped: time budget exhausted"]
    report = build_report(scores, NumberWords(), config)
    assert sorted(report.meta["errors"]) == ["p1", "p2"]
