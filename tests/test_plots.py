"""Figures: non-empty PNGs, HTML token views, atomic writes, clear errors."""

from __future__ import annotations

import html
import sys

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from helpers import results  # noqa: E402
from probattr_monitor.engine.result import AttributionResult  # noqa: E402
from probattr_monitor.report import Report  # noqa: E402
from probattr_monitor.report.metrics import compute_metrics  # noqa: E402
from probattr_monitor.report.noise import NoiseConfig  # noqa: E402
from probattr_monitor.report.html_views import tokens_html, write_tokens_html  # noqa: E402
from probattr_monitor.report.plots import (  # noqa: E402
    plot_entropy_vs_as,
    plot_kl_vs_as,
    plot_metrics_over_checkpoints,
    plot_tokens_by_as,
)
from probattr_monitor.report.table import build_token_table  # noqa: E402
from probattr_monitor.report.token_view import as_rgb  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NATS = NoiseConfig(entropy_mode="nats", entropy_threshold=2.0)
TOKENS = ["<s>", "What", " is", " the", " capital", " of", " France", "?", "\n", " <b>&", " answer", " briefly", "."]


def make_result(attribution, texts, is_special=None) -> AttributionResult:
    """A result with the token texts shown in the figures and entropies rising along the prompt."""
    a = np.asarray(attribution, dtype=np.float64)
    n = a.shape[0]
    hf = np.linspace(0.3, 5.0, n)
    return results.make_result(
        a, hf, hf * 0.8, np.abs(a) / 4, token_ids=np.arange(n), log_numerator=-a, log_denominator=np.zeros(n),
        log_p_response=-1.0, top_prior=([0], [1.0]), top_posterior=([0], [1.0]), response_ids=(1,),
        num_candidates=1000, texts=texts, is_special=is_special,
    )


@pytest.fixture(scope="module")
def table():
    a = [0.0, 0.4, -0.1, 0.05, 2.5, 0.1, 4.5, -0.7, 0.0, -3.5, 0.15, 0.0, 0.02]
    special = [True] + [False] * (len(TOKENS) - 1)
    rng = np.random.default_rng(0)
    other = make_result(rng.normal(0, 1.5, 40), [f" w{i}" for i in range(40)])
    return build_token_table([("capital", make_result(a, TOKENS, special)), ("other", other)], step=100, cfg=NATS)


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 2000


def test_tokens_png(tmp_path, table):
    out = plot_tokens_by_as(table, "capital", tmp_path / "tokens.png")
    assert out == tmp_path / "tokens.png"
    assert_png(out)


def test_tokens_png_wraps_long_prompts(tmp_path, table):
    long = make_result(np.linspace(-4, 4, 300), [f" token{i}" for i in range(300)])
    t = build_token_table([("long", long)], cfg=NATS)
    assert_png(plot_tokens_by_as(t, "long", tmp_path / "long.png", width_in=6))


def test_entropy_and_kl_figures(tmp_path, table):
    assert_png(plot_entropy_vs_as(table, tmp_path / "fig2.png", cfg=NATS))
    assert_png(plot_entropy_vs_as(table, tmp_path / "fig2_lin.png", xscale="linear", probe_ids=["capital"]))
    assert_png(plot_kl_vs_as(table, tmp_path / "fig4.png"))
    with pytest.raises(ValueError, match="xscale"):
        plot_kl_vs_as(table, tmp_path / "bad.png", xscale="log")


def test_figures_of_an_empty_table(tmp_path):
    empty = build_token_table([])
    assert_png(plot_entropy_vs_as(empty, tmp_path / "e2.png"))
    assert_png(plot_kl_vs_as(empty, tmp_path / "e4.png"))
    assert_png(plot_metrics_over_checkpoints([], tmp_path / "e.png"))


def test_metrics_over_checkpoints(tmp_path, table):
    hist = [(s, compute_metrics(table.sample(frac=0.8, random_state=s), NATS, n_boot=100)) for s in (10, 20, 30)]
    assert_png(plot_metrics_over_checkpoints(hist, tmp_path / "m.png"))
    named = [(f"ckpt-{s}", m) for s, m in hist]
    assert_png(plot_metrics_over_checkpoints(named, tmp_path / "m2.png", metric=["noise_rate", "mean_kl"]))
    with pytest.raises(ValueError, match="unknown metric"):
        plot_metrics_over_checkpoints(hist, tmp_path / "m3.png", metric="noise")


def test_other_formats_follow_the_suffix(tmp_path, table):
    out = plot_kl_vs_as(table, tmp_path / "fig4.svg")
    assert b"<svg" in out.read_bytes()[:2000]


def test_html_contains_every_token_with_tooltips(table):
    doc = tokens_html(table, "capital")
    for tok in TOKENS[1:]:
        shown = tok.replace("\n", "\u21b5")
        assert html.escape(shown) in doc, tok
    assert "<b>&" not in doc  # escaped
    assert doc.count('class="probattr-token"') == len(TOKENS)
    assert "AS = 4.5000" in doc and "H = " in doc and "H&#x27; = " in doc
    assert "noise token" in doc and "excluded" in doc
    assert "<br>" in doc  # the newline token breaks the line
    full = tokens_html(table, "capital", full_document=True)
    assert full.startswith("<!DOCTYPE html>") and full.rstrip().endswith("</html>")


def test_write_tokens_html(tmp_path, table):
    out = write_tokens_html(table, "capital", tmp_path / "t.html")
    assert " capital" in out.read_text(encoding="utf-8")


def test_unknown_probe(tmp_path, table):
    with pytest.raises(ValueError, match="not in the table"):
        tokens_html(table, "nope")
    with pytest.raises(ValueError, match="not in the table"):
        plot_tokens_by_as(table, "nope", tmp_path / "x.png")


def test_colours_diverge_around_zero():
    assert as_rgb(0.0, 3.0) == (247, 247, 247)
    neg, pos = as_rgb(-3.0, 3.0), as_rgb(9.0, 3.0)
    assert neg[2] > neg[0] and pos[0] > pos[2]  # blue / red, clipped at vmax


def test_failed_savefig_keeps_the_old_file(tmp_path, table, monkeypatch):
    path = plot_kl_vs_as(table, tmp_path / "fig4.png")
    before = path.read_bytes()
    from matplotlib.figure import Figure

    def broken(self, fname, **kwargs):
        with open(fname, "wb") as fh:
            fh.write(PNG_MAGIC + b"truncated")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot_kl_vs_as(table, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fig4.png"]


def test_no_pyplot_state_is_left_behind(tmp_path, table):
    plot_entropy_vs_as(table, tmp_path / "a.png")
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        assert plt.get_fignums() == []


def test_missing_matplotlib_names_the_extra(tmp_path, table, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"probattr-monitor\[plots\]"):
        plot_kl_vs_as(table, tmp_path / "x.png")
    assert " capital" in tokens_html(table, "capital")  # HTML needs no matplotlib


def test_report_tables_plot_after_loading(tmp_path, table):
    rep = Report(table=table, metrics=compute_metrics(table, NATS, n_boot=50), meta={"step": 100})
    rep.save(tmp_path / "rep", formats=("csv",))
    loaded = Report.load(tmp_path / "rep")
    assert_png(plot_tokens_by_as(loaded.table, "capital", tmp_path / "t.png"))
