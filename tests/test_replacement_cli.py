"""``probattr score --replacement-entropy`` end to end on a tiny GPT-2, and the ScoringConfig opt-in.

The report's replacement columns must equal a direct call of
:func:`probattr_monitor.engine.replacement.replacement_entropy` on the rendered
prompt, the cap must be recorded, the paper's Fig. 6 figures written, and the
opt-in metrics pooled from the table.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.models import checkpoint_gpt2
from helpers.probes import write_probes
from helpers.word_tokenizers import trained_word_tokenizer
from probattr_monitor.cli import main
from probattr_monitor.engine.replacement import replacement_entropy
from probattr_monitor.models import load_model_and_tokenizer
from probattr_monitor.probes import load_probe_set, render
from probattr_monitor.report import Report
from probattr_monitor.report.definitions import OPTIONAL_METRIC_NAMES, optional_metric_value
from probattr_monitor.report.table import REPLACEMENT_COLUMNS
from probattr_monitor.scoring import ScoringConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PROBES = ({"id": "tim", "prompt": "Tim was nervous about his talk"},
          {"id": "surfer", "prompt": "The surfer checked the weather"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("repl")
    tok = trained_word_tokenizer([p.prompt for p in load_probe_set("paper")], ["<eos>", "<unk>"],
                                 eos_token="<eos>", unk_token="<unk>")
    checkpoint_gpt2(len(tok), 1).save_pretrained(root / "ckpt")
    tok.save_pretrained(root / "ckpt")
    write_probes(root / "probes.jsonl", PROBES)
    return root


@pytest.fixture(scope="module")
def scored(model_dir):
    out = model_dir / "run"
    code = main(["score", "--model", str(model_dir / "ckpt"), "--probes", str(model_dir / "probes.jsonl"),
                 "--candidates", "all", "--max-new-tokens", "3", "--num-samples", "3", "--n-boot", "50",
                 "--replacement-entropy", "--replacement-max-candidates", "4", "--out", str(out), "-q"])
    assert code == 0
    return out


def test_cli_writes_replacement_columns_equal_to_the_engine(scored, model_dir):
    report = Report.load(scored)
    table = report.table
    assert list(table.columns[-len(REPLACEMENT_COLUMNS):]) == list(REPLACEMENT_COLUMNS)
    model, tok = load_model_and_tokenizer(str(model_dir / "ckpt"))
    for probe in load_probe_set(str(model_dir / "probes.jsonl")):
        rows = table[table["probe_id"] == probe.id]
        ids = render(probe, tok).ids
        direct = replacement_entropy(model, ids, positions=rows["position"].tolist(), max_candidates=4,
                                     max_new_tokens=3, num_samples=3, top_p=0.9,
                                     eos_token_id=tok.eos_token_id, seed=0)
        np.testing.assert_array_equal(rows["replacement_candidates"].to_numpy(), direct.num_candidates)
        for d, tag in (("greedy", "greedy"), ("top-p", "top_p")):
            np.testing.assert_array_equal(rows[f"replacement_entropy_{tag}"].to_numpy(), direct.entropy[d])
            np.testing.assert_array_equal(rows[f"original_share_{tag}"].to_numpy(), direct.original_share[d])
    assert (table["replacement_candidates"] <= 4).all()
    assert (table["replacement_candidates"] >= 1).all()


def test_cli_records_the_cap_and_cost_and_writes_fig6(scored):
    report = Report.load(scored)
    rep = report.meta["replacement"]
    assert rep["max_candidates"] == 4 and rep["mass"] == 0.9
    assert rep["generated_tokens"] > 0 and rep["token_forwards"] > rep["generated_tokens"]
    assert report.meta["scoring"]["replacement"] == {"max_candidates": 4, "mass": 0.9}
    for name in ("replacement_entropy_vs_as.png", "original_share_vs_as.png"):
        assert (scored / name).stat().st_size > 1000, name
    t = report.table
    eligible = ~t["excluded"].to_numpy(bool)
    expected = t["replacement_entropy_greedy"].to_numpy()[eligible].mean()
    assert optional_metric_value(report.metrics.per_probe, "mean_replacement_entropy") == pytest.approx(expected)
    expected = t["original_share_greedy"].to_numpy()[eligible].mean()
    assert optional_metric_value(report.metrics.per_probe, "mean_original_share") == pytest.approx(expected)


def test_cli_prints_the_replacement_summary(model_dir, capsys, tmp_path):
    code = main(["score", "--model", str(model_dir / "ckpt"), "--probes", str(model_dir / "probes.jsonl"),
                 "--candidates", "5,9", "--max-new-tokens", "2", "--num-samples", "2", "--limit-probes", "1",
                 "--n-boot", "0", "--no-plots", "--replacement-entropy", "--replacement-max-candidates", "2",
                 "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "mean_replacement_entropy =" in out and "cap 2 candidates" in out


def test_without_the_flag_nothing_changes(model_dir, tmp_path):
    code = main(["score", "--model", str(model_dir / "ckpt"), "--probes", str(model_dir / "probes.jsonl"),
                 "--candidates", "5,9", "--max-new-tokens", "2", "--limit-probes", "1", "--n-boot", "0",
                 "--no-plots", "--out", str(tmp_path / "r"), "-q"])
    assert code == 0
    report = Report.load(tmp_path / "r")
    assert not set(REPLACEMENT_COLUMNS) & set(report.table.columns)
    assert "replacement" not in report.meta and "replacement" not in report.meta["scoring"]
    for name in OPTIONAL_METRIC_NAMES:
        assert math.isnan(optional_metric_value(report.metrics.per_probe, name))


def test_bad_settings_fail_clearly(model_dir, capsys, tmp_path):
    assert ScoringConfig().replacement_entropy is False
    with pytest.raises(TypeError, match="replacement_entropy must be a bool"):
        ScoringConfig(replacement_entropy="yes")
    with pytest.raises(ValueError, match="replacement_max_candidates must be a positive integer"):
        ScoringConfig(replacement_max_candidates=0)
    with pytest.raises(ValueError, match=r"replacement_mass must be in \(0, 1\]"):
        ScoringConfig(replacement_mass=0)
    code = main(["score", "--model", "m", "--out", str(tmp_path / "x"), "--replacement-max-candidates", "0"])
    assert code == 2
    with pytest.raises(ValueError, match="unknown opt-in metric"):
        optional_metric_value([], "noise_rate")


def test_monitor_opt_in_adds_the_columns_and_its_cost(model_dir):
    """The monitor's setting is ScoringConfig(replacement_entropy=True); off by default it costs nothing."""
    from probattr_monitor import ProbAttrMonitor

    model, tok = load_model_and_tokenizer(str(model_dir / "ckpt"))
    probes = load_probe_set(str(model_dir / "probes.jsonl"))
    base = ScoringConfig(candidates="all", max_new_tokens=2, num_samples=2, n_boot=0)
    plain = ProbAttrMonitor(probes, tokenizer=tok, scoring=base).run(model, step=1)
    opted = ProbAttrMonitor(probes, tokenizer=tok, scoring=ScoringConfig(
        candidates="all", max_new_tokens=2, num_samples=2, n_boot=0, replacement_entropy=True,
        replacement_max_candidates=3)).run(model, step=1)
    assert not set(REPLACEMENT_COLUMNS) & set(plain.table.columns)
    assert set(REPLACEMENT_COLUMNS) <= set(opted.table.columns)
    # scoring itself is unchanged; the replacement run's cost is recorded beside the engine's
    np.testing.assert_array_equal(plain.table["attribution"].to_numpy(), opted.table["attribution"].to_numpy())
    assert opted.meta["token_forwards"] == plain.meta["token_forwards"]
    rep = opted.meta["replacement"]
    n_pos = len(opted.table)
    rows_greedy = 2 + int(opted.table["replacement_candidates"].sum())  # + one reference per probe
    # every batch runs 1 or 2 steps; its top-p twin has num_samples (2) rows per greedy row
    assert rows_greedy * (1 + 2) <= rep["generated_tokens"] <= 2 * rows_greedy * (1 + 2)
    assert rep["max_candidates"] == 3 and (opted.table["replacement_candidates"] <= 3).all() and n_pos > 0
