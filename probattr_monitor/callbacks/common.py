"""Plumbing both training callbacks share: a given monitor, the W&B run, the model check, a scoring that fell short.

Framework-agnostic (imports neither Lightning nor transformers); each callback
keeps its own hooks and calls these helpers with its own class name, so the
messages name the callback the user wrote.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Optional

import torch

from probattr_monitor.distributed import rank_zero_warn
from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.monitor import HistoryEntry, ProbAttrMonitor, training_state_guard
from probattr_monitor.report import Report
from probattr_monitor.scoring import build_report
from probattr_monitor.sinks.wandb import current_run, is_wandb_run
from probattr_monitor.tokenization import conditioning_token_id

__all__ = ["check_monitor", "failed_report", "record_scoring_failure", "require_wandb", "trial_forward",
           "wandb_run_for", "warn_incomplete_scoring"]


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
        Possibly W&B's disabled no-op run: the caller decides what to do with it
        (:func:`probattr_monitor.callbacks.routing.usable_run`).

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


def trial_forward(model: torch.nn.Module, tokenizer: Any) -> Optional[str]:
    """Run a 2-token forward; return why ``model`` is not a causal LM, or ``None`` if it is.

    Runs under :func:`~probattr_monitor.monitor.training_state_guard` in eval
    mode, so training is left exactly as it was.
    """
    tid = conditioning_token_id(tokenizer)
    tid = 0 if tid is None else int(tid)
    try:
        device = next(iter(model.parameters())).device
    except StopIteration:
        device = torch.device("cpu")
    except AttributeError:
        return f"{type(model).__name__} is not a torch module"
    ids = torch.tensor([[tid, tid]], device=device)
    try:
        with training_state_guard(model), scoring_mode(model):
            try:
                out = model(input_ids=ids)
            except TypeError:
                out = model(ids)
    except Exception as err:  # noqa: BLE001 - reported to the user as a configuration error
        return f"forward(input_ids=...) failed: {type(err).__name__}: {err}"
    logits = getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != (1, 2):
        shape = f" (its logits have shape {tuple(logits.shape)})" if isinstance(logits, torch.Tensor) else ""
        return f"forward(input_ids=...) returned {type(out).__name__} without [batch, seq, vocab] `.logits`{shape}"
    return None


def record_timing(timings: list, step: int, event: str, score_s: float, log_s: float, report: Report) -> None:
    """Append ``{"step", "event", "score_s", "log_s", "token_forwards"}`` of one scoring to ``timings``.

    ``token_forwards`` is the report's own count (``report.meta``): the
    scoring's forward work, comparable with the training's tokens.
    """
    timings.append({"step": step, "event": event, "score_s": score_s, "log_s": log_s,
                    "token_forwards": int(report.meta.get("token_forwards", 0))})


def record_scoring_failure(failures: list, step: int, event: str, err: BaseException) -> None:
    """Append ``{"step", "event", "error"}`` to ``failures`` and warn (from rank 0) that training goes on."""
    error = f"{type(err).__name__}: {err}"
    failures.append({"step": step, "event": event, "error": error})
    rank_zero_warn(f"probattr: scoring at step {step} ({event}) failed: {error}; no gate was updated and training "
                   "goes on", RuntimeWarning, stacklevel=3)


def warn_incomplete_scoring(failures: list, entry: HistoryEntry, event: str, n_probes: int) -> None:
    """One rank-0 warning for a scoring that did not score every probe; a failed one is also added to ``failures``.

    ``entry`` is the scoring's history entry (status ``"failed"`` or ``"partial"``).
    """
    first = next(iter(entry.errors.items()), ("?", "no error recorded"))
    shown = f"{first[0]}: {first[1]}"
    more = f"; and {len(entry.errors) - 1} more probe(s), see the history" if len(entry.errors) > 1 else ""
    if entry.status == "failed":
        failures.append({"step": entry.step, "event": event, "error": f"no probe was scored: {shown}{more}"})
        message = (f"probattr: scoring at step {entry.step} ({event}) failed: no probe was scored ({shown}{more}); "
                   "nothing was logged for the gates, the failure is recorded, and training goes on")
    else:
        message = (f"probattr: scoring at step {entry.step} ({event}) was partial: {entry.n_scored} of {n_probes} "
                   f"probes scored ({shown}{more}); its values are recorded but, over fewer probes, not comparable "
                   "with a complete scoring's, so no gate sees them")
    rank_zero_warn(message, RuntimeWarning, stacklevel=3)


def failed_report(monitor: ProbAttrMonitor, step: int, errors: dict) -> Report:
    """The (empty) report of a scoring that produced nothing, for the report sinks' record of the failure."""
    return build_report([], monitor.tokenizer, monitor.scoring, step=step, probe_set=monitor.probe_set,
                        meta={"errors": dict(errors), "status": "failed"})
