"""Report directories and histories that are stale, damaged or written by the previous release (issue 12, items 2-3)."""

from __future__ import annotations

import json
import logging
import shutil
import warnings

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from helpers.results import make_result  # noqa: E402
from probattr_monitor.report import NoiseConfig, Report  # noqa: E402
from probattr_monitor.report.report import METRICS_FILE, TABLE_FILES  # noqa: E402
from probattr_monitor.sinks import FileSink, read_history  # noqa: E402
from probattr_monitor.sinks.files import HISTORY_FILE  # noqa: E402

NATS = NoiseConfig(entropy_mode="nats", entropy_threshold=2.0)
ALL_FORMATS = ("csv", "parquet", "json")


def report_at(step: int) -> Report:
    """Same probes and token counts at every step, other scores: a mix would pass a row count."""
    rng = np.random.default_rng(step)
    scored = [(pid, make_result(rng.normal(0, 2, n), rng.uniform(0, 4, n))) for pid, n in (("p1", 4), ("p2", 3))]
    return Report.from_results(scored, step=step, cfg=NATS, n_boot=20, meta={"model": "tiny"})


def as_previous_release(directory, formats=None) -> None:
    """Rewrite ``metrics.json`` exactly as the release before issue 12 wrote it (no checksums, no save id)."""
    manifest = json.loads((directory / METRICS_FILE).read_text(encoding="utf-8"))
    manifest.pop("files", None), manifest.pop("save_id", None)
    if formats is not None:
        manifest["formats"] = list(formats)
    (directory / METRICS_FILE).write_text(json.dumps(manifest, indent=2, allow_nan=True), encoding="utf-8")


# ----------------------------------------------------------------- stale formats


def test_resave_with_fewer_formats_removes_the_stale_tables_and_loads_the_new_report(tmp_path):
    old, new = report_at(1), report_at(2)
    old.save(tmp_path, ALL_FORMATS)
    (tmp_path / "entropy_vs_as.png").write_bytes(b"a figure of the sink")  # not a table: kept
    new.save(tmp_path, ("csv",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entropy_vs_as.png", METRICS_FILE, "tokens.csv"]
    assert Report.load(tmp_path) == new
    for fmt in ("parquet", "json"):
        with pytest.raises(FileNotFoundError, match=rf"no {fmt} table .*{METRICS_FILE} lists csv"):
            Report.load(tmp_path, fmt)


def test_a_stale_table_the_manifest_does_not_list_is_ignored(tmp_path):
    """A directory of the previous release: csv + json listed, an older save's Parquet beside them."""
    old, new = report_at(1), report_at(2)
    old.save(tmp_path / "old", ALL_FORMATS)
    new.save(tmp_path, ("csv", "json"))
    shutil.copy(tmp_path / "old" / "tokens.parquet", tmp_path / "tokens.parquet")
    as_previous_release(tmp_path)
    assert Report.load(tmp_path) == new  # the listed JSON, not the stale Parquet
    with pytest.raises(FileNotFoundError, match="no parquet table"):
        Report.load(tmp_path, "parquet")


# ------------------------------------------------------- the previous release's files


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_a_directory_written_by_the_previous_release_loads_equal(tmp_path, fmt):
    rep = report_at(3)
    rep.save(tmp_path, ALL_FORMATS)
    as_previous_release(tmp_path)
    assert Report.load(tmp_path, fmt) == rep
    assert Report.load(tmp_path) == rep


# ----------------------------------------------------------------- damaged files


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _change_one_digit(path):
    """A damaged byte that still parses: one digit of the first float changed."""
    data = bytearray(path.read_bytes())
    if path.suffix == ".parquet":
        i = len(data) // 3  # inside the column data
        data[i] ^= 0x01
    else:
        text = data.decode("utf-8")
        key = '"attribution": ' if path.suffix == ".json" else "\np1,"
        start = text.index(key) + len(key)
        i = start + next(k for k, ch in enumerate(text[start:]) if ch in "123456789")
        data[i:i + 1] = b"9" if text[i] != "9" else b"8"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _change_one_digit], ids=["truncated", "one-byte-changed"])
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_a_damaged_table_file_raises_naming_it(tmp_path, fmt, damage):
    rep = report_at(4)
    rep.save(tmp_path, ALL_FORMATS)
    damage(tmp_path / TABLE_FILES[fmt])
    with pytest.raises(ValueError, match=TABLE_FILES[fmt].replace(".", r"\.")) as err:
        Report.load(tmp_path, fmt)
    assert "damaged" in str(err.value)
    others = [f for f in ALL_FORMATS if f != fmt]
    assert all(Report.load(tmp_path, f) == rep for f in others)  # the other tables are intact


