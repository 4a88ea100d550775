"""Invariants of the exact attribution engine that hold for any model.

These complement the brute-force oracle of ``test_engine_oracle.py`` (which is
limited to ``V <= 6``) with vocabularies large enough that the engine has to
split the candidates into several batches.

Reference used here
-------------------
``naive_reference(model, prompt, response, positions, candidates)``
    The literal formulas of docs/design.md section 2 evaluated with one independent
    full-sequence forward per (position, candidate) and no caching:
    ``a_k(v) = sum_{i=k}^{n-1} log p(z_i | z_<i)`` and
    ``b_k(v) = a_k(v) + sum_j log p(y_j | ...)`` on ``z = (x_<k, v, x_>k, y)``,
    in float64 from the model's logits; then ``LSE`` / ``softmax`` over the
    candidates for the denominator, numerator, ``p_k`` and ``p'_k``, and their
    entropies and KL. It is slow and obviously correct, and shares nothing
    with the engine's code.

Properties checked
------------------
* ``AS_k = log p'_k(x_k) - log p_k(x_k)`` (docs/design.md section 2), read from
  the engine's own top-candidate arrays when ``|C| <= TOP_K`` and from the
  naive reference otherwise.
* ``candidates="all"`` equals the explicit ``range(V)``.
* Batch-size invariance (``batch_size`` 1, 2, 7, None) and determinism.
* ``0 <= H_k, H'_k <= log |C|``, ``KL >= 0``, ``log_numerator <= log_denominator <= 0``.
* Scoring a subset of positions equals the full run at those positions.
* The model's per-module train/eval flags, grad mode, parameters and the RNG
  state are left as they were; dropout in train mode does not leak into scores.
* list / tuple / tensor / numpy inputs agree; result dtypes and shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.models import TINY_MODELS, NoCacheLM, tiny_gpt2, tiny_llama

from probattr_monitor import attribute  # noqa: E402
from probattr_monitor.engine.result import TOP_K  # noqa: E402
from probattr_monitor.engine.result import SCORE_FIELDS

ATOL = 1e-5
ALL_ARRAYS = ("positions", "token_ids") + SCORE_FIELDS + (
    "top_prior_ids",
    "top_prior_probs",
    "top_posterior_ids",
    "top_posterior_probs",
)


def _lse(a: np.ndarray) -> float:
    m = np.max(a)
    return float(np.log(np.sum(np.exp(a - m))) + m)


def naive_reference(model, prompt, response, positions, candidates):
    """docs/design.md section 2 by one uncached forward per (position, candidate).

    Returns a dict with the six per-position score arrays, ``log_p_response``
    and ``log_prior`` / ``log_posterior``: per position, a dict id -> log prob.
    """
    n = len(prompt)
    full = list(prompt) + list(response)
    with torch.no_grad():
        ids = torch.tensor([full])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        tok = logp[torch.arange(len(full) - 1), ids[0, 1:]].numpy()
    log_p_response = float(tok[n - 1 :].sum())
    out = {name: [] for name in SCORE_FIELDS}
    out["log_prior"], out["log_posterior"] = [], []
    for k in positions:
        cand = sorted(set(candidates) | {prompt[k]})
        seqs = torch.tensor([full[:k] + [v] + full[k + 1 :] for v in cand])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=seqs).logits[:, :-1].double(), -1)
        tok = torch.gather(lp, 2, seqs[:, 1:, None]).squeeze(-1).numpy()  # [|C|, L-1]
        a = tok[:, k - 1 : n - 1].sum(1)
        b = a + tok[:, n - 1 :].sum(1)
        den, num = _lse(a), _lse(b)
        log_p, log_pp = a - den, b - num
        p, pp = np.exp(log_p), np.exp(log_pp)
        out["attribution"].append(log_p_response - (num - den))
        out["log_numerator"].append(num)
        out["log_denominator"].append(den)
        out["entropy_prompt"].append(-np.sum(p * log_p))
        out["entropy_full"].append(-np.sum(pp * log_pp))
        out["kl"].append(np.sum(pp * (log_pp - log_p)))
        out["log_prior"].append(dict(zip(cand, log_p)))
        out["log_posterior"].append(dict(zip(cand, log_pp)))
    for name in SCORE_FIELDS:
        out[name] = np.asarray(out[name])
    out["log_p_response"] = log_p_response
    return out


def _case(model_name, seed=0, vocab=40, n=6, m=3):
    model = TINY_MODELS[model_name](vocab, seed)
    rng = np.random.default_rng(31 * seed + vocab + n)
    return model, rng.integers(0, vocab, n).tolist(), rng.integers(0, vocab, m).tolist()


def _assert_identical(r1, r2, label=""):
    """Every array field and log_p_response bit-identical."""
    for name in ALL_ARRAYS:
        a, b = np.asarray(getattr(r1, name)), np.asarray(getattr(r2, name))
        assert a.shape == b.shape and np.array_equal(a, b), (
            f"{label}: {name} differs, max |diff| "
            f"{np.max(np.abs(a.astype(float) - b.astype(float))) if a.shape == b.shape else a.shape}"
        )
    assert r1.log_p_response == r2.log_p_response, f"{label}: log_p_response"
    assert r1.num_candidates == r2.num_candidates


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identity_from_top_candidates(model_name, seed):
    """With |C| <= TOP_K every candidate is in the top arrays: AS = log p' - log p at x_k."""
    vocab = TOP_K
    model, prompt, response = _case(model_name, seed, vocab=vocab, n=6, m=3)
    res = attribute(model, prompt, response)
    assert res.top_prior_ids.shape == (len(prompt) - 1, vocab)
    for i, k in enumerate(res.positions.tolist()):
        prior = dict(zip(res.top_prior_ids[i].tolist(), res.top_prior_probs[i].tolist()))
        post = dict(zip(res.top_posterior_ids[i].tolist(), res.top_posterior_probs[i].tolist()))
        assert sorted(prior) == list(range(vocab)) and sorted(post) == list(range(vocab))
        assert abs(sum(prior.values()) - 1) < 1e-9 and abs(sum(post.values()) - 1) < 1e-9
        x_k = prompt[k]
        ratio = np.log(post[x_k]) - np.log(prior[x_k])
        assert abs(res.attribution[i] - ratio) <= ATOL, (k, res.attribution[i], ratio)
        # entropies and KL from the same distributions
        p = np.array([prior[v] for v in range(vocab)])
        q = np.array([post[v] for v in range(vocab)])
        assert abs(res.entropy_prompt[i] + np.sum(p * np.log(p))) <= ATOL
        assert abs(res.entropy_full[i] + np.sum(q * np.log(q))) <= ATOL
        assert abs(res.kl[i] - np.sum(q * (np.log(q) - np.log(p)))) <= ATOL


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
def test_identity_from_subset_top_candidates(model_name):
    """Same identity with an explicit candidate subset of size <= TOP_K (V = 30)."""
    vocab = 30
    model, _, response = _case(model_name, 1, vocab=vocab)
    subset = [3, 17, 29, 8]
    prompt = [5, 17, 3, 29, 3, 8]
    res = attribute(model, prompt, response, candidates=subset)
    assert res.num_candidates == len(subset)
    assert res.top_prior_ids.shape == (len(prompt) - 1, len(subset))
    for i, k in enumerate(res.positions.tolist()):
        prior = dict(zip(res.top_prior_ids[i].tolist(), res.top_prior_probs[i].tolist()))
        post = dict(zip(res.top_posterior_ids[i].tolist(), res.top_posterior_probs[i].tolist()))
        assert sorted(prior) == sorted(subset) and sorted(post) == sorted(subset)
        ratio = np.log(post[prompt[k]]) - np.log(prior[prompt[k]])
        assert abs(res.attribution[i] - ratio) <= ATOL


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
@pytest.mark.parametrize("candidates", ["all", "subset"])
def test_matches_naive_reference_large_vocab(model_name, candidates):
    """V = 40 with batch_size 7: several candidate batches per position."""
    vocab = 40
    model, prompt, response = _case(model_name, 2, vocab=vocab)
    cands = list(range(vocab)) if candidates == "all" else sorted(set(prompt) | {0, 11, 22, 33})
    ref = naive_reference(model, prompt, response, range(1, len(prompt)), cands)
    res = attribute(model, prompt, response, candidates="all" if candidates == "all" else cands, batch_size=7)
    assert abs(res.log_p_response - ref["log_p_response"]) <= ATOL
    for name in SCORE_FIELDS:
        np.testing.assert_allclose(getattr(res, name), ref[name], rtol=0, atol=ATOL, err_msg=name)
    for i, k in enumerate(range(1, len(prompt))):
        # the identity, from the reference's own distributions
        ratio = ref["log_posterior"][i][prompt[k]] - ref["log_prior"][i][prompt[k]]
        # (to float32 noise: log_p_response comes from a separate forward)
        assert abs(ref["attribution"][i] - ratio) <= ATOL
        # the reported top candidates carry the reference probabilities
        for ids, probs, key in (
            (res.top_prior_ids[i], res.top_prior_probs[i], "log_prior"),
            (res.top_posterior_ids[i], res.top_posterior_probs[i], "log_posterior"),
        ):
            want = sorted(np.exp(list(ref[key][i].values())), reverse=True)[:TOP_K]
            np.testing.assert_allclose(probs, want, rtol=0, atol=ATOL)
            for t, pr in zip(ids.tolist(), probs.tolist()):
                assert abs(np.exp(ref[key][i][t]) - pr) <= ATOL


