"""Lazy imports of the optional dependencies of the report subpackage.

Each helper imports the module on first use and turns a missing package into an
:class:`ImportError` that names the extra to install, so that importing
:mod:`probattr_monitor.report` itself never needs pandas, pyarrow or matplotlib.
"""

from __future__ import annotations

from types import ModuleType


def require_pandas() -> ModuleType:
    """Return :mod:`pandas`, or raise an ImportError naming the ``io`` extra."""
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover - exercised only without pandas
        raise ImportError(
            "probattr-monitor token tables need pandas; install it with "
            "`pip install 'probattr-monitor[io]'`"
        ) from exc
    return pandas


def require_pyarrow() -> ModuleType:
    """Return :mod:`pyarrow`, or raise an ImportError naming the ``io`` extra."""
    try:
        import pyarrow
    except ImportError as exc:
        raise ImportError(
            "Parquet export/import needs pyarrow; install it with "
            "`pip install 'probattr-monitor[io]'`"
        ) from exc
    return pyarrow


def require_matplotlib() -> ModuleType:
    """Return :mod:`matplotlib`, or raise an ImportError naming the ``plots`` extra.

    Only the object-oriented API (``matplotlib.figure.Figure`` with the Agg
    canvas) is used by :mod:`probattr_monitor.report.plots`, so the process-wide
    pyplot backend and figure registry are never touched.
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "plots need matplotlib; install it with `pip install 'probattr-monitor[plots]'`"
        ) from exc
    return matplotlib
