"""The engine's shared helpers, one job each: context window, tokenization, module modes, tail sampling."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers.models import tiny_gpt2  # noqa: E402

from probattr_monitor import Budget, attribute  # noqa: E402
from probattr_monitor.engine.modes import preserved_module_modes, scoring_mode  # noqa: E402
from probattr_monitor.engine.result import SCORE_FIELDS  # noqa: E402
from probattr_monitor.engine.tail import STDERR_FIELDS, TailQuantities, priority_sample  # noqa: E402
from probattr_monitor.engine.validation import check_fits_context, context_limit  # noqa: E402
from probattr_monitor.monitor.guard import training_state_guard  # noqa: E402
from probattr_monitor.tokenization import encode_text, ids_from_encoding  # noqa: E402

ENGINE = Path(__file__).resolve().parents[1] / "probattr_monitor" / "engine"


# ---------------------------------------------------------------------- context window
def _with_window(n):
    return SimpleNamespace(config=SimpleNamespace(max_position_embeddings=n))


def test_context_window_check_names_what_needs_the_tokens():
    assert context_limit(_with_window(32)) == 32
    check_fits_context(_with_window(32), 32)  # fits exactly
    check_fits_context(SimpleNamespace(config=None), 10**9)  # no declared window: nothing to check
    with pytest.raises(ValueError, match=r"^probe 'p' needs 40 tokens \(prompt \+ response\) but the model's "
                                         r"context window is 32$"):
        check_fits_context(_with_window(32), 40, "probe 'p'", "prompt + response")
    with pytest.raises(ValueError, match=r"^prompt \+ response needs 33 tokens but the model's context window is 32$"):
        check_fits_context(_with_window(32), 33)


def test_attribute_checks_the_context_window_before_any_forward():
    model = tiny_gpt2(40, 0)
    limit = context_limit(model)
    with pytest.raises(ValueError, match="context window"):
        attribute(model, [0] + [1] * limit, [2])


# ---------------------------------------------------------------------- tokenization
class _Tok:
    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [len(w) for w in text.split()]}


class _EncodeOnly:
    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return np.array([[len(w) for w in text.split()]])


def test_encode_text_adds_no_special_tokens_and_flattens():
    assert encode_text(_Tok(), "ab cde") == [2, 3]
    assert encode_text(_EncodeOnly(), "ab cde f") == [2, 3, 1]


def test_ids_from_encoding_accepts_tokenizer_outputs_only():
    assert ids_from_encoding({"input_ids": torch.tensor([[4, 5]])}) == [4, 5]
    assert ids_from_encoding((np.int64(1), 2)) == [1, 2]
    assert ids_from_encoding([]) == []
    with pytest.raises(TypeError, match="mapping without 'input_ids'"):
        ids_from_encoding({"ids": [1]})
    with pytest.raises(TypeError, match="integer chat ids"):
        ids_from_encoding([1, "2"], what="chat ids")


# ---------------------------------------------------------------------- module modes
def _mixed_modes():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a submodule deliberately kept in eval mode
    return model


@pytest.mark.parametrize("guard", [preserved_module_modes, scoring_mode, training_state_guard])
def test_every_submodule_mode_is_restored(guard):
    model = _mixed_modes()
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError):
        with guard(model):
            model.eval()
            raise RuntimeError("scoring failed")
    assert [m.training for m in model.modules()] == before


def test_scoring_mode_is_eval_and_no_grad():
    model = _mixed_modes()
    with scoring_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


# ---------------------------------------------------------------------- tail
def test_tail_quantities_in_stderr_order():
    assert STDERR_FIELDS == SCORE_FIELDS
    q = TailQuantities(log_numerator=1.0, log_denominator=2.0, entropy_prompt=3.0, entropy_full=4.0, kl=5.0,
                       log_ratio=6.0)
    np.testing.assert_array_equal(np.array(q), [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(q.stderr_order(), [6, 1, 2, 3, 4, 5])


def test_priority_sample_draws_distinct_items_with_inclusion_probabilities():
    log_w = np.log(np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05]))
    ids = np.arange(6)
    keep, log_incl = priority_sample(log_w, ids, 3, np.random.default_rng(0))
    assert len(set(keep.tolist())) == 3 and np.all(log_incl <= 0)
    again = priority_sample(log_w, ids, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(keep, again[0])
    np.testing.assert_array_equal(log_incl, again[1])
    every, certain = priority_sample(log_w, ids, 6, np.random.default_rng(0))
    assert sorted(every.tolist()) == list(range(6)) and np.all(certain == 0)


def test_budget_info_records_the_universe_by_size():
    info = Budget(universe=[3, 1, 2]).to_info()
    assert info["universe_size"] == 3 and info["max_candidates"] == 32 and "universe" not in info


# ---------------------------------------------------------------------- structure
def test_engine_modules_import_no_private_name_and_stay_small():
    for path in sorted(ENGINE.glob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) < 500, path.name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("probattr_monitor"):
                assert not any(a.name.startswith("_") for a in node.names), (path.name, node.module)
            if isinstance(node, ast.FunctionDef):
                # no deferred imports back into the engine (the old exact <-> budgeted cycle)
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom):
                        assert not (inner.module or "").startswith("probattr_monitor.engine"), (path.name, node.name)
