"""W&B and file sinks: what they write, read back from a real offline W&B run directory and from disk."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers.lit import PROBES, word_tokenizer
from helpers.models import one_layer_gpt2
from helpers.probes import scoring_config, write_probes
from helpers.wandb_offline import load_wandb_table, read_wandb_records
from probattr_monitor.probes import load_probe_set
from probattr_monitor.report import Report
from probattr_monitor.scoring import score_probe_set
from probattr_monitor.sinks import FileSink, WandbSink, read_history
from probattr_monitor.sinks.files import step_dir_name
from probattr_monitor.sinks.wandb import table_keys

wandb = pytest.importorskip("wandb")

pytestmark = pytest.mark.usefixtures("offline_wandb")


@pytest.fixture(scope="module")
def reports(tmp_path_factory, one_thread):
    """Two reports of the tiny model (untrained and briefly trained), at steps 7 and 12."""
    tok = word_tokenizer()
    probes = load_probe_set(write_probes(tmp_path_factory.mktemp("probes") / "probes.jsonl", PROBES))
    model = one_layer_gpt2(len(tok), seed=0)
    first = score_probe_set(model, tok, probes, scoring_config(), step=7, meta={"errors": {"px": "ValueError: boom"}})
    second = score_probe_set(one_layer_gpt2(len(tok), seed=1), tok, probes, scoring_config(), step=12)
    return probes, first, second


@pytest.fixture
def offline_run(tmp_path, offline_wandb):
    """An offline run of its own for one test (finished after it by ``offline_wandb``)."""
    return wandb.init(mode="offline", dir=str(tmp_path), project="probattr-sinks", config={"lr": 0.1})


def run_dir(run) -> Path:
    return Path(run.dir).parent


def table_rows_equal(logged: list, frame) -> None:
    """A logged table's data equals the DataFrame (NaN == NaN)."""
    assert len(logged) == len(frame)
    for got, (_, want) in zip(logged, frame.iterrows()):
        for g, w in zip(got, want.tolist()):
            if isinstance(w, float) and math.isnan(w):
                assert g is None or (isinstance(g, float) and math.isnan(g))
            elif isinstance(w, float):
                assert g == pytest.approx(w, rel=1e-12, abs=0)
            else:
                assert g == w


def test_table_keys_split_past_the_cap():
    assert table_keys("probattr", 0, 10) == ["probattr/tokens"]
    assert table_keys("probattr", 10, 10) == ["probattr/tokens"]
    assert table_keys("pa", 11, 10) == ["pa/tokens_part1", "pa/tokens_part2"]


