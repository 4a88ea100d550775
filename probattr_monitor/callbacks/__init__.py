"""Training-framework callbacks (Lightning, Hugging Face Trainer).

Both are imported lazily, so importing one framework's callback never imports
the other framework::

    from probattr_monitor.callbacks import ProbAttrCallback          # Lightning
    from probattr_monitor.callbacks import ProbAttrTrainerCallback   # transformers.Trainer
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["ProbAttrCallback", "ProbAttrTrainerCallback"]

_LAZY = {
    "ProbAttrCallback": "probattr_monitor.callbacks.lightning",
    "ProbAttrTrainerCallback": "probattr_monitor.callbacks.hf",
}

if TYPE_CHECKING:  # pragma: no cover
    from probattr_monitor.callbacks.hf import ProbAttrTrainerCallback
    from probattr_monitor.callbacks.lightning import ProbAttrCallback


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
