"""Metric definitions on hand-built score tables with known answers."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from helpers.results import make_result  # noqa: E402
from probattr_monitor.engine.result import SCORE_FIELDS, AttributionResult  # noqa: E402
from probattr_monitor.report.compare import compare_metrics  # noqa: E402
from probattr_monitor.report.definitions import METRIC_NAMES  # noqa: E402
from probattr_monitor.report.metrics import compute_metrics, metrics_from_probes  # noqa: E402
from probattr_monitor.report.noise import (  # noqa: E402
    AS_CLASSES,
    DEFAULT_ENTROPY_MODE,
    DEFAULT_ENTROPY_THRESHOLD,
    UNDEFINED_CLASS,
    NoiseConfig,
    classify,
    noise_flags,
    normalized_entropy,
)
from probattr_monitor.report.table import build_token_table, reclassify, table_columns, token_columns  # noqa: E402
from probattr_monitor.report.values import MetricValue, SetMetrics  # noqa: E402

NATS = NoiseConfig(entropy_mode="nats", entropy_threshold=2.0)


def four_probes():
    """4 probes with crafted AS/H' values (see test_known_answers for the answers)."""
    a = make_result([0.0, 0.1, -0.5, 4.0], [3.0, 1.0, 2.5, 0.5], entropy_prompt=[1.0, 2.0, 3.0, 4.0], kl=[0.1, 0.2, 0.3, 0.4])
    b = make_result([0.2, -0.2, 1.0, 0.0], [2.0, 2.0, 5.0, 9.0], is_special=[False, False, False, True])
    c = make_result([3.0, 0.05], [4.0, 4.0])
    d = make_result([0.0, 0.0], [9.0, 9.0], is_special=[True, True])
    scored = [("A", a), ("B", b), ("C", c), ("D", d)]
    masks = {"C": np.array([False, True])}
    return scored, masks


# ------------------------------------------------------------------ config


