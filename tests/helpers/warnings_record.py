"""Recording warnings in the fault tests, so that "said once" counts real emissions."""

from __future__ import annotations

import contextlib
import warnings

__all__ = ["all_warnings", "probattr_warnings"]


@contextlib.contextmanager
def all_warnings():
    """Every warning emitted inside, none filtered out (so that "said once" counts real emissions)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        yield record


def probattr_warnings(record, text: str) -> list[str]:
    """Messages of the recorded ``RuntimeWarning``s that contain ``text``."""
    return [str(w.message) for w in record if issubclass(w.category, RuntimeWarning) and text in str(w.message)]
