"""Oracle tests of the SmolLM2 ladder's ground-truth code: degradation transforms, held-out loss, English corpus."""

import math

import numpy as np
import pytest
import torch

from benchmarks.validity.degrade import (Variant, add_weight_noise, chunk_ids, drop_layers, dropped_indices,
                                         held_out_loss, interpolate_to_init, make_variant)
from benchmarks.validity.english import build_corpus, held_out_of, paragraphs
from benchmarks.validity.ladder import summarise
from helpers.models import tiny_llama


def _llama(n_layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=n_layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=39, pad_token_id=None)
    return LlamaForCausalLM(cfg).eval()


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("transform", [interpolate_to_init, add_weight_noise])
def test_strength_zero_is_identity_and_seed_is_deterministic(transform):
    m = tiny_llama(40, 0)
    assert _same(transform(m, 0.0, seed=3), m)
    a, b, c = transform(m, 0.3, seed=3), transform(m, 0.3, seed=3), transform(m, 0.3, seed=4)
    assert _same(a, b) and not _same(a, c) and not _same(a, m)
    assert _same(make_variant(m, Variant("original", 0.0)), m)


def test_interpolation_at_one_is_the_fresh_init_and_leaves_global_rng_alone():
    m = tiny_llama(40, 0)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    full = interpolate_to_init(m, 1.0, seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    again = interpolate_to_init(m, 1.0, seed=5)
    assert _same(full, again) and not _same(full, m)
    # halfway lies at the midpoint of the original and the fresh weights
    half = interpolate_to_init(m, 0.5, seed=5)
    for k, t in half.state_dict().items():
        torch.testing.assert_close(t, (m.state_dict()[k] + full.state_dict()[k]) / 2)


def test_noise_scale_is_relative_to_each_tensor_std():
    m = tiny_llama(40, 0)
    n = add_weight_noise(m, 0.1, seed=0)
    w, wn = m.model.embed_tokens.weight, n.model.embed_tokens.weight
    ratio = float((wn - w).detach().std() / w.detach().std())
    assert 0.08 < ratio < 0.12


def test_drop_layers_removes_middle_layers_and_matches_a_model_built_without_them():
    m = _llama(5)
    assert dropped_indices(5, 0) == [] and dropped_indices(5, 1) == [2] and dropped_indices(5, 3) == [1, 2, 3]
    assert dropped_indices(30, 6) == [3, 8, 12, 17, 22, 26]
    with pytest.raises(ValueError):
        dropped_indices(5, 4)
    assert _same(drop_layers(m, 0), m)
    d = drop_layers(m, 2)  # drops layers 1 and 3
    assert len(d.model.layers) == 3 and d.config.num_hidden_layers == 3 and len(m.model.layers) == 5
    # oracle: a 3-layer model given layers 0, 2, 4 of the original computes the same logits, with or without cache
    ref = _llama(3, seed=9)
    sd = {k: v for k, v in m.state_dict().items() if ".layers." not in k}
    for new, old in enumerate((0, 2, 4)):
        for k, v in m.state_dict().items():
            if k.startswith(f"model.layers.{old}."):
                sd[k.replace(f"layers.{old}.", f"layers.{new}.")] = v
    ref.load_state_dict(sd)
    x = torch.tensor([[0, 5, 7, 3, 9, 11]])
    with torch.no_grad():
        torch.testing.assert_close(d(input_ids=x).logits, ref(input_ids=x).logits)
        gen = d.generate(x, max_new_tokens=4, do_sample=False)
        gen_ref = ref.generate(x, max_new_tokens=4, do_sample=False)
    assert torch.equal(gen, gen_ref)


def test_held_out_loss_equals_brute_force_per_token_sum():
    m = tiny_llama(40, 1)
    ids = list(np.random.default_rng(0).integers(1, 39, size=23))
    windows = chunk_ids(ids, 8, start_id=0)
    assert [w[0] for w in windows] == [0] * len(windows)
    assert [t for w in windows for t in w[1:]] == ids  # every token predicted exactly once
    res = held_out_loss(m, windows)
    brute, n = 0.0, 0
    with torch.no_grad():
        for w in windows:
            for i in range(1, len(w)):
                logits = m(input_ids=torch.tensor([w[:i]])).logits[0, -1].double()
                brute -= float(torch.log_softmax(logits, -1)[w[i]])
                n += 1
    assert res.n_tokens == n == len(ids)
    assert res.nll_sum == pytest.approx(brute, rel=1e-6)
    assert res.perplexity == pytest.approx(math.exp(brute / n), rel=1e-6)


def test_corpus_is_deterministic_disjoint_and_large(tmp_path):
    a, b = build_corpus(), build_corpus()
    assert a == b
    assert not set(a.train) & set(a.held_out)
    assert len(a.text("held_out")) > 100_000 and len(a.text("train")) > 100_000  # ~25k+ tokens each
    assert all(held_out_of(p, 0.5) for p in a.held_out) and not any(held_out_of(p, 0.5) for p in a.train)
    # a paragraph repeated in two files is kept once
    (tmp_path / "GPL-3").write_text("Alpha beta gamma delta epsilon zeta eta theta.\n\nTwo two two two two two "
                                    "two two two two two two.\n\nshort\n")
    (tmp_path / "GPL-2").write_text("Alpha  beta gamma delta epsilon zeta eta\ntheta.\n")
    c = build_corpus(with_stdlib=False, license_dir=tmp_path)
    assert sorted(c.train + c.held_out) == sorted(paragraphs((tmp_path / "GPL-3").read_text()))
    assert len(c.train + c.held_out) == 2


def test_summary_kendall_tau_and_interval():
    recs = []
    for i, ppl in enumerate([10.0, 12.0, 15.0, 30.0]):
        probes = [[f"p{j}", (2.0 + i + 0.1 * j) * 10, 10] for j in range(6)]
        recs.append({"variant": f"v{i}", "perplexity": ppl, "held_out_loss": math.log(ppl), "probes": probes})
    s = summarise(recs, n_boot=200)
    assert s["kendall_tau"] == pytest.approx(1.0) and s["kendall_tau_ci"] == [1.0, 1.0]
    assert s["variants"][0]["mean_surprisal_prefix"] == pytest.approx(2.25)
    recs[1]["probes"], recs[2]["probes"] = recs[2]["probes"], recs[1]["probes"]
    assert summarise(recs, n_boot=50)["kendall_tau"] == pytest.approx(4 / 6)


def test_ladder_metric_equals_the_monitors_mean_surprisal_prefix():
    """The ladder's gate-only path gives the value a full monitor scoring reports (same probes, same model)."""
    from benchmarks.validity.ladder import probe_surprisals
    from helpers.hf import make_corpus, make_tokenizer
    from helpers.models import tiny_gpt2
    from probattr_monitor.monitor import ProbAttrMonitor
    from probattr_monitor.probes import ProbeSet
    from probattr_monitor.scoring import ScoringConfig

    tok = make_tokenizer()
    model = tiny_gpt2(len(tok), 0)
    records = [{"id": f"p{i}", "prompt": s} for i, s in enumerate(make_corpus(5, seed=3))]
    probes = ProbeSet.from_records(records, name="ladder-oracle")
    cfg = ScoringConfig(max_new_tokens=4)
    monitor = ProbAttrMonitor(probes, tokenizer=tok, scoring=cfg)
    report = monitor.run(model, step=0)
    per_probe = probe_surprisals(model, tok, probes, cfg)
    value = sum(s for _, s, _ in per_probe) / sum(n for _, _, n in per_probe)
    assert [p for p, _, _ in per_probe] == [r["id"] for r in records]
    assert value == pytest.approx(report.metrics.mean_surprisal_prefix.value, rel=1e-9)
