"""Rank-aware plumbing read from ``torch.distributed``, shared by the monitor, callbacks and sinks.

Framework-agnostic: the rank is ``torch.distributed``'s global rank when a
process group is initialised, else 0. Nothing here starts a collective unless
its name says so (:func:`all_gather_object`, :func:`broadcast_object`), and those
must be called on every rank.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence

import torch.distributed as dist

__all__ = ["all_gather_object", "broadcast_object", "dist_ready", "gatherer", "global_rank", "is_rank_zero",
           "rank_zero_warn"]


def dist_ready() -> bool:
    """Whether a ``torch.distributed`` process group is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def global_rank() -> int:
    """This process's global rank (0 without an initialised process group)."""
    if not dist_ready():
        return 0
    return int(dist.get_rank())


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 (always true in a single-process run)."""
    return global_rank() == 0


def rank_zero_warn(message: str, category: type[Warning] = RuntimeWarning, stacklevel: int = 2) -> None:
    """``warnings.warn`` on global rank 0 only, so a distributed run warns once, not once per rank.

    Parameters
    ----------
    message : str
    category : Warning subclass
        Default ``RuntimeWarning``.
    stacklevel : int
        As for :func:`warnings.warn`, counted from the caller of this function.
    """
    if is_rank_zero():
        warnings.warn(message, category, stacklevel=stacklevel + 1)


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj``, in rank order (a collective: call it on every rank)."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gatherer(world_size: int) -> Optional[Callable[[Any], Sequence[Any]]]:
    """:func:`all_gather_object` for a run of ``world_size`` processes, or ``None`` when there is nothing to gather.

    ``None`` for a single process or without an initialised process group; the
    result is what :meth:`ProbAttrMonitor.run <probattr_monitor.monitor.ProbAttrMonitor.run>`
    takes as ``gather``.
    """
    return all_gather_object if world_size > 1 and dist_ready() else None


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a collective: call it on every rank)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