def test_default_config_uses_the_named_constants():
    cfg = NoiseConfig()
    assert cfg.entropy_threshold == DEFAULT_ENTROPY_THRESHOLD
    assert cfg.entropy_mode == DEFAULT_ENTROPY_MODE == "nats"
    assert cfg.entropy_threshold == 1.0
    assert (cfg.negative_below, cfg.near_zero_max, cfg.high_above) == (-0.2, 0.2, 3.0)
    assert NoiseConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"negative_below": 0.3}, "negative_below must be <= near_zero_max"),
        ({"near_zero_max": 5.0}, "near_zero_max must be <= high_above"),
        ({"entropy_threshold": -0.1}, "entropy_threshold must be >= 0"),
        ({"entropy_mode": "bits"}, "entropy_mode must be one of"),
        ({"high_above": float("nan")}, "must be finite"),
        ({"near_zero_max": "0.2"}, "must be a real number"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseConfig(**kwargs)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        NoiseConfig.from_dict({"threshold": 1.0})


# ---------------------------------------------------------------- per token


def test_classify_boundaries_are_inclusive_as_in_the_paper():
    eps = 1e-9
    a = [-0.2 - eps, -0.2, 0.0, 0.2, 0.2 + eps, 3.0, 3.0 + eps, float("nan"), float("inf"), -float("inf")]
    got = classify(a).tolist()
    assert got == [
        "negative",
        "near_zero",
        "near_zero",
        "near_zero",
        "positive",
        "positive",
        "high",
        UNDEFINED_CLASS,
        UNDEFINED_CLASS,
        UNDEFINED_CLASS,
    ]


def test_classify_custom_boundaries():
    cfg = NoiseConfig(negative_below=-1.0, near_zero_max=0.5, high_above=2.0)
    assert classify([-1.5, -1.0, 0.5, 0.6, 2.0, 2.1], cfg).tolist() == [
        "negative",
        "near_zero",
        "near_zero",
        "positive",
        "positive",
        "high",
    ]


def test_noise_flags_nats_mode_threshold_is_inclusive():
    a = [0.0, 0.0, 0.0, 0.5, -0.2, float("nan"), 0.0]
    h = [2.0, 1.999, 7.0, 9.0, 2.0, 9.0, float("nan")]
    assert noise_flags(a, h, NATS).tolist() == [True, False, True, False, True, False, False]


def test_noise_flags_normalized_mode_divides_by_log_num_candidates():
    cfg = NoiseConfig(entropy_mode="normalized", entropy_threshold=0.5)
    k = np.array([100, 100, 50000, 50000])
    h = np.array([0.5 * math.log(100), 0.49 * math.log(100), 0.5 * math.log(50000), 0.5 * math.log(100)])
    assert noise_flags([0.0] * 4, h, cfg, k).tolist() == [True, False, True, False]
    # the same H' in nats is not a noise token under a larger vocabulary
    assert noise_flags([0.0], [3.0], cfg, 100).tolist() == [True]
    assert noise_flags([0.0], [3.0], cfg, 10**6).tolist() == [False]


def test_noise_flags_normalized_needs_num_candidates():
    with pytest.raises(ValueError, match="num_candidates is required"):
        noise_flags([0.0], [1.0], NoiseConfig(entropy_mode="normalized", entropy_threshold=0.3))
    with pytest.raises(ValueError, match="differ in shape"):
        noise_flags([0.0, 1.0], [1.0], NATS)


def test_normalized_entropy():
    out = normalized_entropy([math.log(8), 0.0, float("nan")], [8, 1, 8])
    assert out[0] == pytest.approx(1.0)
    assert out[1] == 0.0
    assert math.isnan(out[2])
    with pytest.raises(ValueError, match=">= 1"):
        normalized_entropy([1.0], [0])


# ------------------------------------------------------------------ table


def test_token_table_columns_and_dtypes():
    scored, masks = four_probes()
    t = build_token_table(scored, step=12, cfg=NATS, template_masks=masks)
    assert list(t.columns) == table_columns()
    assert len(t) == 12
    assert t["probe_id"].tolist() == ["A"] * 4 + ["B"] * 4 + ["C"] * 2 + ["D"] * 2
    assert (t["step"] == 12).all() and t["step"].dtype == np.int64
    assert t["position"].tolist()[:4] == [1, 2, 3, 4]
    assert t["excluded"].tolist() == [False] * 7 + [True, False, True, True, True]
    assert t["is_special"].tolist() == [False] * 7 + [True, False, False, True, True]
    assert t["as_class"].tolist()[:4] == ["near_zero", "near_zero", "negative", "high"]
    assert t["noise"].tolist()[:8] == [True, False, False, False, True, True, False, False]
    for name in SCORE_FIELDS:
        assert t[name].dtype == np.float64
    assert t["num_candidates"].tolist() == [100] * 12
    assert json.loads(t["top_prior"][0]) == [[0, None, 0.5], [1, None, 0.1]]
    assert t.index.equals(pd.RangeIndex(12))


def test_token_table_texts_decode_and_stderr_columns():
    r1 = make_result([0.0, 1.0], texts=[" a", "b"], stderr={"attribution": np.array([0.1, 0.2])})
    r2 = make_result([0.5], stderr={"kl": np.array([0.3]), "log_p_response": np.array([1.0])})
    t = build_token_table([("p", r1), ("q", r2)], step="ckpt-3", cfg=NATS, decode=lambda i: f"<{i}>")
    assert t["token_text"].tolist() == [" a", "b", "<10>"]  # result texts win over decode
    assert list(t.columns) == table_columns(["attribution", "kl"])
    np.testing.assert_array_equal(t["attribution_se"].to_numpy(), [0.1, 0.2, np.nan])
    np.testing.assert_array_equal(t["kl_se"].to_numpy(), [np.nan, np.nan, 0.3])
    assert json.loads(t["top_posterior"][0]) == [[1, "<1>", 0.6], [0, "<0>", 0.2]]
    assert (t["step"] == "ckpt-3").all()
    t2 = build_token_table([("q", r2)])
    assert t2["token_text"].tolist() == [""] and t2["step"].isna().all()


def test_template_mask_may_cover_the_whole_prompt():
    r = make_result([0.0, 0.0, 0.0])  # positions 1..3 of a 4-token prompt
    per_prompt = np.array([True, True, False, True])  # index 0 is BOS (not scored)
    t = build_token_table([("p", r)], template_masks={"p": per_prompt}, cfg=NATS)
    assert t["excluded"].tolist() == [True, False, True]
    with pytest.raises(ValueError, match="expected 3 .* or 4"):
        build_token_table([("p", r)], template_masks={"p": np.array([True, False])})


@pytest.mark.parametrize(
    "scored, step, exc, match",
    [
        ([("a", make_result([0.0])), ("a", make_result([0.0]))], None, ValueError, "duplicate probe id"),
        ([(3, make_result([0.0]))], None, TypeError, "probe id must be a str"),
        ([("a", make_result([0.0]))], True, TypeError, "step must be"),
        ([("a", make_result([0.0]))], 1.5, TypeError, "step must be"),
    ],
)
def test_token_table_rejects_bad_input(scored, step, exc, match):
    with pytest.raises(exc, match=match):
        build_token_table(scored, step=step)


def test_token_table_rejects_misaligned_arrays():
    good = make_result([0.0, 0.1])
    bad = AttributionResult(**{**good.__dict__, "kl": np.zeros(3)})
    with pytest.raises(ValueError, match="kl has shape"):
        build_token_table([("p", bad)])


def test_reclassify_recomputes_classes_and_noise():
    scored, masks = four_probes()
    t = build_token_table(scored, cfg=NATS, template_masks=masks)
    t2 = reclassify(t, NoiseConfig(entropy_mode="nats", entropy_threshold=100.0, near_zero_max=0.5))
    assert not t2["noise"].any()
    assert t2["as_class"].tolist()[6] == "positive"  # AS=1.0 stays positive
    assert t["noise"].any()  # the original is untouched


# ------------------------------------------------------------ known answers


def test_known_answers_on_four_probes():
    scored, masks = four_probes()
    t = build_token_table(scored, cfg=NATS, template_masks=masks)
    m = compute_metrics(t, NATS, n_boot=200, seed=0)
    # eligible: A 4, B 3 (1 special), C 1 (1 template), D 0 (2 special) -> 8
    assert m.n_tokens == 8 and m.n_excluded == 4 and m.n_probes == 4 and m.n_probes_empty == 1
    assert m.class_counts == {"negative": 1, "near_zero": 4, "positive": 2, "high": 1}
    assert m.noise_rate.value == pytest.approx(3 / 8)  # A:0.0/H'3, B:0.2/H'2, B:-0.2/H'2
    assert m.near_zero_rate.value == pytest.approx(4 / 8)
    assert m.negative_rate.value == pytest.approx(1 / 8)
    assert m.positive_rate.value == pytest.approx(2 / 8)  # AS=1.0 and AS=3.0 (inclusive)
    assert m.high_rate.value == pytest.approx(1 / 8)
    assert m.mean_abs_as.value == pytest.approx((0 + 0.1 + 0.5 + 4 + 0.2 + 0.2 + 1 + 3) / 8)
    assert m.mean_entropy_full.value == pytest.approx((3 + 1 + 2.5 + 0.5 + 2 + 2 + 5 + 4) / 8)
    assert m.mean_entropy_prompt.value == pytest.approx((1 + 2 + 3 + 4 + 1 + 1 + 1 + 1) / 8)
    assert m.mean_kl.value == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.4) / 8)
    assert m.mean_entropy_full_near_zero.value == pytest.approx((3 + 1 + 2 + 2) / 4)
    # per probe
    assert m.probe("A").value("noise_rate") == pytest.approx(0.25)
    assert m.probe("B").n_noise == 2 and m.probe("B").n_excluded == 1
    assert m.probe("C").class_counts == {"negative": 0, "near_zero": 0, "positive": 1, "high": 0}
    assert math.isnan(m.probe("D").value("noise_rate"))
    assert any("'D'" in n for n in m.notes)
    frame = m.per_probe_frame()
    assert frame["probe_id"].tolist() == ["A", "B", "C", "D"]
    assert frame["noise_rate"].tolist()[:3] == pytest.approx([0.25, 2 / 3, 0.0])


