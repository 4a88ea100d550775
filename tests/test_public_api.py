"""The public API: docs/api.md and each package's ``__all__`` agree, and every name imports."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def documented() -> dict[str, set[str]]:
    """Package -> names listed in its section of docs/api.md (first column of its table)."""
    out: dict[str, set[str]] = {}
    package = None
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        head = re.match(r"^## `([\w.]+)`", line)
        if head:
            package = head.group(1)
            out[package] = set()
        elif package and line.startswith("| `"):
            first = line.split("|")[1]
            out[package] |= set(re.findall(r"`(\w+)`", first))
    return out


DOCUMENTED = documented()


def test_every_package_section_is_found():
    assert {"probattr_monitor", "probattr_monitor.callbacks", "probattr_monitor.engine", "probattr_monitor.probes",
            "probattr_monitor.report", "probattr_monitor.monitor", "probattr_monitor.sinks",
            "probattr_monitor.cli"} <= set(DOCUMENTED)


@pytest.mark.parametrize("package", sorted(DOCUMENTED))
def test_docs_and_all_agree(package):
    module = importlib.import_module(package)
    assert set(module.__all__) == DOCUMENTED[package], (
        f"{package}: in __all__ only {sorted(set(module.__all__) - DOCUMENTED[package])}, "
        f"in docs/api.md only {sorted(DOCUMENTED[package] - set(module.__all__))}"
    )
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_a_monitoring_user_needs_one_import():
    import probattr_monitor as pm

    for name in ("ScoringConfig", "NoiseConfig", "ProbAttrMonitor", "Schedule", "load_probe_set", "Report",
                 "load_model_and_tokenizer", "attribute", "Budget"):
        assert name in pm.__all__


def test_no_version_literal_in_the_package():
    import probattr_monitor

    src = Path(probattr_monitor.__file__).parent
    literal = re.compile(r"""__version__\s*=\s*["']""")
    assert not [p for p in src.rglob("*.py") if literal.search(p.read_text(encoding="utf-8"))]
