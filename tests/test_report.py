"""Reports: CSV/Parquet/JSON round trips, atomic writes, class diffs."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from helpers import results  # noqa: E402
from probattr_monitor.engine.result import AttributionResult  # noqa: E402
from probattr_monitor.report import Report  # noqa: E402
from probattr_monitor.report.metrics import compute_metrics  # noqa: E402
from probattr_monitor.report.noise import NoiseConfig  # noqa: E402
from probattr_monitor.report.report import METRICS_FILE, TABLE_FILES  # noqa: E402

NATS = NoiseConfig(entropy_mode="nats", entropy_threshold=2.0)

TRICKY = [" hello", "\n", "a,b", '"quoted"', "nan", "", "NULL", "é😀", "\r\n", "  ", "None", "True", "1e5", "#"]


def make_result(attribution, entropy_full=None, *, texts=None, is_special=None, stderr=None,
                num_candidates=100) -> AttributionResult:
    """A result whose floats do not round-trip through decimal text trivially (thirds, sevenths, 1e-17)."""
    a = np.asarray(attribution, dtype=np.float64)
    n = a.shape[0]
    hf = np.linspace(0.5, 4.0, n) if entropy_full is None else np.asarray(entropy_full, dtype=np.float64)
    return results.make_result(
        a, hf, hf / 3, np.abs(a) / 11, token_ids=np.arange(100, 100 + n), log_numerator=-3.0 - a / 7,
        log_denominator=np.full(n, -1.0 / 3), top_prior=([5, 6, 7], [0.5, 1 / 3, 0.1]),
        top_posterior=([7, 5, 6], [0.7, 0.2, 1e-17]), response_ids=(1, 2), num_candidates=num_candidates,
        texts=texts, is_special=is_special, stderr=stderr,
    )


def tricky_report(step=7, n_boot=200):
    rng = np.random.default_rng(0)
    n = len(TRICKY)
    a = rng.normal(0, 1, n)
    a[3] = np.nan
    a[4] = -np.inf
    hf = rng.uniform(0, 4, n)
    hf[5] = np.nan
    r1 = make_result(a, hf, texts=TRICKY, is_special=[True] + [False] * (n - 1), stderr={"attribution": rng.uniform(size=n)})
    r2 = make_result(rng.normal(0, 1, 5))
    decode = {5: "x,\"y\"", 6: "\n", 7: ""}.get
    return Report.from_results(
        [("tricky", r1), ("plain/2", r2)],
        step=step,
        cfg=NATS,
        decode=lambda i: decode(i, f"<{i}>"),
        n_boot=n_boot,
        meta={"model": "tiny", "probe_set": {"name": "smoke", "fingerprint": "abc123"}, "tags": ("a", "b")},
    )


def assert_same(loaded: Report, saved: Report):
    pd.testing.assert_frame_equal(loaded.table, saved.table, check_exact=True)
    assert loaded.metrics == saved.metrics
    assert loaded.meta == saved.meta
    assert loaded == saved


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
@pytest.mark.parametrize("step", [7, "ckpt-final", None])
def test_round_trip_each_format(tmp_path, fmt, step):
    rep = tricky_report(step=step)
    written = rep.save(tmp_path, formats=(fmt,))
    assert set(written) == {fmt, "metrics"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([TABLE_FILES[fmt], METRICS_FILE])
    assert_same(Report.load(tmp_path, fmt=fmt), rep)
    assert_same(Report.load(tmp_path), rep)


def test_round_trip_is_bit_exact_for_floats(tmp_path):
    rep = tricky_report()
    rep.save(tmp_path)
    for fmt in ("csv", "parquet", "json"):
        back = Report.load(tmp_path, fmt=fmt).table
        for col in rep.table.columns:
            if rep.table[col].dtype == np.float64:
                np.testing.assert_array_equal(back[col].to_numpy(), rep.table[col].to_numpy())
                assert back[col].to_numpy().tobytes() == rep.table[col].to_numpy().tobytes(), (fmt, col)
        assert back["token_text"].tolist() == rep.table["token_text"].tolist()


def test_empty_report_round_trips(tmp_path):
    rep = Report.from_results([], step=3)
    assert len(rep.table) == 0 and math.isnan(rep.metrics.noise_rate.value)
    rep.save(tmp_path)
    for fmt in ("csv", "parquet", "json"):
        assert_same(Report.load(tmp_path, fmt=fmt), rep)


def test_files_content(tmp_path):
    rep = tricky_report()
    rep.save(tmp_path)
    manifest = json.loads((tmp_path / METRICS_FILE).read_text(encoding="utf-8"))
    assert manifest["scalars"]["probattr/noise_rate"] == rep.metrics.noise_rate.value
    assert manifest["meta"]["model"] == "tiny" and manifest["meta"]["step"] == 7
    assert manifest["meta"]["noise_config"] == NATS.to_dict()
    assert manifest["n_rows"] == len(rep.table)
    full = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert {"meta", "metrics", "records", "columns"} <= set(full)
    assert len(full["records"]) == len(rep.table)
    assert full["records"][1]["token_text"] == TRICKY[1]
    csv_df = pd.read_csv(tmp_path / "tokens.csv", keep_default_na=False)
    assert list(csv_df.columns) == list(rep.table.columns)
    assert "created_at" in rep.meta and rep.meta["tags"] == ["a", "b"]  # normalised to JSON types


def test_default_load_prefers_parquet_then_json_then_csv(tmp_path, monkeypatch):
    rep = tricky_report()
    rep.save(tmp_path, formats=("csv", "json"))
    calls = []
    import probattr_monitor.report.report as report_mod

    orig = report_mod.table_from_records
    monkeypatch.setattr(report_mod, "table_from_records", lambda *a: calls.append("json") or orig(*a))
    assert_same(Report.load(tmp_path), rep)
    assert calls == ["json"]


def _as_legacy_manifest(directory, formats):
    """Rewrite metrics.json as the first release wrote it: no checksums, the given formats listed."""
    manifest = json.loads((directory / METRICS_FILE).read_text(encoding="utf-8"))
    manifest.pop("files"), manifest.pop("save_id")
    manifest["formats"] = list(formats)
    (directory / METRICS_FILE).write_text(json.dumps(manifest), encoding="utf-8")


def test_save_then_load_mixed_saves_is_detected(tmp_path):
    big = tricky_report()
    big.save(tmp_path, formats=("csv",))
    big_csv = (tmp_path / "tokens.csv").read_bytes()
    small = Report.from_results([("p", make_result([0.0, 1.0]))], cfg=NATS)
    small.save(tmp_path, formats=("json",))  # metrics.json now describes the small report
    # (issue 12: the other save's tokens.csv is removed, no longer left to be detected as a mix)
    assert not (tmp_path / "tokens.csv").exists()
    with pytest.raises(FileNotFoundError, match="no csv table"):
        Report.load(tmp_path, fmt="csv")
    (tmp_path / "tokens.csv").write_bytes(big_csv)  # a mix made by hand: the checksum catches it
    manifest = json.loads((tmp_path / METRICS_FILE).read_text(encoding="utf-8"))
    manifest["formats"].append("csv")
    manifest["files"]["tokens.csv"] = {"sha256": "0" * 64, "bytes": len(big_csv)}
    (tmp_path / METRICS_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ValueError, match="tokens.csv does not match"):
        Report.load(tmp_path, fmt="csv")
    _as_legacy_manifest(tmp_path, ["json", "csv"])  # no checksums: the row counts still catch it
    with pytest.raises(ValueError, match="different saves"):
        Report.load(tmp_path, fmt="csv")


def test_same_row_count_but_other_probes_is_detected(tmp_path):
    Report.from_results([("p", make_result([0.0, 1.0]))], cfg=NATS).save(tmp_path, formats=("csv",))
    p_csv = (tmp_path / "tokens.csv").read_bytes()
    Report.from_results([("q", make_result([0.0, 1.0]))], cfg=NATS).save(tmp_path, formats=("json",))
    assert Report.load(tmp_path, fmt="json").table["probe_id"].tolist() == ["q", "q"]
    with pytest.raises(FileNotFoundError, match="no csv table"):  # issue 12: the stale table is gone
        Report.load(tmp_path, fmt="csv")
    (tmp_path / "tokens.csv").write_bytes(p_csv)
    _as_legacy_manifest(tmp_path, ["json", "csv"])
    with pytest.raises(ValueError, match="different saves"):
        Report.load(tmp_path, fmt="csv")


def test_report_json_alone_is_enough(tmp_path):
    rep = tricky_report()
    rep.save(tmp_path, formats=("json",))
    (tmp_path / METRICS_FILE).unlink()
    assert_same(Report.load(tmp_path), rep)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no report"):
        Report.load(tmp_path)
    tricky_report().save(tmp_path, formats=("csv",))
    with pytest.raises(FileNotFoundError, match="no parquet table"):
        Report.load(tmp_path, fmt="parquet")
    with pytest.raises(ValueError, match="unknown report format"):
        Report.load(tmp_path, fmt="xlsx")
    with pytest.raises(ValueError, match="unknown report formats"):
        tricky_report().save(tmp_path, formats=("xlsx",))
    (tmp_path / METRICS_FILE).write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a probattr-monitor report"):
        Report.load(tmp_path)


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    rep = tricky_report()
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"probattr-monitor\[io\]"):
        rep.save(tmp_path, formats=("parquet",))
    rep.save(tmp_path, formats=("csv",))  # other formats still work
    assert_same(Report.load(tmp_path), rep)


def test_failed_write_leaves_the_old_files_intact(tmp_path, monkeypatch):
    old = tricky_report()
    old.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_to_parquet(self, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken_to_parquet)
    new = Report.from_results([("other", make_result([0.0, 0.1, 9.0]))], cfg=NATS)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path, formats=("parquet", "json"))
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # nothing replaced, no temporary file left behind
    monkeypatch.undo()
    assert_same(Report.load(tmp_path, fmt="parquet"), old)


def test_diff_classes(tmp_path):
    a = Report.from_results([("p", make_result([0.0, 1.0, -1.0, 5.0])), ("q", make_result([0.1]))], step=1, cfg=NATS)
    b = Report.from_results([("p", make_result([0.0, 0.1, -1.0, 2.0])), ("r", make_result([0.1]))], step=2, cfg=NATS)
    d = a.diff_classes(b)
    assert list(d.columns) == [
        "probe_id",
        "position",
        "token_id",
        "token_text",
        "as_class_a",
        "as_class_b",
        "attribution_a",
        "attribution_b",
        "noise_a",
        "noise_b",
    ]
    assert d["position"].tolist() == [2, 4]
    assert d["as_class_a"].tolist() == ["positive", "high"]
    assert d["as_class_b"].tolist() == ["near_zero", "positive"]
    assert len(a.diff_classes(a)) == 0


def test_report_metrics_match_compute_metrics():
    rep = tricky_report(n_boot=300)
    assert rep.metrics == compute_metrics(rep.table, NATS, n_boot=300, seed=0)
    assert rep.step == 7
    other = tricky_report(step=8)
    assert rep != other