def test_special_and_template_tokens_are_what_is_excluded():
    scored, masks = four_probes()
    with_masks = compute_metrics(build_token_table(scored, cfg=NATS, template_masks=masks), NATS, n_boot=0)
    without = compute_metrics(build_token_table(scored, cfg=NATS), NATS, n_boot=0)
    assert without.n_tokens == with_masks.n_tokens + 1  # the template token of C
    assert without.class_counts["near_zero"] == 5
    # ignoring the excluded column altogether counts every row
    t = build_token_table(scored, cfg=NATS, template_masks=masks).drop(columns=["excluded", "is_special"])
    assert compute_metrics(t, NATS, n_boot=0).n_tokens == 12


def test_rates_are_token_pooled_not_averaged_over_probes():
    one = make_result([0.0], [9.0])  # 1 noise token of 1
    three = make_result([1.0, 1.0, 1.0], [9.0, 9.0, 9.0])  # 0 of 3
    m = compute_metrics(build_token_table([("a", one), ("b", three)], cfg=NATS), NATS, n_boot=0)
    assert m.noise_rate.value == pytest.approx(0.25)  # not (1 + 0) / 2


def test_normalized_mode_in_compute_metrics():
    cfg = NoiseConfig(entropy_mode="normalized", entropy_threshold=0.5)
    small = make_result([0.0, 0.0], [0.6 * math.log(10), 0.4 * math.log(10)], num_candidates=10)
    large = make_result([0.0, 0.0], [0.6 * math.log(10), 0.6 * math.log(1000)], num_candidates=1000)
    t = build_token_table([("s", small), ("l", large)], cfg=cfg)
    assert t["noise"].tolist() == [True, False, False, True]
    m = compute_metrics(t, cfg, n_boot=0)
    assert m.noise_rate.value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="num_candidates"):
        compute_metrics(t.drop(columns=["num_candidates"]), cfg)


