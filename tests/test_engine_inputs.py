"""Input validation of :func:`probattr_monitor.attribute`.

docs/design.md section 3: bad input raises ``ValueError`` or ``TypeError`` with a
message that names the problem. Each case below asserts the exception type
and that the message contains every listed key word (case-insensitive regular
expressions, deliberately loose: ``prompt`` and ``vocab|range`` for an
out-of-vocabulary prompt id, not an exact sentence). The model is never run on
bad ids: an ``IndexError`` from an embedding lookup or a ``RuntimeError`` from
inside the model is a failure here.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from helpers.models import LogitsOnly, NoCacheLM, tiny_gpt2

from probattr_monitor import attribute  # noqa: E402

V = 7
PROMPT = [0, 3, 5, 1]
RESPONSE = [2, 6]
BAD_ID = r"vocab|range|out of|outside|invalid|negative"
NOT_INT = r"int"


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2(V, 0)


def expect(exc_types, call, *keywords):
    """Run ``call``; it must raise one of ``exc_types`` naming every keyword regex."""
    with pytest.raises(exc_types) as info:
        call()
    msg = str(info.value)
    for kw in keywords:
        assert re.search(kw, msg, flags=re.IGNORECASE), f"message {msg!r} does not mention /{kw}/"
    return msg


VT = (ValueError, TypeError)


def test_valid_call_works(model):
    """The baseline all bad inputs are perturbed from is itself accepted."""
    res = attribute(model, PROMPT, RESPONSE, candidates=[0, 1, 3, 5], positions=[1, 3], batch_size=2)
    assert res.positions.tolist() == [1, 3]


# --------------------------------------------------------------------------- token ids


@pytest.mark.parametrize("empty", [[], (), torch.tensor([], dtype=torch.long)], ids=["list", "tuple", "tensor"])
def test_empty_prompt(model, empty):
    expect(ValueError, lambda: attribute(model, empty, RESPONSE), "prompt")


@pytest.mark.parametrize("empty", [[], (), torch.tensor([], dtype=torch.long)], ids=["list", "tuple", "tensor"])
def test_empty_response(model, empty):
    expect(ValueError, lambda: attribute(model, PROMPT, empty), "response")


def test_prompt_of_one_token_has_nothing_to_score(model):
    expect(ValueError, lambda: attribute(model, [0], RESPONSE), "prompt|position")


@pytest.mark.parametrize("bad", [-1, V, V + 100])
def test_prompt_id_out_of_vocab(model, bad):
    for prompt in ([0, bad, 2], [bad, 1, 2], torch.tensor([0, 1, bad])):
        expect(ValueError, lambda: attribute(model, prompt, RESPONSE), "prompt", BAD_ID)


@pytest.mark.parametrize("bad", [-1, V, 10 * V])
def test_response_id_out_of_vocab(model, bad):
    for response in ([bad], [1, bad], torch.tensor([bad, 2])):
        expect(ValueError, lambda: attribute(model, PROMPT, response), "response", BAD_ID)


@pytest.mark.parametrize(
    "prompt",
    [[0, 1.5, 2], [0.0, 1.0, 2.0], ["a", "b", "c"], [0, None, 2], torch.tensor([0.0, 1.0, 2.0]), np.array([0.0, 1.5])],
    ids=["float", "integral-floats", "str", "None", "float-tensor", "float-ndarray"],
)
def test_prompt_non_integer_ids(model, prompt):
    expect(VT, lambda: attribute(model, prompt, RESPONSE), "prompt", NOT_INT)


@pytest.mark.parametrize("response", [[2.5], ["x"], torch.tensor([1.0, 2.0]), "ab"], ids=["float", "str", "float-tensor", "string"])
def test_response_non_integer_ids(model, response):
    expect(VT, lambda: attribute(model, PROMPT, response), "response")


def test_prompt_given_as_a_string(model):
    """A raw string is text, not token ids (the text helpers take strings)."""
    expect(TypeError, lambda: attribute(model, "hello", RESPONSE), "prompt")


def test_bool_ids_rejected(model):
    expect(VT, lambda: attribute(model, [True, False, True], RESPONSE), "prompt")


@pytest.mark.parametrize("shape", [(1, 4), (2, 4)])
def test_two_dimensional_prompt(model, shape):
    prompt = torch.zeros(shape, dtype=torch.long)
    expect(VT, lambda: attribute(model, prompt, RESPONSE), "prompt", r"1-d|dim|shape|flat")


def test_two_dimensional_response(model):
    response = torch.ones((1, 2), dtype=torch.long)
    expect(VT, lambda: attribute(model, PROMPT, response), "response", r"1-d|dim|shape|flat")


def test_nested_list_prompt(model):
    expect(VT, lambda: attribute(model, [[0, 1, 2]], RESPONSE), "prompt")


def test_sequence_longer_than_positions_of_model(model):
    """GPT-2 here has 64 positions; 60 + 10 tokens do not fit."""
    expect(ValueError, lambda: attribute(model, [1] * 60, [2] * 10), r"length|long|position|context")


# --------------------------------------------------------------------------- positions


@pytest.mark.parametrize("positions", [[0], [0, 1], [-1], [len(PROMPT)], [1, len(PROMPT) + 3]])
def test_position_out_of_range(model, positions):
    expect(ValueError, lambda: attribute(model, PROMPT, RESPONSE, positions=positions), "position")


def test_duplicate_positions(model):
    expect(ValueError, lambda: attribute(model, PROMPT, RESPONSE, positions=[1, 2, 1]), "duplicate")


@pytest.mark.parametrize("positions", [[1.5], ["1"], [None]])
def test_non_integer_positions(model, positions):
    expect(VT, lambda: attribute(model, PROMPT, RESPONSE, positions=positions), "position")


# --------------------------------------------------------------------------- candidates


def test_empty_candidate_list(model):
    for cands in ([], (), torch.tensor([], dtype=torch.long)):
        expect(ValueError, lambda: attribute(model, PROMPT, RESPONSE, candidates=cands), "candidate")


def test_duplicate_candidates(model):
    expect(ValueError, lambda: attribute(model, PROMPT, RESPONSE, candidates=[0, 1, 3, 5, 1]), "duplicate")


@pytest.mark.parametrize("bad", [-1, V, 1000])
def test_out_of_range_candidates(model, bad):
    expect(
        ValueError, lambda: attribute(model, PROMPT, RESPONSE, candidates=[0, 1, 3, 5, bad]), "candidate", BAD_ID
    )


@pytest.mark.parametrize("bad", ["bogus", "", "top"])
def test_unknown_candidates_string(model, bad):
    expect(VT, lambda: attribute(model, PROMPT, RESPONSE, candidates=bad), "candidate")


@pytest.mark.parametrize("bad", [3, 2.5, [0, 1.5]], ids=["int", "float", "float-in-list"])
def test_candidates_of_wrong_type(model, bad):
    expect(VT, lambda: attribute(model, PROMPT, RESPONSE, candidates=bad), "candidate")


# --------------------------------------------------------------------------- batch size


@pytest.mark.parametrize("bs", [0, -1, -8])
def test_batch_size_not_positive(model, bs):
    expect(ValueError, lambda: attribute(model, PROMPT, RESPONSE, batch_size=bs), "batch")


@pytest.mark.parametrize("bs", [2.5, "4"])
def test_batch_size_wrong_type(model, bs):
    expect(VT, lambda: attribute(model, PROMPT, RESPONSE, batch_size=bs), "batch")


# --------------------------------------------------------------------------- models


class _TensorOut(nn.Module):
    """Returns bare logits tensor-like data but no ``.logits`` attribute."""

    def __init__(self):
        super().__init__()
        self.inner = NoCacheLM(V, 0)

    def forward(self, input_ids, **kwargs):
        return {"scores": self.inner(input_ids).logits}


class _WrongRank(nn.Module):
    """``.logits`` of shape [B, V] instead of [B, T, V]."""

    def __init__(self):
        super().__init__()
        self.inner = NoCacheLM(V, 0)

    def forward(self, input_ids, **kwargs):
        return LogitsOnly(logits=self.inner(input_ids).logits[:, -1])


class _Poisoned(nn.Module):
    """A tiny LM whose logits contain ``value`` at one vocabulary entry."""

    def __init__(self, value: float, where: str = "all"):
        super().__init__()
        self.inner = NoCacheLM(V, 0)
        self.config = self.inner.config
        self.value, self.where = value, where

    def forward(self, input_ids, **kwargs):
        logits = self.inner(input_ids, **kwargs).logits.clone()
        if self.where == "all":
            logits[..., 2] = self.value
        else:  # only when token 4 is in the input: a candidate-dependent NaN
            hit = (input_ids == 4).any(dim=1)
            logits[hit, :, 2] = self.value
        return LogitsOnly(logits=logits)


@pytest.mark.parametrize(
    "bad_model",
    [nn.Linear(4, 4), nn.Identity(), nn.Embedding(V, V), _TensorOut(), _WrongRank(), "gpt2", None],
    ids=["Linear", "Identity", "Embedding", "no-logits", "2d-logits", "str", "None"],
)
def test_not_a_causal_lm(bad_model):
    expect(VT, lambda: attribute(bad_model, PROMPT, RESPONSE), r"causal|logits|model")


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_logits(value):
    expect(ValueError, lambda: attribute(_Poisoned(value), PROMPT, RESPONSE), r"nan|finite|inf")


def test_non_finite_logits_only_for_some_candidate():
    """NaN appearing only in a candidate batch (token 4 substituted in) is caught too."""
    model = _Poisoned(float("nan"), where="token4")
    prompt = [0, 3, 5, 1]
    assert 4 not in prompt + RESPONSE
    expect(ValueError, lambda: attribute(model, prompt, RESPONSE), r"nan|finite")
    # With token 4 out of the candidate set nothing non-finite is ever computed.
    res = attribute(model, prompt, RESPONSE, candidates=[0, 1, 2, 3, 5, 6])
    assert np.all(np.isfinite(res.attribution))
