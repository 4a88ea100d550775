"""Replacement entropy on the real SmolLM2-135M-Instruct model, one paper prompt (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from probattr_monitor.engine.generation import greedy_response
from probattr_monitor.engine.replacement import replacement_entropy
from probattr_monitor.probes import load_probe_set, render

pytestmark = pytest.mark.slow


def test_paper_prompt_replacement_entropy(smollm2):
    model, tok = smollm2
    probe = load_probe_set("paper")[-1]  # the shortest paper prompt (8 scored tokens)
    ids = render(probe, tok).ids
    res = replacement_entropy(model, ids, max_candidates=6, max_new_tokens=6, num_samples=3,
                              eos_token_id=tok.eos_token_id, seed=0)
    assert res.original["greedy"] == tuple(greedy_response(model, ids, 6, tok.eos_token_id))
    n = res.num_candidates
    assert ((n >= 1) & (n <= 6)).all()
    assert ((res.mass_covered >= 0.9 - 1e-9) | res.truncated).all()
    for d in ("greedy", "top-p"):
        h, s = res.entropy[d], res.original_share[d]
        assert ((h >= 0) & (h <= np.log(n) + 1e-12)).all()
        assert ((s >= 0) & (s <= 1)).all()
        # a position whose only candidate is the token written regenerates the original response
        only_self = (n == 1) & np.array([c == (ids[k],) for c, k in zip(res.candidates, res.positions)])
        assert (h[only_self] == 0).all() and (s[only_self] == 1).all()
    # some token of the prompt changes the greedy response
    assert (res.original_share["greedy"] < 1).any()
    print("positions", res.positions.tolist())
    print("candidates", n.tolist())
    print("entropy greedy", np.round(res.entropy["greedy"], 3).tolist())
    print("share greedy", np.round(res.original_share["greedy"], 3).tolist())
    print("entropy top-p", np.round(res.entropy["top-p"], 3).tolist())
    print("share top-p", np.round(res.original_share["top-p"], 3).tolist())
    print("settings", res.settings())
