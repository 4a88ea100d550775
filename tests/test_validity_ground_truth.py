"""Oracle tests of the signal-validity study's ground truth (benchmarks/validity).

The forward algorithm of :class:`~benchmarks.validity.languages.Language` is
checked against brute-force enumeration of hidden-state paths on a tiny
language, and the engine run on the true model (:class:`TrueLM`) against the
true contextual distributions obtained by enumerating the joint.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from benchmarks.validity.languages import BOS_ID, grammar_language, hmm_levels, random_hmm
from benchmarks.validity.truth import TrueLM, word_tokenizer
from probattr_monitor import attribute


def _brute_joint(lang, seq) -> float:
    """P(x_1..x_T) of ``seq = [BOS, x_1, ..., x_T]`` by summing over every hidden-state path."""
    k = lang.num_states
    a = lang.transitions
    total = 0.0
    for path in itertools.product(range(k), repeat=len(seq)):
        # path[0] is the state before x_1, path[t] the state after emitting x_t
        p = lang.initial[path[0]]
        for t in range(1, len(seq)):
            p *= a[path[t - 1], seq[t], path[t]]
        total += p
    return total


@pytest.fixture(scope="module")
def tiny_language():
    return random_hmm("tiny", num_states=2, num_words=3, emission_concentration=0.5,
                      transition_concentration=0.5, seed=3)


def test_forward_algorithm_matches_path_enumeration(tiny_language):
    lang = tiny_language
    v = lang.vocab_size
    seqs = [[BOS_ID, *rest] for rest in itertools.product(range(v), repeat=3)]
    lp = lang.next_token_log_probs(torch.tensor(seqs)).numpy()
    for row, seq in enumerate(seqs):
        for t in range(1, len(seq)):
            want = _brute_joint(lang, seq[: t + 1]) / _brute_joint(lang, seq[:t]) if t > 1 else \
                _brute_joint(lang, seq[:2])
            assert lp[row, t - 1, seq[t]] == pytest.approx(np.log(want), abs=1e-12)


def test_next_token_distributions_are_normalised_and_finite():
    for lang in hmm_levels() + [grammar_language()]:
        ids = torch.as_tensor(lang.sample(8, 24, seed=1))
        lp = lang.next_token_log_probs(ids)
        assert torch.isfinite(lp).all()
        assert torch.allclose(lp.exp().sum(-1), torch.ones(lp.shape[:2], dtype=torch.float64), atol=1e-12)


def test_engine_on_true_model_matches_enumerated_contextual_distributions(tiny_language):
    lang = tiny_language
    prompt = [BOS_ID, 1, 3, 2, 1]
    response = [2, 3]
    res = attribute(TrueLM(lang), prompt, response, candidates="all")
    v = lang.vocab_size
    for i, k in enumerate(res.positions):
        prior = np.array([_brute_joint(lang, prompt[:k] + [c] + prompt[k + 1:]) for c in range(v)])
        post = np.array([_brute_joint(lang, prompt[:k] + [c] + prompt[k + 1:] + response) for c in range(v)])
        p_k, q_k = prior / prior.sum(), post / post.sum()
        x = prompt[k]
        assert res.attribution[i] == pytest.approx(np.log(q_k[x]) - np.log(p_k[x]), abs=1e-9)
        assert res.entropy_prompt[i] == pytest.approx(-(p_k * np.log(p_k)).sum(), abs=1e-9)
        assert res.entropy_full[i] == pytest.approx(-(q_k * np.log(q_k)).sum(), abs=1e-9)
        assert res.kl[i] == pytest.approx((q_k * np.log(q_k / p_k)).sum(), abs=1e-9)
    p_y = _brute_joint(lang, prompt + response) / _brute_joint(lang, prompt)
    assert res.log_p_response == pytest.approx(np.log(p_y), abs=1e-9)


def test_samples_follow_the_language():
    lang = random_hmm("t", num_states=2, num_words=3, seed=5)
    ids = lang.sample(20000, 2, seed=0)
    freq = np.bincount(ids[:, 1], minlength=lang.vocab_size) / len(ids)
    want = lang.next_token_log_probs(torch.tensor([[BOS_ID]])).exp()[0, 0].numpy()
    assert np.abs(freq - want).max() < 0.015


def test_hmm_levels_are_ordered_by_entropy_rate():
    rates = [float(lang.sequence_nll(torch.as_tensor(lang.sample(400, 48, seed=2))).mean()) for lang in hmm_levels()]
    assert rates[0] < rates[1] < rates[2]


def test_grammar_agreement_is_pinned_down():
    lang = grammar_language()
    tok = word_tokenizer(lang)
    idx = {w: i for i, w in enumerate(lang.words)}

    def next_probs(text):
        ids = torch.tensor([[BOS_ID] + tok(text)["input_ids"]])
        return lang.next_token_log_probs(ids)[0, -1].exp()

    # a plural subject takes a plural verb, also across a relative clause
    p = next_probs("these dogs")
    assert p[idx["sees"]] < 1e-5 < p[idx["see"]]
    p = next_probs("the dog that sees the cats")
    assert p[idx["see"]] < 1e-5 < p[idx["sees"]]
    # "a" only goes with singular nouns
    p = next_probs("a")
    assert p[idx["dogs"]] < 1e-5 < p[idx["dog"]]
    assert tok("the dog sees .")["input_ids"] == [idx["the"], idx["dog"], idx["sees"], idx["."]]
