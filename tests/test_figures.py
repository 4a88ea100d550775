"""report.figures: which figures one scoring gets, and their file names (nothing drawn)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pandas")

from probattr_monitor.engine.result import AttributionResult  # noqa: E402
from probattr_monitor.report import NoiseConfig, Report  # noqa: E402
from probattr_monitor.report.figures import noise_config_of, safe_file_stem, scoring_figures  # noqa: E402


def _result(n: int = 3) -> AttributionResult:
    z = np.zeros(n)
    k = np.zeros((n, 1), dtype=np.int64)
    return AttributionResult(
        positions=np.arange(1, n + 1), token_ids=np.arange(n), attribution=np.linspace(-1, 1, n),
        log_numerator=z, log_denominator=z, entropy_prompt=z, entropy_full=z, kl=z, log_p_response=0.0,
        num_candidates=4, top_prior_ids=k, top_prior_probs=z[:, None], top_posterior_ids=k,
        top_posterior_probs=z[:, None], prompt_ids=list(range(n + 1)), response_ids=[1],
    )


def _report(probe_ids, **meta) -> Report:
    return Report.from_results([(p, _result()) for p in probe_ids], step=5, n_boot=0, meta=meta)


@pytest.mark.parametrize(
    "text, stem",
    [("p1", "p1"), ("capital of France?", "capital_of_France"), ("../x", "x"), ("._", "probe"), ("", "probe"),
     ("a.b-c_d", "a.b-c_d"), ("été", "t")],
)
def test_safe_file_stem(text, stem):
    assert safe_file_stem(text) == stem


def test_scoring_figures_names_and_files():
    figures = scoring_figures(_report(["a b", "a_b", "c"]), html=True)
    assert list(figures) == ["entropy_vs_as", "kl_vs_as", "tokens/a b", "tokens_html/a b", "tokens/a_b",
                             "tokens_html/a_b", "tokens/c", "tokens_html/c"]
    files = [f.file_name for f in figures.values()]
    assert files == ["entropy_vs_as.png", "kl_vs_as.png", "tokens_a_b.png", "tokens_a_b.html", "tokens_a_b_.png",
                     "tokens_a_b_.html", "tokens_c.png", "tokens_c.html"]


def test_scoring_figures_limits_token_figures_and_skips_empty_reports():
    figures = scoring_figures(_report(["p1", "p2", "p3"]), max_token_plots=1)
    assert list(figures) == ["entropy_vs_as", "kl_vs_as", "tokens/p1"]
    assert list(scoring_figures(_report(["p1"]), max_token_plots=0)) == ["entropy_vs_as", "kl_vs_as"]
    assert scoring_figures(_report([])) == {}


def test_noise_config_of_reads_the_report_meta():
    cfg = NoiseConfig(entropy_threshold=2.5)
    assert noise_config_of(Report.from_results([("p", _result())], cfg=cfg, n_boot=0)) == cfg
    assert noise_config_of(_report(["p"], noise_config={"bogus": 1})) == NoiseConfig()
