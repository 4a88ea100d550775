"""The english regime's data path (benchmarks/validity): what is trained on, scored on and measured on.

The tokenizer must come from the training paragraphs only, the probes from the
held-out paragraphs only, and the probes', validation and truth parts of the
held-out paragraphs must not share a paragraph. A small synthetic corpus makes
a leak visible: its held-out paragraphs alone contain the letters z, q, x, j.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.validity import english
from benchmarks.validity.__main__ import english_spec, plan
from benchmarks.validity.analysis import loss_regret
from benchmarks.validity.runs import SEQ_LEN, english_data

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ("the software is free and you may copy it or modify it under the terms of this licence "
         "provided that every notice stays in place with a copy of the work").split()
HELD_OUT_ONLY = ("zqxj", "jazz", "quixotic")


def _paragraphs(n: int, seed: int, extra=()) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = list(rng.choice(WORDS + list(extra), size=40))
        out.append(" ".join(words) + f" section {seed}{i}.")
    return out


@pytest.fixture(scope="module")
def corpus():
    return english.EnglishCorpus(train=tuple(_paragraphs(150, 1)),
                                 held_out=tuple(_paragraphs(240, 2, HELD_OUT_ONLY)), sources=())


@pytest.fixture(scope="module")
def data(corpus):
    spec = english_spec(0, steps=10, score_at=(5, 10))
    spec = type(spec)(**{**spec.__dict__, "vocab_size": 600, "num_probes": 12})
    return english_data(spec, corpus)


def test_tokenizer_is_trained_on_the_training_paragraphs_only(data, corpus):
    tok = data.tokenizer
    assert len(tok) == data.vocab_size <= 600 and tok.convert_ids_to_tokens(0) == english.START
    merged = [t for t in tok.get_vocab() if len(t) > 1 and t != english.START]
    assert merged, "the BPE learned no merges"
    # letters seen only in held-out text never took part in a merge
    assert not [t for t in merged if set(t) & set("zqxj")]
    # the same trainer on the held-out text does merge them (the check above can fail)
    leaky = english.train_tokenizer(corpus.held_out, 600)
    assert [t for t in leaky.get_vocab() if len(t) > 1 and set(t) & set("zqxj")]
    # byte-level: held-out text round-trips without unknown ids
    p = corpus.held_out[0]
    assert tok.decode(tok.encode(p, add_special_tokens=False)) == p


def test_held_out_parts_are_disjoint_and_cover_the_held_out_split(corpus):
    probe, val, truth = english.split_held_out(corpus.held_out)
    assert probe and val and truth
    assert not (set(probe) & set(val)) and not (set(probe) & set(truth)) and not (set(val) & set(truth))
    assert sorted(probe + val + truth) == sorted(corpus.held_out)
    assert len(truth) > len(probe) + len(val)  # the truth sample is the large part
    # deterministic (a hash of the text, not of the position)
    assert english.split_held_out(corpus.held_out[::-1])[0] == probe[::-1]


def test_probes_come_from_the_probe_part_of_the_held_out_paragraphs_only(data, corpus):
    probe, val, truth = english.split_held_out(corpus.held_out)
    prompts = [p.prompt for p in data.probes]
    assert len(prompts) == 12 and len(set(prompts)) == 12
    for text in prompts:
        assert any(text in p for p in probe)
        assert not any(text in p for p in corpus.train + tuple(val) + tuple(truth))
        n = len(data.tokenizer.encode(text, add_special_tokens=False))
        assert 10 <= n <= 15  # about 12 tokens, cut at word starts
    # a fixed probe set per seed, another for another seed
    again = english.probe_prompts(data.tokenizer, probe, 12, 12, seed=0)
    other = english.probe_prompts(data.tokenizer, probe, 12, 12, seed=1)
    assert again == prompts and other != prompts


def test_sequences_are_windows_of_their_own_part(data, corpus):
    probe, val, truth = english.split_held_out(corpus.held_out)
    tok = data.tokenizer
    for x in (data.train, data.val, data.held_out):
        assert x.shape[1] == SEQ_LEN and (x[:, 0] == 0).all() and int(x.max()) < data.vocab_size
    assert data.true_seq_nll is None
    stream = english.token_stream(tok, truth)
    body = SEQ_LEN - 1
    assert len(data.held_out) == len(stream) // body
    assert data.held_out[1, 1:].tolist() == stream[body:2 * body]
    assert len(data.val) == len(english.token_stream(tok, val)) // body
    # training windows overlap (stride half a window) and hold no held-out letter
    train_stream = english.token_stream(tok, corpus.train)
    assert data.train[1, 1:].tolist() == train_stream[body // 2:body // 2 + body]
    assert not set("zqxj") & set(tok.decode(data.train[:, 1:].flatten().tolist()))


def test_plan_has_one_english_run_per_seed_and_loss_regret_is_a_perplexity_ratio():
    runs = [s for s in plan(False, 3) if s.regime == "english"]
    assert [s.seed for s in runs] == [0, 1, 2] and all(len(s.score_at) >= 10 for s in runs)
    assert loss_regret([3.0, 1.0, 2.0], [4.0, 4.5, 4.2], True) == pytest.approx(np.exp(0.5))
    assert loss_regret([3.0, 1.0, 2.0], [4.0, 4.5, 4.2], False) == pytest.approx(1.0)


def test_english_runs_are_measured_against_held_out_loss():
    from benchmarks.validity.signals import all_signals
    from benchmarks.validity.study import HELD_OUT, RunData, measure_run, render_markdown

    signals = all_signals()
    loss = np.array([6.0, 4.5, 4.2, 4.6])  # held-out loss: best at the third checkpoint
    val = np.array([6.0, 4.4, 4.3, 4.25])  # validation loss (a smaller sample) picks the fourth
    rng = np.random.default_rng(0)
    num = {s.name: rng.random((4, 5)) for s in signals}
    num["mean_surprisal_prefix"] = np.outer(loss, np.ones(5))
    den = {s.name: np.ones((4, 5)) for s in signals}
    run = RunData(name="english.english.s0", language="english", regime="english", seed=0, steps=[1, 2, 3, 4],
                  truth=loss, val_loss=val, num=num, den=den, truth_kind=HELD_OUT)
    out = measure_run(run, signals)
    assert out["truth_kind"] == HELD_OUT and out["best_step"] == 3
    assert out["val_loss"]["regret"] == pytest.approx(np.exp(4.6 - 4.2))
    m = out["signals"]["mean_surprisal_prefix"]
    assert m["spearman"] == pytest.approx(1.0) and m["regret"] == pytest.approx(1.0) and m["picked_step"] == 3
    summary = {"runs": [{**out, "truth": {}}], "signals": [s.name for s in signals],
               "aggregate": {s: {"english": {"spearman_median": None, "spearman_min": None, "regret_median": None,
                                             "regret_max": None, "runs": 1}}
                             for s in [sig.name for sig in signals] + ["val_loss"]}}
    assert "| english.english.s0 | 3, 4.200 |" in render_markdown(summary)