def test_a_damaged_table_of_the_previous_release_raises_naming_it(tmp_path):
    """No checksums to compare: the reader's own error still names the file."""
    rep = report_at(4)
    rep.save(tmp_path, ALL_FORMATS)
    as_previous_release(tmp_path)
    _truncate(tmp_path / "tokens.parquet")
    with pytest.raises(ValueError, match=r"tokens\.parquet"):
        Report.load(tmp_path, "parquet")
    (tmp_path / "report.json").write_text('{"format": "probattr-monitor/report", "records": [', encoding="utf-8")
    with pytest.raises(ValueError, match=r"report\.json is not valid JSON"):
        Report.load(tmp_path, "json")


@pytest.mark.parametrize("content", ['{"format": "probattr-monitor/report", "meta"', "", "\udcff"],
                         ids=["truncated", "empty", "not-utf8"])
def test_a_damaged_manifest_raises_naming_it(tmp_path, content):
    report_at(5).save(tmp_path, ("csv",))
    raw = content.encode("utf-8", "surrogateescape")
    (tmp_path / METRICS_FILE).write_bytes(raw)
    with pytest.raises(ValueError, match=rf"{METRICS_FILE} is not valid JSON"):
        Report.load(tmp_path)


# ------------------------------------------------------------------------ history


def _history_with_torn_last_line(directory, cut: int) -> bytes:
    """Two whole lines, then the first ``cut`` bytes of a third (a writer killed while appending it)."""
    whole = b"".join(json.dumps({"step": s, "noise_rate": 0.5, "report": f"step-{s:08d}"}).encode() + b"\n"
                     for s in (1, 2))
    torn = json.dumps({"step": 3, "noise_rate": 0.25, "note": "réglage ✓"}, ensure_ascii=False).encode()
    (directory / HISTORY_FILE).write_bytes(whole + torn[:cut])
    return torn


def test_a_history_line_torn_at_any_byte_stays_readable_and_the_next_scoring_appends_cleanly(tmp_path, caplog):
    torn = _history_with_torn_last_line(tmp_path, 0)
    for cut in range(1, len(torn)):  # every instant of the append, inside the multi-byte characters too
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        _history_with_torn_last_line(directory, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="probattr_monitor"):
            assert [h["step"] for h in read_history(directory)] == [1, 2], cut
        assert HISTORY_FILE in caplog.text, cut  # the warning names the file
    # a later scoring rewrites the history: the torn line is gone, every line is whole
    directory = tmp_path / "cut20"
    sink = FileSink(directory, formats=("csv",), plots=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sink.log(report_at(4), 4)
    assert sink.failures == []
    lines = (directory / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 4]


def test_a_history_with_garbage_lines_stays_appendable(tmp_path):
    (tmp_path / HISTORY_FILE).write_bytes(b'{"step": 1, "noise_rate": 0.5}\n[1, 2]\n7\n\x00\x00\x00\xff\xfe\n')
    assert read_history(tmp_path) == [{"step": 1, "noise_rate": 0.5}]
    sink = FileSink(tmp_path, formats=("csv",), plots=False)
    sink.log(report_at(2), 2)
    assert sink.failures == []
    assert [h["step"] for h in read_history(tmp_path)] == [1, 2]


def test_a_deleted_table_falls_back_to_another_saved_format_and_none_left_names_them(tmp_path):
    rep = report_at(6)
    rep.save(tmp_path, ("csv", "parquet"))
    (tmp_path / "tokens.parquet").unlink()
    assert Report.load(tmp_path) == rep
    (tmp_path / "tokens.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokens\.csv, tokens\.parquet missing"):
        Report.load(tmp_path)
