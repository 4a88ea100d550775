"""The engine on the real SmolLM2-135M-Instruct model (49,152-token vocabulary), over small candidate sets.

Loading the GGUF file takes ~20 s, so the model is loaded once per session (the ``smollm2``
fixture of tests/conftest.py).
"""

import copy

import numpy as np
import pytest

from probattr_monitor import attribute, attribute_text
from probattr_monitor.engine.text import encode_prompt

PROMPT = "What year did Albert Einstein visit Mars?"


def test_bos_policy_and_greedy_response(smollm2):
    model, tok = smollm2
    res = attribute_text(model, tok, PROMPT, candidates=[0, 500, 5000], positions=[2], max_new_tokens=6)
    assert res.prompt_ids[0] == tok.bos_token_id  # BOS prepended
    assert tok.decode(list(res.prompt_ids[1:])) == PROMPT
    assert 1 <= len(res.response_ids) <= 6
    assert res.token_texts == (" year",)
    assert not res.is_special[0]
    assert res.info["path"] == "cache+head"  # the fast path is taken on a real HF model


def test_identity_and_cache_free_path_agree(smollm2):
    """The identity AS = log p'(x_k) - log p(x_k) on the real model, in float64.

    In float32 the candidate passes round differently from the full pass over
    prompt+response (2-3e-5 in AS on this 30-layer model, varying between
    runs), so the identity is checked tightly on a float64 copy and the float32
    result is compared with that copy at the float32 resolution.
    """
    model, tok = smollm2
    prompt = encode_prompt(tok, PROMPT)
    response = tok(" It did not.", add_special_tokens=False)["input_ids"]
    cands = [17, 4_000, 30_000, 49_000]  # with the original token: 5 = TOP_K, so p and p' are fully visible
    exact = attribute(copy.deepcopy(model).double(), prompt, response, candidates=cands, positions=[2, 7])
    for i, k in enumerate(exact.positions):
        orig = prompt[k]
        p = dict(zip(exact.top_prior_ids[i].tolist(), exact.top_prior_probs[i]))
        q = dict(zip(exact.top_posterior_ids[i].tolist(), exact.top_posterior_probs[i]))
        assert len(p) == 5 and abs(sum(p.values()) - 1) < 1e-9
        assert exact.attribution[i] == pytest.approx(np.log(q[orig]) - np.log(p[orig]), abs=1e-9)
    res = attribute(model, prompt, response, candidates=cands, positions=[2, 7])
    slow = attribute(model, prompt, response, candidates=cands, positions=[2, 7], use_cache=False)
    assert res.info["path"] == "cache+head" and slow.info["path"] == "full"
    for name in ("attribution", "log_numerator", "log_denominator", "entropy_prompt", "entropy_full", "kl"):
        np.testing.assert_allclose(getattr(res, name), getattr(exact, name), atol=2e-4, err_msg=name)
        np.testing.assert_allclose(getattr(slow, name), getattr(res, name), atol=2e-4, err_msg=name)
    assert 0 <= res.entropy_full.min() and res.entropy_full.max() <= np.log(5) + 1e-9