def test_metrics_recompute_classes_from_cfg():
    scored, masks = four_probes()
    t = build_token_table(scored, cfg=NATS, template_masks=masks)
    strict = NoiseConfig(entropy_mode="nats", entropy_threshold=2.5)
    assert compute_metrics(t, strict, n_boot=0).noise_rate.value == pytest.approx(1 / 8)
    assert compute_metrics(t, NATS, n_boot=0).noise_rate.value == pytest.approx(3 / 8)


def test_mapping_of_arrays_works_without_pandas_frames():
    scored, masks = four_probes()
    cols = token_columns(scored, cfg=NATS, template_masks=masks)
    frame = build_token_table(scored, cfg=NATS, template_masks=masks)
    assert compute_metrics(cols, NATS, n_boot=100) == compute_metrics(frame, NATS, n_boot=100)


def test_non_finite_attribution_is_undefined_not_counted():
    r = make_result([0.0, float("nan"), float("inf"), 1.0], [9.0, 9.0, 9.0, 1.0], entropy_prompt=[1.0, float("nan"), 1.0, 3.0])
    t = build_token_table([("p", r)], cfg=NATS)
    assert t["as_class"].tolist() == ["near_zero", UNDEFINED_CLASS, UNDEFINED_CLASS, "positive"]
    m = compute_metrics(t, NATS, n_boot=0)
    assert m.n_tokens == 2 and m.n_undefined == 2
    assert m.noise_rate.value == pytest.approx(0.5)
    assert m.mean_entropy_prompt.value == pytest.approx(2.0)


# ------------------------------------------------------------ empty / degenerate


def test_empty_table_gives_nan_with_reasons():
    t = build_token_table([], step=1)
    assert len(t) == 0 and list(t.columns) == table_columns()
    m = compute_metrics(t)
    assert m.n_probes == 0 and m.n_tokens == 0
    for name in METRIC_NAMES:
        mv = m[name]
        assert math.isnan(mv.value) and math.isnan(mv.low) and math.isnan(mv.high)
        assert mv.note.startswith("undefined")
    assert any("empty probe set" in n for n in m.notes)
    s = m.scalars()
    assert math.isnan(s["probattr/noise_rate"]) and s["probattr/n_tokens"] == 0.0


def test_all_tokens_excluded():
    r = make_result([0.0, 0.0], [9.0, 9.0], is_special=[True, True])
    m = compute_metrics(build_token_table([("p", r), ("q", r)], cfg=NATS), NATS)
    assert m.n_tokens == 0 and m.n_excluded == 4 and m.n_probes_empty == 2
    assert math.isnan(m.noise_rate.value)
    assert "no eligible tokens" in m.noise_rate.note
    assert any("no probe has an eligible token" in n for n in m.notes)


def test_metric_without_near_zero_tokens_is_nan_with_reason():
    r = make_result([1.0, 2.0], [9.0, 9.0])
    m = compute_metrics(build_token_table([("p", r), ("q", r)], cfg=NATS), NATS, n_boot=50)
    assert m.noise_rate.value == 0.0
    assert math.isnan(m.mean_entropy_full_near_zero.value)
    assert "no near-zero token" in m.mean_entropy_full_near_zero.note


def test_interval_from_partial_resamples_is_noted():
    near = make_result([0.0], [9.0])
    far = make_result([1.0, 1.0], [9.0, 9.0])
    scored = [("n", near)] + [(f"f{i}", far) for i in range(3)]
    m = compute_metrics(build_token_table(scored, cfg=NATS), NATS, n_boot=500, seed=1)
    mv = m.mean_entropy_full_near_zero
    assert mv.value == 9.0 and mv.low == 9.0 and mv.high == 9.0
    assert "resamples" in mv.note


# ---------------------------------------------------------------- bootstrap


