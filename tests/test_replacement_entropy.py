"""Replacement entropy and share of original responses (paper section 4.3; engine/replacement.py).

Oracles: a model built so that its output depends on the token at one prompt
position only (its responses are known by construction), and a brute-force
search over every subset of a small vocabulary for the mass-90 % candidate set.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from probattr_monitor.engine.replacement import (
    mass_candidates,
    replace_token,
    replacement_entropy,
    response_entropy,
)

V = 10
J = 3  # the one prompt position the model's output depends on
PROMPT = [0, 4, 7, 2, 5, 1, 8]


def _log(p):
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / p.sum()).float()


class OnePositionLM(nn.Module):
    """Logits at position ``t`` are a fixed spread prior for ``t < J`` and, for ``t >= J``,
    a peaked distribution rotated by ``x_J``: ``p_t(v) = q[(v - x_J) mod V]``.

    Every generated token therefore equals ``x_J`` (``q``'s mode is at 0, with mass
    0.95 > top_p, so the nucleus keeps it alone and top-p is deterministic too);
    the response is an injective function of ``x_J`` and ignores every other position.
    """

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(vocab_size=V, max_position_embeddings=64)
        self.register_buffer("prior", _log([0.31, 0.24, 0.17, 0.11, 0.07, 0.04, 0.03, 0.015, 0.01, 0.005]))
        self.register_buffer("q", _log([0.95, 0.02, 0.012, 0.008, 0.004, 0.002, 0.0015, 0.001, 0.0009, 0.0006]))
        self.calls = 0

    def forward(self, input_ids, **kwargs):
        self.calls += 1
        b, t = input_ids.shape
        out = self.prior.expand(b, t, V).clone()
        if t > J:
            xj = input_ids[:, J]
            idx = (torch.arange(V)[None, :] - xj[:, None]) % V  # [b, V]
            out[:, J:, :] = self.q[idx][:, None, :] + 0 * self.dummy
        return SimpleNamespace(logits=out)


def _prior_set(mass):
    p = torch.softmax(OnePositionLM().prior.double(), -1).numpy()
    return _brute_force_mass_set(p, mass)


def _brute_force_mass_set(p, mass):
    """Smallest subset whose mass reaches ``mass`` (the largest-mass one among the smallest), by enumeration."""
    best = None
    for size in range(1, len(p) + 1):
        for sub in itertools.combinations(range(len(p)), size):
            m = p[list(sub)].sum()
            if m >= mass - 1e-12 and (best is None or m > best[1]):
                best = (set(sub), m)
        if best is not None:
            return best[0]
    raise AssertionError("unreachable")


def test_replace_token_changes_one_position_only():
    assert replace_token([1, 2, 3], 1, 9) == [1, 9, 3]
    with pytest.raises(IndexError, match="outside the prompt"):
        replace_token([1, 2, 3], 3, 0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mass", [0.5, 0.9, 0.97])
def test_mass_candidates_match_brute_force(seed, mass):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(8, 0.7))
    ids, covered = mass_candidates(p, mass)
    assert set(ids.tolist()) == _brute_force_mass_set(p, mass)
    assert list(ids) == sorted(ids.tolist(), key=lambda i: -p[i])
    assert covered == pytest.approx(p[ids].sum())
    assert covered >= mass - 1e-12


def test_response_entropy_of_counts():
    assert response_entropy([[1, 2], [1, 2], [1, 2]]) == 0.0
    assert response_entropy([[1], [2], [1], [2]]) == pytest.approx(math.log(2))
    # responses count as the same only when every token matches
    assert response_entropy([[1, 2], [1, 3]]) == pytest.approx(math.log(2))


def test_ignored_positions_have_entropy_zero_and_all_original_responses():
    model = OnePositionLM()
    res = replacement_entropy(model, PROMPT, max_new_tokens=3, num_samples=4, mass=0.9, seed=1)
    assert res.original["greedy"] == (PROMPT[J],) * 3
    assert res.original["top-p"] == (PROMPT[J],) * 3
    for i, k in enumerate(res.positions):
        for d in ("greedy", "top-p"):
            if k == J:
                n = int(res.num_candidates[i])
                cands = _prior_set(0.9)
                assert set(res.candidates[i]) == cands
                assert n == len(cands) > 1
                # every candidate gives its own response: uniform over n responses
                assert res.entropy[d][i] == pytest.approx(math.log(n))
                assert res.original_share[d][i] == pytest.approx((PROMPT[J] in cands) / n)
                assert res.original_share[d][i] < 1.0
            else:
                assert res.entropy[d][i] == 0.0
                assert res.original_share[d][i] == 1.0
    # positions before J see the spread prior: several candidates there too
    assert all(res.num_candidates[i] > 1 for i, k in enumerate(res.positions) if k <= J)


def test_mass_one_gives_every_candidate_of_the_peaked_positions():
    res = replacement_entropy(OnePositionLM(), PROMPT, decodings=("greedy",), max_new_tokens=2, mass=0.99)
    after = res.positions > J
    assert (res.num_candidates[after] > 1).all()
    assert (res.entropy["greedy"][after] == 0).all()
    assert "top-p" not in res.entropy


def test_cap_is_respected_and_recorded():
    uncapped = replacement_entropy(OnePositionLM(), PROMPT, decodings=("greedy",), max_new_tokens=2)
    res = replacement_entropy(OnePositionLM(), PROMPT, decodings=("greedy",), max_new_tokens=2, max_candidates=2)
    assert (res.num_candidates <= 2).all()
    np.testing.assert_array_equal(res.truncated, uncapped.num_candidates > 2)
    assert res.truncated.any()
    assert res.settings()["max_candidates"] == 2
    assert res.settings()["truncated_positions"] == int(res.truncated.sum())
    i = int(np.flatnonzero(res.positions == J)[0])
    assert res.entropy["greedy"][i] == pytest.approx(math.log(2))  # the two most probable, distinct responses
    assert res.mass_covered[i] < 0.9


def test_one_batched_generation_per_position_and_decoding():
    model = OnePositionLM()
    steps = 2
    res = replacement_entropy(model, PROMPT, decodings=("greedy",), max_new_tokens=steps)
    n_pos = len(PROMPT) - 1
    # 1 prior pass + (1 reference + n_pos batched generations) x steps forwards (no KV cache here)
    assert model.calls == 1 + (1 + n_pos) * steps
    rows = 1 + int(res.num_candidates.sum())
    assert res.generated_tokens == rows * steps
    assert res.token_forwards == len(PROMPT) + rows * (len(PROMPT) + steps - 1)


def test_seeded_and_deterministic_on_a_real_tiny_model():
    from tests.helpers.models import tiny_gpt2

    model = tiny_gpt2(16, seed=3)
    a = replacement_entropy(model, [0, 5, 9, 2, 11], max_new_tokens=3, num_samples=3, seed=7)
    b = replacement_entropy(model, [0, 5, 9, 2, 11], max_new_tokens=3, num_samples=3, seed=7)
    for d in ("greedy", "top-p"):
        np.testing.assert_array_equal(a.entropy[d], b.entropy[d])
        np.testing.assert_array_equal(a.original_share[d], b.original_share[d])
        assert ((a.entropy[d] >= 0) & (a.entropy[d] <= np.log(np.maximum(a.num_candidates, 1)) + 1e-12)).all()
        assert ((a.original_share[d] >= 0) & (a.original_share[d] <= 1)).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prompt_ids=[0]), ValueError, "at least 2 tokens"),
        (dict(positions=[0]), ValueError, r"positions must be in \[1, 6\]"),
        (dict(positions=[7]), ValueError, r"positions must be in \[1, 6\]"),
        (dict(decodings=()), ValueError, "decodings must be a non-empty subset"),
        (dict(decodings=("beam",)), ValueError, "decodings must be a non-empty subset"),
        (dict(mass=0.0), ValueError, r"mass must be in \(0, 1\]"),
        (dict(mass=1.5), ValueError, r"mass must be in \(0, 1\]"),
        (dict(max_candidates=0), ValueError, "max_candidates must be a positive integer"),
        (dict(max_candidates=2.5), TypeError, "max_candidates must be a positive integer"),
        (dict(num_samples=0), ValueError, "num_samples must be a positive integer"),
        (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
        (dict(max_new_tokens=60), ValueError, "replacement entropy"),
    ],
)
def test_bad_input_fails_before_any_forward(kwargs, error, match):
    model = OnePositionLM()
    prompt = kwargs.pop("prompt_ids", PROMPT)
    with pytest.raises(error, match=match):
        replacement_entropy(model, prompt, **kwargs)
    assert model.calls == 0