def test_wandb_sink_writes_tables_images_config_and_step_key(reports, offline_run):
    probes, first, second = reports
    sink = WandbSink(log_scalars=True, max_rows_per_table=5)  # run=None: the active wandb.run
    config = {"fingerprint": probes.fingerprint, "scoring": scoring_config().to_dict()}
    sink.setup(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a successful log warns about nothing
        sink.log(first, 7)
        sink.log(second, 12)
    assert sink.failures == [] and sink.logged_steps == [7, 12]
    directory = run_dir(offline_run)
    wandb.finish()

    rec = read_wandb_records(directory)
    assert rec["config"]["probattr"]["fingerprint"] == probes.fingerprint
    assert rec["config"]["probattr"]["scoring"]["max_new_tokens"] == 3
    assert rec["config"]["lr"] == 0.1  # the user's own config is left alone
    assert {"name": "probattr/step", "glob_name": "", "step_metric": "", "step_sync": False} in rec["metrics"]
    assert any(m["glob_name"] == "probattr/*" and m["step_metric"] == "probattr/step" for m in rec["metrics"])

    rows = [r for r in rec["history"] if "probattr/step" in r]
    assert [r["probattr/step"] for r in rows] == [7, 12]  # one wandb.log call per scoring
    assert [r["_step"] for r in rec["history"]] == list(range(len(rec["history"])))  # W&B's own counter
    for row, report in zip(rows, (first, second)):
        keys = table_keys("probattr", len(report.table), 5)
        assert len(keys) > 1  # split past the cap
        logged = []
        for key in keys:
            assert row[f"{key}/_type"] == "table-file"
            table = load_wandb_table(directory, row, key)
            assert table["columns"] == list(report.table.columns)
            assert len(table["data"]) <= 5
            logged += table["data"]
        table_rows_equal(logged, report.table)
        probes_table = load_wandb_table(directory, row, "probattr/probes")
        assert [r[0] for r in probes_table["data"]] == list(report.metrics.per_probe_frame()["probe_id"])
        for name in ("entropy_vs_as", "kl_vs_as", "tokens/p1", "tokens/p2", "tokens/p3"):
            assert row[f"probattr/plots/{name}/_type"] == "image-file"
            assert (directory / "files" / row[f"probattr/plots/{name}/path"]).exists()
        scalars = report.metrics.scalars(prefix="probattr/")
        assert row["probattr/noise_rate"] == pytest.approx(scalars["probattr/noise_rate"])
    assert rows[0]["probattr/errors/_type"] == "table-file"  # the first report recorded a failed probe
    assert "probattr/errors/_type" not in rows[1]


def test_wandb_sink_without_scalars_and_fresh_tables(reports, offline_run):
    _, first, _ = reports
    sink = WandbSink(offline_run, log_scalars=False, log_plots=False)
    a = sink.payload(first, 3)
    b = sink.payload(first, 3)
    assert a["probattr/tokens"] is not b["probattr/tokens"]  # never re-log a logged Table
    assert not any(k.startswith("probattr/noise_rate") for k in a)
    sink.log(first, 3)
    directory = run_dir(offline_run)
    wandb.finish()
    (row,) = [r for r in read_wandb_records(directory)["history"] if "probattr/step" in r]
    assert "probattr/noise_rate" not in row and not any(k.startswith("probattr/plots/") for k in row)


def test_wandb_sink_logs_figures_drawn_by_another_sink_only_when_it_has_them_all(reports, offline_run, tmp_path):
    from probattr_monitor.report.figures import render_plots

    _, first, _ = reports
    drawn = render_plots(first, tmp_path / "drawn", max_token_plots=1)
    sink = WandbSink(offline_run, log_scalars=False, max_token_plots=1)
    reused = sink.payload(first, 3, image_dir=tmp_path / "own", figures=drawn)
    assert {k: v for k, v in reused.items() if k.startswith("probattr/plots/")}.keys() == {
        f"probattr/plots/{n}" for n in drawn}
    own = [tmp_path / "own" / p.name for p in drawn.values()]
    assert not any(p.exists() for p in own)  # none drawn again (the history figures are the sink's own)
    missing = dict(drawn)
    missing.pop("kl_vs_as")
    again = sink.payload(first, 3, image_dir=tmp_path / "own", figures=missing)
    assert all(p.exists() for p in own)  # one missing: the sink draws them all itself
    assert again.keys() == reused.keys()


def test_wandb_sink_config_applied_to_a_run_started_later(reports, tmp_path, monkeypatch):
    _, first, _ = reports
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb.run is None
    sink = WandbSink(log_plots=False)
    sink.setup({"fingerprint": "abc"})
    sink.log(first, 1)  # no run: a silent no-op
    assert sink.logged_steps == [] and sink.failures == []
    run = wandb.init(mode="offline", dir=str(tmp_path), project="probattr-later")  # e.g. HF's WandbCallback
    sink.log(first, 2)
    directory = run_dir(run)
    wandb.finish()
    rec = read_wandb_records(directory)
    assert rec["config"]["probattr"] == {"fingerprint": "abc"}
    assert [r["probattr/step"] for r in rec["history"] if "probattr/step" in r] == [2]


def test_wandb_sink_failure_warns_and_records(reports, offline_run):
    _, first, _ = reports
    sink = WandbSink(offline_run, log_plots=False)
    offline_run.finish()  # logging to a finished run fails inside wandb
    with pytest.warns(RuntimeWarning, match="logging step 5 to W&B failed"):
        sink.log(first, 5)
    assert sink.failures and sink.failures[0]["step"] == 5 and sink.logged_steps == []


def test_wandb_sink_warns_at_the_first_failure_only_and_says_whether_it_logged(reports, offline_run):
    _, first, _ = reports
    sink = WandbSink(offline_run, log_plots=False)
    offline_run.finish()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert sink.log(first, 5) is False and sink.log(first, 6) is False
    assert [str(w.message).startswith("probattr: logging step 5 to W&B failed") for w in record] == [True]
    assert [f["step"] for f in sink.failures] == [5, 6]
    quiet = WandbSink(offline_run, log_plots=False, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quiet.log(first, 7) is False
    assert [f["step"] for f in quiet.failures] == [7]


@pytest.mark.parametrize("how", ["active-run", "explicit-run"])
def test_wandb_sink_treats_a_disabled_run_as_no_run(reports, offline_wandb, how):
    """W&B's disabled run keeps nothing: logging to it would lose the report, so the sink says it did not log."""
    from probattr_monitor.sinks.wandb import is_disabled_run

    _, first, _ = reports
    run = wandb.init(mode="disabled")
    assert is_disabled_run(run)
    sink = WandbSink(run if how == "explicit-run" else None, log_plots=False)
    sink.setup({"fingerprint": "abc"})
    assert sink.run is None
    assert sink.log(first, 1) is False
    assert sink.logged_steps == [] and sink.failures == []


def test_wandb_sink_log_failure_records_the_errors_and_no_scalar(reports, offline_run):
    _, first, _ = reports
    sink = WandbSink(offline_run, log_scalars=True, log_plots=False)
    assert sink.log_failure(4, {"p1": "ValueError: the model produced NaN logits"}) is True
    assert sink.log(first, 8, log_scalars=False) is True  # a partial scoring: tables, no scalars
    directory = run_dir(offline_run)
    wandb.finish()
    rows = [r for r in read_wandb_records(directory)["history"] if "probattr/step" in r]
    assert [r["probattr/step"] for r in rows] == [4, 8]
    assert not any(k.startswith("probattr/noise_rate") for r in rows for k in r)
    errors = load_wandb_table(directory, rows[0], "probattr/errors")
    assert errors["data"] == [["p1", "ValueError: the model produced NaN logits"]]
    assert "probattr/tokens/_type" not in rows[0] and rows[1]["probattr/tokens/_type"] == "table-file"


def test_wandb_sink_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_rows_per_table"):
        WandbSink(max_rows_per_table=0)
    with pytest.raises(ValueError, match="prefix"):
        WandbSink(prefix="a/b")
    with pytest.raises(TypeError, match="config must be a dict"):
        WandbSink().setup(["not", "a", "dict"])


def test_file_sink_writes_reports_plots_and_history(reports, tmp_path):
    probes, first, second = reports
    sink = FileSink(tmp_path / "probattr")
    sink.setup({"fingerprint": probes.fingerprint, "scoring": scoring_config().to_dict()})
    assert json.loads((tmp_path / "probattr" / "config.json").read_text())["fingerprint"] == probes.fingerprint
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out7 = sink.log(first, 7)
        out12 = sink.log(second, 12)
    assert out7 == tmp_path / "probattr" / step_dir_name(7) and out7.name == "step-00000007"
    for out, report in ((out7, first), (out12, second)):
        assert Report.load(out, "csv") == report
        assert Report.load(out, "json") == report
        names = {p.name for p in out.iterdir()}
        assert {"entropy_vs_as.png", "kl_vs_as.png", "tokens_p1.png", "tokens_p1.html"} <= names
    history = read_history(tmp_path / "probattr")
    assert [h["step"] for h in history] == [7, 12]
    assert history[0]["noise_rate"] == pytest.approx(first.metrics["noise_rate"].value)
    assert history[0]["n_errors"] == 1 and history[1]["n_errors"] == 0
    # the same step logged again (e.g. after resuming from an earlier checkpoint) replaces its line
    sink.log(second, 7)
    history = read_history(tmp_path / "probattr")
    assert [h["step"] for h in history] == [12, 7]
    assert history[1]["noise_rate"] == pytest.approx(second.metrics["noise_rate"].value)
    assert sink.failures == []


def test_file_sink_failure_warns_and_never_raises(reports, tmp_path):
    _, first, _ = reports
    sink = FileSink(tmp_path / "probattr", plots=False)
    sink.setup({})
    (tmp_path / "probattr" / step_dir_name(3)).write_text("a file where the report directory should go")
    with pytest.warns(RuntimeWarning, match="saving the report"):
        assert sink.log(first, 3) is None
    assert sink.failures and sink.failures[0]["step"] == 3
    assert read_history(tmp_path / "probattr") == []
    assert sink.log(first, 4) is not None  # the next scoring is written normally


def test_file_sink_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="unknown report formats"):
        FileSink(tmp_path, formats=("csv", "xml"))
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(OSError):
        FileSink(blocker / "sub").setup({})


def test_plots_survive_nan_attributions(reports, tmp_path):
    """A report with non-finite values still logs (NaN cells, no crash)."""
    _, first, _ = reports
    table = first.table.copy()
    table.loc[0, "attribution"] = np.nan
    report = Report(table=table, metrics=first.metrics, meta=first.meta)
    sink = FileSink(tmp_path / "nan")
    assert sink.log(report, 1) is not None and sink.failures == []