# --------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
def test_all_equals_explicit_full_range(model_name):
    vocab = 12
    model, prompt, response = _case(model_name, 0, vocab=vocab)
    r_all = attribute(model, prompt, response, candidates="all")
    assert r_all.num_candidates == vocab
    for explicit in (range(vocab), list(range(vocab)), list(reversed(range(vocab)))):
        r = attribute(model, prompt, response, candidates=explicit)
        assert r.num_candidates == vocab
        assert abs(r.log_p_response - r_all.log_p_response) <= 1e-12
        for name in SCORE_FIELDS + ("top_prior_probs", "top_posterior_probs"):
            np.testing.assert_allclose(getattr(r, name), getattr(r_all, name), rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_array_equal(r.top_prior_ids, r_all.top_prior_ids)
        np.testing.assert_array_equal(r.top_posterior_ids, r_all.top_posterior_ids)


def _assert_close(r1, r2, atol, label=""):
    """Score arrays within ``atol``; ids and positions identical."""
    for name in ("positions", "token_ids", "top_prior_ids", "top_posterior_ids"):
        assert np.array_equal(getattr(r1, name), getattr(r2, name)), f"{label}: {name}"
    for name in SCORE_FIELDS + ("top_prior_probs", "top_posterior_probs"):
        np.testing.assert_allclose(
            getattr(r1, name), getattr(r2, name), rtol=0, atol=atol, err_msg=f"{label}: {name}"
        )
    assert abs(r1.log_p_response - r2.log_p_response) <= atol, f"{label}: log_p_response"
    assert r1.num_candidates == r2.num_candidates


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
def test_batch_size_invariance(model_name):
    """batch_size only changes how the work is split.

    Not bit-identical in float32: the models' own CPU forwards differ by ~1e-6
    in the logits between batch shapes (e.g. a batch of 40 rows vs 40 batches
    of 1), so float32 agreement is checked to 1e-5. In float64 the same model
    must agree to 1e-12, which leaves no room for a batching bug.
    """
    model, prompt, response = _case(model_name, 1, vocab=23)
    for dtype, atol in ((torch.float32, ATOL), (torch.float64, 1e-12)):
        model = model.to(dtype)
        base = attribute(model, prompt, response, batch_size=None)
        for bs in (1, 2, 7, 1000):
            _assert_close(attribute(model, prompt, response, batch_size=bs), base, atol, f"{dtype} batch_size={bs}")
        sub = sorted(set(prompt) | {0, 5, 10})
        base = attribute(model, prompt, response, candidates=sub, batch_size=None)
        for bs in (1, 3):
            _assert_close(
                attribute(model, prompt, response, candidates=sub, batch_size=bs), base, atol, f"{dtype} subset bs={bs}"
            )


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
def test_deterministic(model_name):
    model, prompt, response = _case(model_name, 2, vocab=17)
    _assert_identical(attribute(model, prompt, response), attribute(model, prompt, response), "repeat")
    sub = [1, 4, 9, 16]
    _assert_identical(
        attribute(model, prompt, response, candidates=sub, batch_size=3),
        attribute(model, prompt, response, candidates=sub, batch_size=3),
        "repeat subset",
    )


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
@pytest.mark.parametrize("positions", [[1], [5], [2, 4], [1, 2, 3, 4, 5], [4, 2]])
def test_position_subset_equals_full_run(model_name, positions):
    model, prompt, response = _case(model_name, 0, vocab=19)
    full = attribute(model, prompt, response)
    part = attribute(model, prompt, response, positions=positions)
    assert sorted(part.positions.tolist()) == sorted(positions)
    assert part.log_p_response == pytest.approx(full.log_p_response, abs=1e-12)
    rows = [full.positions.tolist().index(k) for k in part.positions.tolist()]
    for name in SCORE_FIELDS + ("token_ids", "top_prior_probs", "top_posterior_probs"):
        np.testing.assert_allclose(
            np.asarray(getattr(part, name)), np.asarray(getattr(full, name))[rows], rtol=0, atol=1e-12, err_msg=name
        )


def test_input_forms_agree():
    vocab = 15
    model, prompt, response = _case("gpt2", 0, vocab=vocab)
    base = attribute(model, prompt, response)
    assert base.prompt_ids == tuple(prompt) and base.response_ids == tuple(response)
    for p, r in (
        (tuple(prompt), tuple(response)),
        (torch.tensor(prompt), torch.tensor(response)),
        (torch.tensor(prompt, dtype=torch.int32), torch.tensor(response, dtype=torch.int32)),
        (prompt, torch.tensor(response)),
    ):
        res = attribute(model, p, r)
        _assert_identical(res, base, f"{type(p).__name__}/{type(r).__name__}")
        assert res.prompt_ids == tuple(prompt) and res.response_ids == tuple(response)
        assert all(type(t) is int for t in res.prompt_ids + res.response_ids)


def test_numpy_inputs_agree():
    model, prompt, response = _case("llama", 0, vocab=15)
    base = attribute(model, prompt, response)
    res = attribute(model, np.asarray(prompt, dtype=np.int64), np.asarray(response, dtype=np.int32))
    _assert_identical(res, base, "numpy")
    res = attribute(model, [np.int64(t) for t in prompt], response, positions=np.array([1, 3]))
    assert res.positions.tolist() == [1, 3]


def test_model_without_config_uses_logits_width():
    """A module with no ``config`` attribute: vocabulary from the logits' last dim."""
    vocab = 9
    with_cfg, no_cfg = NoCacheLM(vocab, 3), NoCacheLM(vocab, 3, with_config=False)
    assert not hasattr(no_cfg, "config")
    prompt, response = [0, 4, 8, 2], [7, 1]
    r1 = attribute(with_cfg, prompt, response)
    r2 = attribute(no_cfg, prompt, response)
    assert r2.num_candidates == vocab
    _assert_identical(r1, r2, "no config")


# --------------------------------------------------------------------------- bounds, types


@pytest.mark.parametrize("model_name", list(TINY_MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_bounds(model_name, seed):
    vocab = 25
    model, prompt, response = _case(model_name, seed, vocab=vocab, n=7, m=2)
    subset = sorted(set(prompt) | {0, 1, 2})
    for cands, size in (("all", vocab), (subset, len(subset))):
        res = attribute(model, prompt, response, candidates=cands)
        assert res.num_candidates == size
        for h in (res.entropy_prompt, res.entropy_full):
            assert np.all(h >= -1e-12) and np.all(h <= np.log(size) + 1e-12), h
        assert np.all(res.kl >= -1e-12), res.kl
        assert np.all(res.log_denominator <= 1e-12)
        assert np.all(res.log_numerator <= res.log_denominator + 1e-12)
        assert res.log_p_response <= 0
        assert np.all(np.isfinite(res.attribution))
        for probs in (res.top_prior_probs, res.top_posterior_probs):
            assert np.all(probs >= 0) and np.all(probs <= 1 + 1e-12)
            assert np.all(np.diff(probs, axis=1) <= 1e-15), "top probabilities not sorted"
            assert np.all(probs.sum(1) <= 1 + 1e-9)


@pytest.mark.parametrize("candidates", ["all", [0, 2, 3, 5, 7]])
def test_result_types_and_shapes(candidates):
    vocab, n = 11, 6
    model, prompt, response = _case("nocache", 0, vocab=vocab, n=n)
    if candidates != "all":
        candidates = sorted(set(candidates) | set(prompt))
    size = vocab if candidates == "all" else len(candidates)
    res = attribute(model, prompt, response, candidates=candidates)
    assert isinstance(res.positions, np.ndarray) and res.positions.ndim == 1
    assert np.issubdtype(res.positions.dtype, np.integer)
    assert res.positions.tolist() == list(range(1, n))
    assert len(res) == n - 1
    assert np.issubdtype(np.asarray(res.token_ids).dtype, np.integer)
    assert np.asarray(res.token_ids).tolist() == prompt[1:]
    for name in SCORE_FIELDS:
        arr = getattr(res, name)
        assert isinstance(arr, np.ndarray), name
        assert arr.dtype == np.float64 and arr.shape == (n - 1,), (name, arr.dtype, arr.shape)
    assert isinstance(res.log_p_response, float)
    width = min(TOP_K, size)
    for name in ("top_prior_ids", "top_posterior_ids"):
        assert getattr(res, name).shape == (n - 1, width)
        assert np.issubdtype(getattr(res, name).dtype, np.integer)
    for name in ("top_prior_probs", "top_posterior_probs"):
        assert getattr(res, name).shape == (n - 1, width)
        assert getattr(res, name).dtype == np.float64
    assert res.num_candidates == size


# --------------------------------------------------------------------------- model state


def _mode_map(model):
    return {name: mod.training for name, mod in model.named_modules()}


def _param_snapshot(model):
    return {name: (p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()}


def test_train_mode_and_grad_mode_restored_and_dropout_off():
    """Scoring a model in train mode (dropout 0.5): eval-mode scores, state restored."""
    vocab = 13
    model = tiny_gpt2(vocab, 4, dropout=0.5)
    prompt, response = [0, 3, 12, 7, 5], [9, 2, 11]
    model.eval()
    ref = attribute(model, prompt, response, batch_size=4)
    model.train()
    modes = _mode_map(model)
    params = _param_snapshot(model)
    rng = torch.get_rng_state()
    with torch.enable_grad():
        res = attribute(model, prompt, response, batch_size=4)
        assert torch.is_grad_enabled()
    assert _mode_map(model) == modes and model.training
    assert torch.equal(torch.get_rng_state(), rng), "exact scoring consumed torch RNG"
    for name, p in model.named_parameters():
        assert p.grad is None, f"{name} got a gradient"
        assert torch.equal(p.detach(), params[name][0]) and p.requires_grad == params[name][1]
    for name in SCORE_FIELDS:
        np.testing.assert_allclose(getattr(res, name), getattr(ref, name), rtol=0, atol=1e-12, err_msg=name)


def test_mixed_module_modes_restored():
    model = tiny_llama(11, 0)
    model.eval()
    model.model.layers[0].train()
    model.lm_head.train()
    modes = _mode_map(model)
    assert any(modes.values()) and not all(modes.values())
    attribute(model, [1, 2, 3, 4], [5, 6])
    assert _mode_map(model) == modes


def test_grad_mode_restored_both_ways():
    model = NoCacheLM(7, 0)
    prev = torch.is_grad_enabled()
    try:
        torch.set_grad_enabled(False)
        attribute(model, [1, 2, 3], [4])
        assert not torch.is_grad_enabled(), "grad mode switched on by the engine"
        torch.set_grad_enabled(True)
        attribute(model, [1, 2, 3], [4])
        assert torch.is_grad_enabled(), "grad mode left off by the engine"
    finally:
        torch.set_grad_enabled(prev)
    assert not model.training
