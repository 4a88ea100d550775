"""A process killed at every instant of a report save (issue 12, item 2).

A forked child saves a step-2 report (or logs it through a ``FileSink``) over a
directory holding the step-1 one, and ``os._exit``\\ s just before its i-th file
operation that changes that directory (an audit hook counts every open for
writing, rename, remove, mkdir, chmod... under it; a read changes nothing on
disk, so a kill before it leaves the same state as one before the next change),
for every i until the save completes. After each
kill the parent checks what a user relies on: the directory loads as the
step-1 report or as the step-2 report, equal to the one saved, never a mix;
loading writes nothing; and the next save (the resumed run) completes cleanly.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from helpers.results import make_result  # noqa: E402
from probattr_monitor.report import NoiseConfig, Report  # noqa: E402
from probattr_monitor.report.report import METRICS_FILE, TABLE_FILES  # noqa: E402
from probattr_monitor.sinks import FileSink, read_history  # noqa: E402
from probattr_monitor.sinks.files import step_dir_name  # noqa: E402

if "fork" not in multiprocessing.get_all_start_methods():  # pragma: no cover - Windows
    pytest.skip("the kill sweep forks its writer", allow_module_level=True)

#: Exit code of a child killed by the injected fault.
KILLED = 86
#: Audit events of file operations that change a directory (the first one or two arguments are paths).
CHANGING_EVENTS = frozenset({"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.truncate",
                             "os.link", "os.symlink"})
#: Open flags that write.
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
NATS = NoiseConfig(entropy_mode="nats", entropy_threshold=2.0)
ALL_FORMATS = ("csv", "parquet", "json")
#: The most kill points a save may have before the sweep gives up.
MAX_OPS = 200


def report_at(step: int, seed: int = 0) -> Report:
    """Same probes and token counts at every step, other scores: a mix would pass a row count."""
    rng = np.random.default_rng([step, seed])
    scored = [(pid, make_result(rng.normal(0, 2, n), rng.uniform(0, 4, n))) for pid, n in (("p1", 4), ("p2", 3))]
    return Report.from_results(scored, step=step, cfg=NATS, n_boot=20, meta={"model": "tiny"})


def _paths(event: str, args: tuple) -> list[str]:
    """The absolute paths an audited file operation acts on (names relative to a ``dir_fd`` resolved)."""
    if event == "os.rename":
        pairs = [(args[0], args[2]), (args[1], args[3])]
    elif event in ("os.mkdir", "os.chmod"):
        pairs = [(args[0], args[2])]
    elif event in ("os.remove", "os.rmdir"):
        pairs = [(args[0], args[1])]
    else:
        pairs = [(args[0], None)]
    out = []
    for path, dir_fd in pairs:
        if not isinstance(path, (str, bytes, os.PathLike)):
            continue
        path = os.fsdecode(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
            try:
                path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
            except OSError:  # pragma: no cover - no /proc: the operation is not counted
                continue
        out.append(os.path.abspath(path))
    return out


def _die_before_op(target: Path, at: int) -> None:
    """From now on in this process: ``os._exit(KILLED)`` just before the ``at``-th file operation under ``target``."""
    prefix = os.fsdecode(target)
    seen = [0]

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            if not isinstance(args[2], int) or not args[2] & WRITE_FLAGS:
                return
        elif event not in CHANGING_EVENTS:
            return
        if not any(path.startswith(prefix) for path in _paths(event, args)):
            return
        if seen[0] == at:
            os._exit(KILLED)
        seen[0] += 1

    sys.addaudithook(hook)


def _child(target: str, at: int, action) -> None:
    _die_before_op(Path(target), at)
    action()


def run_killed(target: Path, at: int, action) -> int:
    """Run ``action`` in a forked child killed before its ``at``-th file operation under ``target``; its exit code."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(str(target), at, action))
    proc.start()
    proc.join(60)
    if proc.exitcode is None:  # pragma: no cover - a hung child is a failure, not a hang of the suite
        proc.kill()
        proc.join()
        pytest.fail(f"the writer killed at operation {at} hung")
    return proc.exitcode


def listing(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path to content)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def which(loaded: Report, candidates: dict[str, Report]) -> str:
    """The name of the candidate ``loaded`` equals; fails on a mix."""
    for name, rep in candidates.items():
        if loaded == rep:
            return name
    pytest.fail(f"the directory loaded as a report equal to none of {sorted(candidates)} (a mixed report)")


def check_loads_whole(directory: Path, candidates: dict[str, tuple[Report, tuple]]) -> str:
    """The directory loads, in every format, as one candidate report (``(report, formats)``); returns its name.

    A format the loaded report was not saved in must raise ``FileNotFoundError``
    naming it, even if a stale file of that format lies in the directory.
    """
    before = listing(directory)
    name = which(Report.load(directory), {k: rep for k, (rep, _) in candidates.items()})
    report, formats = candidates[name]
    for fmt in ALL_FORMATS:
        if fmt in formats:
            assert Report.load(directory, fmt) == report, f"loads as the {name} report, but not from {fmt}: a mix"
        else:
            with pytest.raises(FileNotFoundError, match=f"no {fmt} table"):
                Report.load(directory, fmt)
    assert listing(directory) == before, "loading wrote to the directory"
    return name


