"""What a run records about its monitor: one schema, whatever the training framework.

Both callbacks write :meth:`RunConfig.to_dict` to the W&B run config (under
``config[prefix]``) and to the file sink's ``config.json``; a run scored with
the same probes, scoring settings and schedule records the same dict under
Lightning and under the Hugging Face Trainer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from probattr_monitor.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from probattr_monitor.monitor.monitor import ProbAttrMonitor

__all__ = ["RunConfig"]


@dataclass(frozen=True)
class RunConfig:
    """The run-config record of one monitor.

    Attributes
    ----------
    probe_set : dict
        :meth:`ProbeSet.manifest <probattr_monitor.probes.ProbeSet.manifest>`:
        name, source, fingerprint, number of probes and their ids.
    fingerprint : str
        The probe set's content fingerprint (also in ``probe_set``; top level
        for filtering runs).
    scoring : dict
        :meth:`ScoringConfig.to_dict <probattr_monitor.scoring.ScoringConfig.to_dict>`.
    bootstrap : dict
        ``{"n_boot", "ci"}`` of the intervals.
    schedule : dict
        The fields of :class:`~probattr_monitor.monitor.Schedule`.
    metric, mode, monitor_key : str
        The tracked metric, its direction and its logged key.
    time_budget_s : float or None
    attribution_every : int or None
        Every how many scorings the attribution runs (the others are gate
        scorings); ``None``: never in the loop.
    version : str
        The probattr-monitor version that scored the run.

    Example
    -------
    >>> RunConfig.from_monitor(monitor).to_dict()["fingerprint"]  # doctest: +SKIP
    'v1:3f2a...'
    """

    probe_set: dict
    fingerprint: str
    scoring: dict
    bootstrap: dict
    schedule: dict
    metric: str
    mode: str
    monitor_key: str
    time_budget_s: Optional[float]
    version: str
    attribution_every: Optional[int] = 1

    @classmethod
    def from_monitor(cls, monitor: "ProbAttrMonitor") -> "RunConfig":
        """The record of ``monitor``'s probe set, scoring settings, schedule and tracked metric."""
        return cls(
            probe_set=monitor.probe_set.manifest(),
            fingerprint=monitor.probe_set.fingerprint,
            scoring=monitor.scoring.to_dict(),
            bootstrap={"n_boot": monitor.scoring.n_boot, "ci": monitor.scoring.ci},
            schedule=dataclasses.asdict(monitor.schedule),
            metric=monitor.metric,
            mode=monitor.mode,
            monitor_key=monitor.monitor_key,
            time_budget_s=monitor.time_budget_s,
            version=__version__,
            attribution_every=monitor.attribution_every,
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (fresh copies of the nested dicts)."""
        return dataclasses.asdict(self)