def random_scored(n_probes, tokens=12, seed=0):
    rng = np.random.default_rng(seed)
    own = np.random.default_rng([seed, 1])  # the prompt tokens' own scores, drawn apart from the rest
    out = []
    for i in range(n_probes):
        a = rng.normal(0, 0.6, tokens)
        h = rng.uniform(0, 4, tokens)
        out.append((f"p{i}", make_result(a, h, entropy_prompt=rng.uniform(0, 4, tokens), kl=rng.uniform(0, 1, tokens),
                                         token_log_joint=-1.0 - own.uniform(0, 4, tokens),
                                         token_log_prob=-own.uniform(0, 4, tokens))))
    return out


def test_bootstrap_is_seeded_and_deterministic():
    t = build_token_table(random_scored(30), cfg=NATS)
    m1 = compute_metrics(t, NATS, n_boot=300, seed=7)
    m2 = compute_metrics(t, NATS, n_boot=300, seed=7)
    m3 = compute_metrics(t, NATS, n_boot=300, seed=8)
    assert m1 == m2
    assert m1.noise_rate.value == m3.noise_rate.value
    assert (m1.noise_rate.low, m1.noise_rate.high) != (m3.noise_rate.low, m3.noise_rate.high)


def test_interval_contains_the_point_estimate():
    t = build_token_table(random_scored(40), cfg=NATS)
    m = compute_metrics(t, NATS, n_boot=1000, seed=0, ci=0.95)
    for name in METRIC_NAMES:
        mv = m[name]
        assert mv.contains(mv.value), name
        if name != "high_rate":  # no AS above 3 in this data: [0, 0]
            assert mv.low < mv.high, name
    narrow = compute_metrics(t, NATS, n_boot=1000, seed=0, ci=0.5)
    assert narrow.noise_rate.width < m.noise_rate.width


def test_interval_narrows_with_more_probes():
    few = compute_metrics(build_token_table(random_scored(8, seed=1), cfg=NATS), NATS, n_boot=1000)
    many = compute_metrics(build_token_table(random_scored(200, seed=1), cfg=NATS), NATS, n_boot=1000)
    for name in ("noise_rate", "near_zero_rate", "mean_entropy_full", "mean_abs_as"):
        assert many[name].width < 0.6 * few[name].width, name


def test_interval_is_degenerate_when_all_probes_are_identical():
    r = make_result([0.0, 0.1, 1.0, -1.0], [3.0, 1.0, 2.0, 0.5], kl=[0.1, 0.7, 0.2, 0.3])
    m = compute_metrics(build_token_table([(f"p{i}", r) for i in range(20)], cfg=NATS), NATS, n_boot=500)
    for name in METRIC_NAMES:
        mv = m[name]
        assert mv.low == pytest.approx(mv.value, abs=1e-12) and mv.high == pytest.approx(mv.value, abs=1e-12), name
    assert m.noise_rate.value == 0.25


def test_single_probe_interval_is_degenerate_and_noted():
    m = compute_metrics(build_token_table(random_scored(1), cfg=NATS), NATS)
    assert m.noise_rate.low == m.noise_rate.high == m.noise_rate.value
    assert any("single probe" in n for n in m.notes)