def scalars_of(item) -> str:
    """A report's scalars, or those a history line holds, as comparable text (NaN equal to NaN)."""
    if isinstance(item, Report):
        return json.dumps(item.metrics.scalars(prefix=""), sort_keys=True)
    keys = set(report_at(1).metrics.scalars(prefix=""))
    return json.dumps({k: v for k, v in item.items() if k in keys}, sort_keys=True)


@pytest.mark.parametrize("new_formats", [ALL_FORMATS, ("csv", "json")], ids=["same-formats", "fewer-formats"])
def test_save_killed_at_every_file_operation_leaves_one_whole_report(tmp_path, new_formats):
    old, new = report_at(1), report_at(2)
    template = tmp_path / "template"
    old.save(template, ALL_FORMATS)
    target = tmp_path / "report"
    seen = set()
    expected = sorted([METRICS_FILE, *(TABLE_FILES[f] for f in new_formats)])
    leftovers = {}
    for at in range(MAX_OPS):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(template, target)
        code = run_killed(target, at, lambda: new.save(target, new_formats))
        assert code in (0, KILLED), f"the save itself failed (exit code {code})"
        state = check_loads_whole(target, {"old": (old, ALL_FORMATS), "new": (new, new_formats)})
        seen.add(state)
        if code == 0:
            assert state == "new"
            break
        # the resumed run saves again: it completes, and leaves exactly the new report's files
        new.save(target, new_formats)
        assert check_loads_whole(target, {"new": (new, new_formats)}) == "new"
        if sorted(listing(target)) != expected:
            leftovers[at] = sorted(listing(target))
    else:  # pragma: no cover
        pytest.fail(f"the save did not complete within {MAX_OPS} file operations")
    assert at >= 10 and seen == {"old", "new"}, (at, seen)  # the sweep crossed the commit point
    assert leftovers == {}, "files left behind by a killed save, after the next save"


def test_first_save_killed_at_every_file_operation_leaves_no_report_or_the_whole_one(tmp_path):
    new = report_at(2)
    target = tmp_path / "fresh" / "report"
    for at in range(MAX_OPS):
        shutil.rmtree(tmp_path / "fresh", ignore_errors=True)
        code = run_killed(tmp_path / "fresh", at, lambda: new.save(target, ALL_FORMATS))
        assert code in (0, KILLED)
        try:
            loaded = Report.load(target)
        except FileNotFoundError as err:
            assert code == KILLED and METRICS_FILE in str(err)  # no report yet, and the message says so
        else:
            assert loaded == new
        if code == 0:
            break
    else:  # pragma: no cover
        pytest.fail(f"the save did not complete within {MAX_OPS} file operations")


def test_file_sink_killed_at_every_file_operation_keeps_history_and_reports_whole(tmp_path):
    """A resumed run logs step 2 again over the step-2 directory of the run before it, and is killed."""
    reports = {1: report_at(1), 2: report_at(2), 3: report_at(3)}
    rescored = report_at(2, seed=1)  # step 2 scored again after resuming from the step-1 checkpoint
    template = tmp_path / "template"
    sink = FileSink(template, formats=("csv", "json"), plots=False)
    sink.setup({"run": "fault sweep"})
    sink.log(reports[1], 1)
    sink.log(reports[2], 2)
    target = tmp_path / "probattr"
    step2 = target / step_dir_name(2)
    seen = set()
    for at in range(MAX_OPS):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(template, target)
        code = run_killed(target, at, lambda: FileSink(target, formats=("csv", "json"), plots=False).log(rescored, 2))
        assert code in (0, KILLED)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            history = read_history(target)
            assert [h["step"] for h in history] == [1, 2]
            assert Report.load(target / step_dir_name(1)) == reports[1]
            state = check_loads_whole(step2, {"old": (reports[2], ("csv", "json")), "new": (rescored, ("csv", "json"))})
            seen.add(state)
            line = scalars_of(history[1])
            assert line in (scalars_of(reports[2]), scalars_of(rescored))
            if line == scalars_of(rescored):  # a history line is written after its report
                assert state == "new"
            # the resumed run logs step 2 again, then step 3: both land, the history stays clean
            resumed = FileSink(target, formats=("csv", "json"), plots=False)
            resumed.log(rescored, 2)
            resumed.log(reports[3], 3)
        assert resumed.failures == []
        assert [h["step"] for h in read_history(target)] == [1, 2, 3]
        for step, rep in {**reports, 2: rescored}.items():
            assert Report.load(target / step_dir_name(step)) == rep
        if code == 0:
            break
    else:  # pragma: no cover
        pytest.fail(f"the sink did not finish within {MAX_OPS} file operations")
    assert seen == {"old", "new"}, seen
