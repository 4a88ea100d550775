"""Running ``probattr score`` / ``probattr watch`` under ``torchrun``: the process group and the probe shards.

``torchrun --nproc_per_node N -m probattr_monitor.cli score ...`` sets
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous variables; the
command then starts a ``torch.distributed`` process group (``gloo`` on CPU,
``nccl`` on CUDA, each rank on ``cuda:LOCAL_RANK``), each rank scores its
round-robin shard of the probes (:meth:`ProbeSet.shard`), the probe scores are
gathered on every rank in probe-set order, and rank 0 alone writes. Without
``WORLD_SIZE`` (or with 1) nothing of this happens.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from probattr_monitor.cli.errors import CLIError
from probattr_monitor.distributed import all_gather_object, dist_ready

logger = logging.getLogger(__name__)

__all__ = ["Ranks", "device_for_rank", "gather_in_order", "start_ranks", "stop_ranks"]


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world_size``; ``started``: we created the group."""

    rank: int = 0
    world_size: int = 1
    started: bool = False

    @property
    def gather(self) -> Optional[Callable[[Any], Sequence[Any]]]:
        """``all_gather_object`` for a run of several processes, else ``None``."""
        return all_gather_object if self.world_size > 1 else None

    @property
    def writes(self) -> bool:
        """Whether this process writes outputs (rank 0)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise CLIError(f"environment variable {name}={value!r} is not an integer") from None


def device_for_rank(device: str) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun (one GPU per process); other devices are kept."""
    if device == "cuda" and _env_int("WORLD_SIZE", 1) > 1:
        return f"cuda:{_env_int('LOCAL_RANK', 0)}"
    return device


def start_ranks(device: str) -> Ranks:
    """Join the ``torchrun`` process group if this process was started by one.

    Raises
    ------
    CLIError
        The rendezvous fails.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Ranks()
    import torch
    import torch.distributed as dist

    if dist_ready():
        return Ranks(dist.get_rank(), dist.get_world_size(), False)
    cuda = device.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    try:
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as exc:
        raise CLIError(f"cannot join the torchrun process group ({backend}): {exc}") from None
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), True)
    logger.info("rank %d of %d (%s)", ranks.rank, ranks.world_size, backend)
    return ranks


def stop_ranks(ranks: Ranks) -> None:
    """Destroy the process group :func:`start_ranks` created (after a barrier, so no rank leaves early)."""
    if not ranks.started or not dist_ready():
        return
    import torch.distributed as dist

    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def gather_in_order(scores: list, probe_ids: Sequence[str], ranks: Ranks) -> list:
    """Every rank's probe scores, gathered, in the order of ``probe_ids`` (a collective under several ranks)."""
    if ranks.world_size <= 1:
        return scores
    by_id = {s.probe_id: s for part in all_gather_object(scores) for s in part}
    return [by_id[pid] for pid in probe_ids if pid in by_id]
