"""Plumbing both training callbacks share: a given monitor, the W&B run to log to, a failed scoring.

Framework-agnostic (imports neither Lightning nor transformers); each callback
keeps its own hooks and calls these helpers with its own class name, so the
messages name the callback the user wrote.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from probattr_monitor.distributed import rank_zero_warn
from probattr_monitor.monitor import ProbAttrMonitor
from probattr_monitor.sinks.wandb import current_run, is_wandb_run

__all__ = ["check_monitor", "record_scoring_failure", "require_wandb", "wandb_run_for"]


def check_monitor(monitor: Any) -> ProbAttrMonitor:
    """Return a user-given ``monitor`` after checking its type.

    Raises
    ------
    TypeError
        ``monitor`` is not a :class:`~probattr_monitor.monitor.ProbAttrMonitor`.
    """
    if not isinstance(monitor, ProbAttrMonitor):
        raise TypeError(f"monitor must be a ProbAttrMonitor, got {type(monitor).__name__}")
    return monitor


def require_wandb(owner: str) -> None:
    """Raise ``ValueError`` unless wandb is installed (``owner(wandb=True)`` needs it)."""
    if importlib.util.find_spec("wandb") is None:
        raise ValueError(f"{owner}(wandb=True) needs wandb: pip install 'probattr-monitor[wandb]'")


def wandb_run_for(setting: Any, *, owner: str, no_run: str, framework_run: Any = None) -> Any:
    """The W&B run a callback logs to, for its ``wandb=`` setting.

    Parameters
    ----------
    setting : "auto", bool or wandb Run
        ``False``: none. A run object: that run. ``"auto"``: ``framework_run``,
        else the active ``wandb.run`` if wandb has been imported (never imports
        it). ``True``: the same, importing wandb; no run raises.
    owner : str
        The callback's class name, for the messages.
    framework_run : wandb Run, optional
        The run the training framework logs to (Lightning's ``WandbLogger``).
    no_run : str
        The error message when ``setting`` is ``True`` and no run is found.

    Returns
    -------
    wandb Run or None

    Raises
    ------
    ValueError
        ``setting`` is ``True`` and wandb is not installed or no run is active.
    """
    if setting is False:
        return None
    if is_wandb_run(setting):
        return setting
    run = framework_run
    if run is None:
        if setting is True:
            require_wandb(owner)
        run = current_run(import_wandb=setting is True)
    if run is None and setting is True:
        raise ValueError(no_run)
    return run


def record_scoring_failure(failures: list, step: int, event: str, err: BaseException) -> None:
    """Append ``{"step", "event", "error"}`` to ``failures`` and warn (from rank 0) that training goes on."""
    error = f"{type(err).__name__}: {err}"
    failures.append({"step": step, "event": event, "error": error})
    rank_zero_warn(f"probattr: scoring at step {step} ({event}) failed: {error}; training goes on",
                   RuntimeWarning, stacklevel=3)
