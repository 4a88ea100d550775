"""Brute-force oracle for the exact attribution engine.

For a tiny model with a vocabulary of ``V <= 6`` tokens, the oracle writes down
the model's whole joint distribution over the tokens that follow the first
prompt token and derives every quantity of docs/design.md section 2 by *summing that
table*. It never evaluates the engine's ``a_k(v)`` / ``b_k(v)`` formulas, so it
checks the formulas as well as their implementation (prefix KV reuse, batching,
padding, candidate gathering).

The table
---------
With prompt ``x = (x_0 .. x_{n-1})`` and response ``y = (y_1 .. y_m)``, let
``L = n + m`` and ``z = (x_0, z_1 .. z_{L-1})``. For all ``V^(L-1)`` sequences
``z`` with ``z_0 = x_0`` fixed, the oracle runs batched full-sequence forwards
(no cache) and forms, in float64 from the model's own logits,

    J(z_1 .. z_{L-1}) = log P(z_1 .. z_{L-1} | x_0)
                      = sum_i log softmax(logits(z_<i))[z_i],

an array with one axis per position: axes ``0 .. n-2`` hold ``x_1 .. x_{n-1}``,
axes ``n-1 .. L-2`` hold ``y_1 .. y_m``. Because the model's conditionals are
normalised, sums over axes of ``exp(J)`` are exact marginals.

What is summed
--------------
``Px(x_1..x_{n-1}) = LSE over the response axes of J``
    log P(x_1 .. x_{n-1} | x_0), the prompt marginal.
``log_p_response = J[x, y] - Px[x]``
    log P(y | x).
``prefix_k = LSE of Px over the axes of x_k .. x_{n-1}``, at ``x_1 .. x_{k-1}``
    log P(x_<k | x_0) (0 for ``k = 1``).
``log_denominator_k = LSE_{v in C} Px[x_<k, v, x_>k] - prefix_k``
    log P(x_>k | x_<k) restricted to candidates ``C`` at position ``k``.
``log_numerator_k = LSE_{v in C} J[x_<k, v, x_>k, y] - prefix_k``
    log P(x_>k, y | x_<k) restricted to ``C``.
``attribution_k = log_p_response - (log_numerator_k - log_denominator_k)``
    AS_k = log P(y | x) - log P(y | x_-k).
``p_k(v) proportional to Px[x_<k, v, x_>k]``, ``p'_k(v)`` to ``J[x_<k, v, x_>k, y]`` (``v in C``)
    and from them ``H_k = H(p_k)``, ``H'_k = H(p'_k)``, ``KL(p'_k || p_k)``.

Every case keeps ``V^(L-1) <= 16384`` sequences so the file runs in seconds.
The engine must agree with the oracle to 1e-5 (absolute) on all seven
quantities, for GPT-2, Llama and a cache-less plain ``nn.Module``, with every
candidate (``"all"``) and with explicit candidate subsets.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from helpers.models import TINY_MODELS, tiny_gpt2

from probattr_monitor import attribute  # noqa: E402
from probattr_monitor.engine.result import TOP_K  # noqa: E402
from probattr_monitor.engine.result import SCORE_FIELDS

ATOL = 1e-5


# --------------------------------------------------------------------------- oracle


def _lse(a: np.ndarray, axis) -> np.ndarray:
    """log(sum(exp(a))) over ``axis`` (int or tuple), stable, float64."""
    m = np.max(a, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def joint_log_table(model, x0: int, length: int, vocab: int, chunk: int = 4096) -> np.ndarray:
    """``J[z_1, .., z_{L-1}] = log P(z_1 .. z_{L-1} | z_0 = x0)`` for every sequence.

    Full-sequence forwards (no cache, no padding) of a float64 copy of the
    model, log-softmax, chain rule. Returns an array of shape ``(vocab,) * (length-1)``.
    The copy keeps the oracle's own rounding out of the comparison: built from
    the float32 model, its batched forwards round differently from run to run
    (the kernels depend on memory alignment), and once in ~25 runs that put
    the reference itself 2e-5 away from the truth.
    """
    model = copy.deepcopy(model).double()
    rest = length - 1
    grid = np.indices((vocab,) * rest).reshape(rest, -1).T  # row-major order
    seqs = np.concatenate([np.full((grid.shape[0], 1), x0), grid], axis=1)
    seqs_t = torch.as_tensor(seqs, dtype=torch.long)
    out = np.empty(seqs.shape[0], dtype=np.float64)
    with torch.no_grad():
        for s in range(0, seqs.shape[0], chunk):
            ids = seqs_t[s : s + chunk]
            logits = model(input_ids=ids).logits
            assert logits.shape[-1] == vocab
            logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
            tok = torch.gather(logp, 2, ids[:, 1:, None]).squeeze(-1)
            out[s : s + chunk] = tok.sum(-1).numpy()
    return out.reshape((vocab,) * rest)


def oracle(table, prompt, response, positions, candidates):
    """Every docs/design.md section 2 quantity, from sums of the joint table.

    Parameters
    ----------
    table : numpy.ndarray
        :func:`joint_log_table` for ``len(prompt) + len(response)`` tokens.
    prompt, response : sequence of int
    positions : sequence of int
        Scored prompt positions ``k`` (each in ``[1, n-1]``).
    candidates : callable
        ``candidates(k) -> sorted list of token ids`` summed over at ``k``.

    Returns
    -------
    dict
        ``log_p_response`` (float), the six per-position arrays, and
        ``prior`` / ``posterior``: per position, a dict token id -> probability.
    """
    n, m = len(prompt), len(response)
    x, y = tuple(int(t) for t in prompt[1:]), tuple(int(t) for t in response)
    resp_axes = tuple(range(n - 1, n - 1 + m))
    log_px = _lse(table, resp_axes)  # log P(x_1..x_{n-1} | x_0), shape (V,)*(n-1)
    log_p_response = float(table[x + y] - log_px[x])
    res = {name: [] for name in SCORE_FIELDS}
    res["prior"], res["posterior"] = [], []
    for k in positions:
        before, after = x[: k - 1], x[k:]
        prefix = _lse(log_px, tuple(range(k - 1, n - 1)))[before]  # log P(x_<k | x_0)
        cand = list(candidates(k))
        prompt_v = log_px[before + (slice(None),) + after][cand]  # log P(x_<k, v, x_>k)
        full_v = table[before + (slice(None),) + after + y][cand]  # log P(x_<k, v, x_>k, y)
        den = _lse(prompt_v, 0) - prefix
        num = _lse(full_v, 0) - prefix
        log_p = prompt_v - _lse(prompt_v, 0)
        log_pp = full_v - _lse(full_v, 0)
        p, pp = np.exp(log_p), np.exp(log_pp)
        res["attribution"].append(log_p_response - (num - den))
        res["log_numerator"].append(num)
        res["log_denominator"].append(den)
        res["entropy_prompt"].append(-np.sum(p * log_p))
        res["entropy_full"].append(-np.sum(pp * log_pp))
        res["kl"].append(np.sum(pp * (log_pp - log_p)))
        res["prior"].append(dict(zip(cand, p)))
        res["posterior"].append(dict(zip(cand, pp)))
        res.setdefault("surprisal_prompt", []).append(-log_p[cand.index(int(prompt[k]))])
        res.setdefault("surprisal_full", []).append(-log_pp[cand.index(int(prompt[k]))])
    for name in (*SCORE_FIELDS, "surprisal_prompt", "surprisal_full"):
        res[name] = np.asarray(res.get(name, []), dtype=np.float64)
    res["log_p_response"] = log_p_response
    return res


# --------------------------------------------------------------------------- comparison


def _check_top(ids, probs, expected: dict, label: str) -> None:
    """Top candidates: the most probable min(TOP_K, |C|) of ``expected``, sorted."""
    want = sorted(expected.values(), reverse=True)[: min(TOP_K, len(expected))]
    ids, probs = np.asarray(ids), np.asarray(probs)
    assert ids.shape == (len(want),), f"{label}: ids shape {ids.shape}, want {len(want)}"
    assert len(set(ids.tolist())) == len(ids), f"{label}: repeated ids {ids}"
    for t, p in zip(ids.tolist(), probs.tolist()):
        assert t in expected, f"{label}: id {t} is not a candidate"
        assert abs(p - expected[t]) <= ATOL, f"{label}: prob of {t} {p} != {expected[t]}"
    np.testing.assert_allclose(probs, want, rtol=0, atol=ATOL, err_msg=f"{label}: not the top")


def assert_matches_oracle(res, exp, prompt, positions, num_candidates, case: str) -> None:
    assert np.array_equal(np.asarray(res.positions), np.asarray(positions)), (
        f"{case}: positions {res.positions} != {positions}"
    )
    assert np.array_equal(np.asarray(res.token_ids), np.asarray(prompt)[list(positions)])
    assert abs(float(res.log_p_response) - exp["log_p_response"]) <= ATOL, (
        f"{case}: log_p_response got {res.log_p_response!r} expected {exp['log_p_response']!r}"
    )
    for name in SCORE_FIELDS:
        got = np.asarray(getattr(res, name))
        assert got.dtype == np.float64, f"{case}: {name} dtype {got.dtype}"
        np.testing.assert_allclose(
            got, exp[name], rtol=0, atol=ATOL, err_msg=f"{case}: {name} (got vs oracle)"
        )
    for name in ("surprisal_prompt", "surprisal_full"):  # -log p_k(x_k), -log p'_k(x_k)
        np.testing.assert_allclose(getattr(res, name), exp[name], rtol=0, atol=ATOL, err_msg=f"{case}: {name}")
    np.testing.assert_allclose(res.surprisal_prompt - res.surprisal_full, res.attribution, rtol=0, atol=ATOL)
    assert int(res.num_candidates) == num_candidates, (
        f"{case}: num_candidates {res.num_candidates} != {num_candidates}"
    )
    for i, k in enumerate(positions):
        _check_top(res.top_prior_ids[i], res.top_prior_probs[i], exp["prior"][i], f"{case} prior k={k}")
        _check_top(
            res.top_posterior_ids[i], res.top_posterior_probs[i], exp["posterior"][i], f"{case} post k={k}"
        )


# --------------------------------------------------------------------------- cases


def _vocab_for(length: int) -> int:
    """Largest V in 4..6 with V^(length-1) <= 16384."""
    for v in (6, 5, 4):
        if v ** (length - 1) <= 16384:
            return v
    raise AssertionError(f"sequence length {length} too long for the oracle")


#: (prompt length n, response length m); every n in 2..5, every m in 1..3.
SHAPES = [(2, 1), (2, 3), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3), (5, 1), (5, 2), (5, 3)]


def _full_cases():
    cases = []
    for mi, model_name in enumerate(TINY_MODELS):
        for si, (n, m) in enumerate(SHAPES):
            seed = (si + mi) % 3  # each model sees seeds 0, 1, 2 across the shapes
            batch_size = (None, 2, 3)[(si + 2 * mi) % 3]
            cases.append(pytest.param(model_name, seed, n, m, batch_size, id=f"{model_name}-s{seed}-n{n}m{m}-b{batch_size}"))
    return cases


def _sample(seed: int, n: int, m: int, vocab: int, salt: int = 0):
    rng = np.random.default_rng(1000 * seed + 10 * n + m + 7919 * salt)
    return rng.integers(0, vocab, n).tolist(), rng.integers(0, vocab, m).tolist()


@pytest.mark.parametrize("model_name,seed,n,m,batch_size", _full_cases())
def test_all_candidates_match_oracle(model_name, seed, n, m, batch_size):
    vocab = _vocab_for(n + m)
    model = TINY_MODELS[model_name](vocab, seed)
    prompt, response = _sample(seed, n, m, vocab)
    table = joint_log_table(model, prompt[0], n + m, vocab)
    positions = list(range(1, n))
    exp = oracle(table, prompt, response, positions, lambda k: list(range(vocab)))
    res = attribute(model, prompt, response, candidates="all", batch_size=batch_size)
    assert_matches_oracle(res, exp, prompt, positions, vocab, f"{model_name} V={vocab} {prompt}->{response}")


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
@pytest.mark.parametrize("n,m,batch_size", [(3, 2, None), (5, 2, 2)])
def test_float64_model_matches_oracle_tightly(model_name, n, m, batch_size):
    """A float64 model leaves no float32 noise to hide in: agree to 1e-9."""
    vocab = _vocab_for(n + m)
    model = TINY_MODELS[model_name](vocab, 2).double()
    prompt, response = _sample(2, n, m, vocab, salt=3)
    table = joint_log_table(model, prompt[0], n + m, vocab)
    positions = list(range(1, n))
    exp = oracle(table, prompt, response, positions, lambda k: list(range(vocab)))
    res = attribute(model, prompt, response, batch_size=batch_size)
    assert abs(res.log_p_response - exp["log_p_response"]) <= 1e-9
    for name in SCORE_FIELDS:
        np.testing.assert_allclose(getattr(res, name), exp[name], rtol=0, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_position_subset_matches_oracle(model_name, seed):
    n, m, vocab = 5, 2, 5
    model = TINY_MODELS[model_name](vocab, seed)
    prompt, response = _sample(seed, n, m, vocab, salt=1)
    positions = [3, 1] if seed % 2 else [4]
    table = joint_log_table(model, prompt[0], n + m, vocab)
    exp = oracle(table, prompt, response, sorted(positions), lambda k: list(range(vocab)))
    res = attribute(model, prompt, response, positions=positions)
    # The result is aligned with the positions in increasing order or as given;
    # compare as a mapping position -> row.
    order = [list(np.asarray(res.positions)).index(k) for k in sorted(positions)]
    for name in SCORE_FIELDS:
        np.testing.assert_allclose(
            np.asarray(getattr(res, name))[order], exp[name], rtol=0, atol=ATOL, err_msg=name
        )
    assert abs(res.log_p_response - exp["log_p_response"]) <= ATOL


#: (prompt length, response length, candidate subset size) for V = 6.
SUBSET_SHAPES = [(3, 2, 3), (4, 1, 4), (5, 1, 2), (4, 2, 3)]


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
@pytest.mark.parametrize("shape_idx", range(len(SUBSET_SHAPES)))
def test_candidate_subset_matches_oracle(model_name, shape_idx):
    """Explicit candidate list that contains every prompt token."""
    n, m, size = SUBSET_SHAPES[shape_idx]
    vocab, seed = 6, shape_idx % 3
    rng = np.random.default_rng(77 + shape_idx)
    subset = rng.permutation(vocab)[:size].tolist()  # unsorted on purpose
    prompt = rng.choice(subset, n).tolist()
    response = rng.integers(0, vocab, m).tolist()  # response tokens need not be candidates
    model = TINY_MODELS[model_name](vocab, seed)
    table = joint_log_table(model, prompt[0], n + m, vocab)
    positions = list(range(1, n))
    exp = oracle(table, prompt, response, positions, lambda k: sorted(subset))
    res = attribute(model, prompt, response, candidates=subset, batch_size=(None, 2)[shape_idx % 2])
    assert_matches_oracle(res, exp, prompt, positions, size, f"{model_name} C={subset} {prompt}->{response}")
    # The restriction must matter: the full-vocabulary values differ.
    full = oracle(table, prompt, response, positions, lambda k: list(range(vocab)))
    assert np.max(np.abs(full["log_denominator"] - exp["log_denominator"])) > 1e-3


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
def test_candidate_subset_missing_original_token_is_added(model_name):
    """A subset without the prompt's token: the engine adds it to the set.

    Every prompt token is the same id ``w`` outside the subset, so whether the
    engine adds ``x_k`` per position or the prompt's tokens globally, the set
    summed over is ``subset + [w]`` at every position.
    """
    vocab, n, m, w = 6, 4, 2, 4
    subset = [0, 5, 2]
    prompt, response = [w] * n, [1, 3]
    model = TINY_MODELS[model_name](vocab, 1)
    table = joint_log_table(model, prompt[0], n + m, vocab)
    positions = list(range(1, n))
    exp = oracle(table, prompt, response, positions, lambda k: sorted(subset + [w]))
    res = attribute(model, prompt, response, candidates=subset)
    assert_matches_oracle(res, exp, prompt, positions, len(subset) + 1, f"{model_name} C={subset}+{w}")
    explicit = attribute(model, prompt, response, candidates=subset + [w])
    for name in SCORE_FIELDS:
        np.testing.assert_allclose(getattr(res, name), getattr(explicit, name), rtol=0, atol=1e-12)


def test_oracle_self_consistency():
    """The oracle itself: marginals normalise and AS equals the posterior/prior log-ratio."""
    vocab, n, m = 5, 4, 2
    model = tiny_gpt2(vocab, 0)
    prompt, response = _sample(0, n, m, vocab)
    table = joint_log_table(model, prompt[0], n + m, vocab)
    assert abs(_lse(table, tuple(range(table.ndim)))) < 1e-12
    exp = oracle(table, prompt, response, [1, 2, 3], lambda k: list(range(vocab)))
    for i, k in enumerate([1, 2, 3]):
        ratio = np.log(exp["posterior"][i][prompt[k]]) - np.log(exp["prior"][i][prompt[k]])
        assert abs(ratio - exp["attribution"][i]) < 1e-10
    # Not degenerate: the models are far from uniform and the response matters.
    assert np.all(exp["entropy_prompt"] < np.log(vocab) - 0.05)
    assert np.max(np.abs(exp["attribution"])) > 0.05