def test_bootstrap_can_be_disabled_and_validates_settings():
    t = build_token_table(random_scored(5), cfg=NATS)
    m = compute_metrics(t, NATS, n_boot=0)
    assert not math.isnan(m.noise_rate.value) and math.isnan(m.noise_rate.low)
    assert any("n_boot=0" in n for n in m.notes)
    with pytest.raises(ValueError, match="ci must be in"):
        compute_metrics(t, NATS, ci=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        compute_metrics(t, NATS, n_boot=-1)
    with pytest.raises(ValueError, match="no column 'kl'"):
        compute_metrics(t.drop(columns=["kl"]), NATS)


def test_bootstrap_is_fast():
    t = build_token_table(random_scored(40, tokens=30), cfg=NATS)
    compute_metrics(t, NATS, n_boot=1000)  # warm-up
    start = time.perf_counter()
    compute_metrics(t, NATS, n_boot=1000)
    assert time.perf_counter() - start < 0.25


# ------------------------------------------------------------ export/merge


def test_scalars_for_loggers():
    t = build_token_table(random_scored(10), cfg=NATS)
    m = compute_metrics(t, NATS, n_boot=100)
    s = m.scalars()
    assert s["probattr/noise_rate"] == m.noise_rate.value
    assert s["probattr/noise_rate_ci_low"] == m.noise_rate.low
    assert s["probattr/noise_rate_ci_high"] == m.noise_rate.high
    assert s["probattr/n_tokens"] == 120.0 and s["probattr/n_probes"] == 10.0
    assert sum(s[f"probattr/count_{c}"] for c in AS_CLASSES) == 120.0
    assert all(isinstance(v, float) for v in s.values())
    assert set(m.scalars(prefix="", include_ci=False, include_counts=False)) == set(METRIC_NAMES)


def test_set_metrics_dict_round_trip_with_nan():
    t = build_token_table(random_scored(6) + [("empty", make_result([0.0], is_special=[True]))], cfg=NATS)
    m = compute_metrics(t, NATS, n_boot=50)
    back = SetMetrics.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m
    assert MetricValue(float("nan")) == MetricValue(float("nan"))
    assert MetricValue(1.0, 0.5, 2.0) != MetricValue(1.0, 0.5, 2.1)


def test_metrics_from_probes_merges_shards():
    scored = random_scored(12)
    whole = compute_metrics(build_token_table(scored, cfg=NATS), NATS, n_boot=200)
    part1 = compute_metrics(build_token_table(scored[:5], cfg=NATS), NATS, n_boot=0)
    part2 = compute_metrics(build_token_table(scored[5:], cfg=NATS), NATS, n_boot=0)
    merged = metrics_from_probes(part1.per_probe + part2.per_probe, NATS, n_boot=200)
    for name in METRIC_NAMES:
        assert merged[name].value == pytest.approx(whole[name].value)
        assert merged[name].low == pytest.approx(whole[name].low)
    with pytest.raises(ValueError, match="duplicate probe id"):
        metrics_from_probes(part1.per_probe + part1.per_probe)


# ---------------------------------------------------------------- compare


def test_compare_identical_sets_paired():
    t = build_token_table(random_scored(20), cfg=NATS)
    m = compute_metrics(t, NATS, n_boot=300)
    c = compare_metrics(m, m)
    assert c.paired
    for row in c.metrics:
        assert row.diff.value == 0.0 and row.diff.low == 0.0 and row.diff.high == 0.0
        assert row.overlap and not row.differs
    assert "no clear difference" in c.summary()


def test_compare_detects_a_shift_and_pairing_tightens_the_interval():
    scored = random_scored(30, seed=3)
    a = compute_metrics(build_token_table(scored, cfg=NATS), NATS, n_boot=1000)
    # same probes, every H' raised by 0.5 nats: more noise tokens everywhere
    shifted = [(pid, AttributionResult(**{**r.__dict__, "entropy_full": r.entropy_full + 0.5})) for pid, r in scored]
    b = compute_metrics(build_token_table(shifted, cfg=NATS), NATS, n_boot=1000)
    c = compare_metrics(a, b)
    assert c.paired
    row = c["noise_rate"]
    assert row.diff.value > 0 and row.differs and row.diff.low > 0
    assert c["near_zero_rate"].diff.value == 0.0 and not c["near_zero_rate"].differs
    # the same data under different probe ids: unpaired, wider interval
    renamed = [(pid + "x", r) for pid, r in shifted]
    b2 = compute_metrics(build_token_table(renamed, cfg=NATS), NATS, n_boot=1000)
    c2 = compare_metrics(a, b2)
    assert not c2.paired
    assert c2["noise_rate"].diff.value == pytest.approx(row.diff.value)
    assert c2["noise_rate"].diff.width > 2 * row.diff.width
    frame = c2.to_frame()
    assert list(frame["metric"]) == list(METRIC_NAMES)
    assert compare_metrics(a, b).to_dict() == c.to_dict()  # seeded


def test_compare_subset_and_bad_names():
    m = compute_metrics(build_token_table(random_scored(4), cfg=NATS), NATS, n_boot=50)
    c = compare_metrics(m, m, names=["noise_rate"])
    assert [r.name for r in c.metrics] == ["noise_rate"]
    with pytest.raises(ValueError, match="unknown metric"):
        compare_metrics(m, m, names=["noise"])
    with pytest.raises(KeyError):
        m["noise"]


def test_compare_with_undefined_metric():
    empty = compute_metrics(build_token_table([]), NATS)
    m = compute_metrics(build_token_table(random_scored(4), cfg=NATS), NATS, n_boot=50)
    c = compare_metrics(empty, m)
    assert not c.paired
    row = c["noise_rate"]
    assert math.isnan(row.diff.value) and not row.differs and not row.overlap
