"""Inputs too long for the model: named as such, with the lengths, before any forward where the config allows.

- A probe (or an ``attribute_text`` prompt) that leaves no room for its
  response in the context window the config declares fails before any forward,
  with a message naming it and both lengths.
- A model whose config declares no window (a position table found only by
  running it) fails with "input of N tokens is longer than the model's M
  positions", never as an out-of-vocabulary id; a real out-of-vocabulary id of
  a model that declares no vocabulary is still named as one, with its argument.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from helpers.models import NoCacheLM, tiny_gpt2

from probattr_monitor import attribute
from probattr_monitor.engine import attribute_text
from probattr_monitor.probes import Probe
from probattr_monitor.scoring import ScoringConfig, score_probe, score_probes

pytestmark = pytest.mark.usefixtures("one_thread")

V = 7
POSITIONS = 64  # of tiny_gpt2 and NoCacheLM


class Forwards:
    """Counts the forwards of ``model`` (a pre-hook on the root module)."""

    def __init__(self, model: torch.nn.Module):
        self.count = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1


class NumberWords:
    """Tokenizer of space-separated ids ("0 3 5"); no BOS or EOS, so generation never stops early."""

    bos_token_id = None
    eos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(w) for w in text.split()]}

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids)


def words(n: int, start: int = 1) -> str:
    return " ".join(str((start + i) % (V - 1) + 1) for i in range(n))


# --------------------------------------------------------------------------- a declared context window


@pytest.mark.parametrize("response", [words(10), None], ids=["fixed-response", "generated"])
def test_probe_too_long_is_named_before_any_forward(response):
    model = tiny_gpt2(V, 0)
    calls = Forwards(model)
    probe = Probe("long-one", words(60), response=response)
    config = ScoringConfig(candidates="all", max_new_tokens=10, n_boot=0)
    with pytest.raises(ValueError) as info:
        score_probe(model, NumberWords(), probe, config)
    msg = str(info.value)
    assert "probe 'long-one'" in msg and "70 tokens" in msg and f"context window is {POSITIONS}" in msg, msg
    assert calls.count == 0


def test_probe_too_long_is_recorded_and_the_next_probe_scored():
    model = tiny_gpt2(V, 0)
    probes = [Probe("long-one", words(60), response=words(10)), Probe("short", words(4), response=words(2))]
    long_one, short = score_probes(model, NumberWords(), probes, ScoringConfig(candidates="all", n_boot=0),
                                   on_error="record")
    assert long_one.result is None and "probe 'long-one' needs 70 tokens" in long_one.error
    assert short.error is None and short.result is not None


def test_attribute_text_generation_past_the_context_is_refused_before_generating():
    """60 prompt ids + max_new_tokens=10 cannot fit 64 positions: said before generating, with both lengths."""
    model = tiny_gpt2(V, 0)
    calls = Forwards(model)
    prompt = [int(w) for w in words(60).split()]
    with pytest.raises(ValueError) as info:
        attribute_text(model, NumberWords(), prompt, max_new_tokens=10)
    msg = str(info.value)
    assert "70 tokens" in msg and "60 prompt + 10 max_new_tokens" in msg and f"context window is {POSITIONS}" in msg
    assert calls.count == 0


def test_attribute_text_that_fits_exactly_is_scored():
    model = tiny_gpt2(V, 0)
    prompt = [int(w) for w in words(POSITIONS - 3).split()]
    res = attribute_text(model, NumberWords(), prompt, max_new_tokens=3, candidates=[1, 2], positions=[1])
    assert len(res.response_ids) == 3


# --------------------------------------------------------------------------- no declared window


def test_position_overflow_is_named_as_too_long_not_as_vocabulary():
    """NoCacheLM's config declares only vocab_size; its position table has 64 rows."""
    model = NoCacheLM(V, 0)
    with pytest.raises(ValueError) as info:
        attribute(model, [int(w) for w in words(60).split()], [1] * 10, candidates=[1, 2])
    msg = str(info.value)
    assert f"input of 70 tokens is longer than the model's {POSITIONS} positions" in msg, msg
    assert "60 + 10" in msg and "vocabulary" not in msg


def test_out_of_vocabulary_id_of_a_model_without_declared_vocabulary_is_named():
    """With no config at all, an id past the embedding is still named, with its argument and the vocabulary."""
    model = NoCacheLM(V, 0, with_config=False)
    with pytest.raises(ValueError, match=rf"prompt_ids\[2\] = {V + 2} is outside the model's vocabulary \[0, {V}\)"):
        attribute(model, [0, 1, V + 2, 3], [1, 2])
    with pytest.raises(ValueError, match=rf"response_ids\[1\] = {V} is outside the model's vocabulary \[0, {V}\)"):
        attribute(model, [0, 1, 2, 3], [1, V])


def test_generation_past_undeclared_positions_is_named():
    """attribute_text on a model that declares no window: the overflow during generation is named with lengths."""
    model = NoCacheLM(V, 0)
    prompt = [int(w) for w in words(60).split()]
    with pytest.raises(ValueError) as info:
        attribute_text(model, NumberWords(), prompt, max_new_tokens=10)
    msg = str(info.value)
    assert f"input of 65 tokens is longer than the model's {POSITIONS} positions" in msg, msg
    assert "60 prompt + 5 generated" in msg


def test_context_check_reads_the_config_before_the_forward():
    """A declared window smaller than the position table is honoured without running the model."""
    model = NoCacheLM(V, 0)
    model.config = SimpleNamespace(vocab_size=V, max_position_embeddings=16)
    calls = Forwards(model)
    with pytest.raises(ValueError, match=r"needs 20 tokens .* context window is 16"):
        attribute(model, [1] * 15, [2] * 5)
    assert calls.count == 0
