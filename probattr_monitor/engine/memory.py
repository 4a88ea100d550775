"""Out-of-memory errors in the engine: recognising them, and which forward ran out.

The engine lets an out-of-memory error through unchanged (same object, type
and message) and records on it where it happened: the stage (the full pass, a
candidate batch, response generation), the rows of the forward that ran out
and their length. A caller that retries with smaller batches reads it with
:func:`oom_site` and retries at half the batch actually used, rather than at a
guess.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

#: Stages of :class:`OomSite`.
FULL_PASS = "full pass"
CANDIDATE_BATCH = "candidate batch"
GENERATION = "generation"

#: Substrings of an allocator's message that mean it ran out of memory (lower case):
#: CUDA and MPS say "out of memory"; the CPU allocator says "can't allocate memory".
_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "cublas_status_alloc_failed")

_ATTRIBUTE = "probattr_oom_site"


@dataclass(frozen=True)
class OomSite:
    """Where an out-of-memory error was raised.

    Attributes
    ----------
    stage : str
        :data:`FULL_PASS`, :data:`CANDIDATE_BATCH` or :data:`GENERATION`.
    rows : int
        Rows (sequences) of the forward that ran out of memory: the candidate
        batch size for a candidate batch, 1 for the full pass, the number of
        samples for generation.
    length : int
        Tokens per row fed to that forward.
    """

    stage: str
    rows: int
    length: int

    def describe(self) -> str:
        """``"a candidate batch of 8 rows x 12 tokens"`` and the like, for messages."""
        rows = f"{self.rows} row{'s' if self.rows != 1 else ''}"
        if self.stage == FULL_PASS:
            return f"the full pass over {self.length} tokens ({rows})"
        if self.stage == GENERATION:
            return f"response generation ({rows} of up to {self.length} tokens)"
        return f"a {self.stage} of {rows} x {self.length} tokens"


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error (CUDA, MPS or CPU allocator, or Python's ``MemoryError``).

    ``torch.OutOfMemoryError`` and ``MemoryError`` always are; any other
    ``RuntimeError`` is when its message says so ("out of memory", or the CPU
    allocator's "can't allocate memory").
    """
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if (oom_type is not None and isinstance(err, oom_type)) or isinstance(err, MemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in _MESSAGES)


def oom_site(err: BaseException) -> Optional[OomSite]:
    """The :class:`OomSite` the engine recorded on ``err``, or ``None`` (not from an engine forward)."""
    site = getattr(err, _ATTRIBUTE, None)
    return site if isinstance(site, OomSite) else None


@contextlib.contextmanager
def forward_site(stage: str, rows: int, length: int) -> Iterator[None]:
    """Record ``OomSite(stage, rows, length)`` on an out-of-memory error raised inside, and re-raise it.

    The innermost site wins: an error already carrying a site keeps it.
    """
    try:
        yield
    except BaseException as err:
        if is_out_of_memory(err) and oom_site(err) is None:
            try:
                setattr(err, _ATTRIBUTE, OomSite(stage, int(rows), int(length)))
            except (AttributeError, TypeError):  # an exception type without attributes: nothing to record
                pass
        raise


#: Share of a CUDA device's free memory the engine's transient tensors may take at most.
FREE_MEMORY_SHARE = 0.8


def device_memory_budget(device: torch.device, requested_bytes: int) -> int:
    """The engine's memory budget on ``device``: ``requested_bytes``, capped on CUDA by the free memory.

    On a CUDA device the budget (and with it the candidate batch, see
    :meth:`ModelRunner.default_batch_size <probattr_monitor.engine.runner.ModelRunner.default_batch_size>`)
    is at most :data:`FREE_MEMORY_SHARE` of what ``torch.cuda.mem_get_info``
    reports free when the runner is built; on other devices it is ``requested_bytes``.

    Returns
    -------
    int
        At least 1.
    """
    requested = max(1, int(requested_bytes))
    if device.type != "cuda":
        return requested
    free, _total = torch.cuda.mem_get_info(device)
    return max(1, min(requested, int(free * FREE_MEMORY_SHARE)))
