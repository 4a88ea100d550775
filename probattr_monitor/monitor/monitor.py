"""The framework-agnostic monitor: probe set + scoring settings + schedule + state.

Callbacks decide when to score and call :meth:`ProbAttrMonitor.run`; the
monitor scores (sharding and gathering under DDP), builds the report and keeps
the history that checkpoints save and resumes restore.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from probattr_monitor.distributed import is_rank_zero
from probattr_monitor.engine.text import encode_prompt
from probattr_monitor.engine.validation import check_fits_context, check_positive_finite, context_limit
from probattr_monitor.monitor.guard import training_state_guard
from probattr_monitor.monitor.keys import attribution_only_refusal, gate_scalar_names, scalar_keys
from probattr_monitor.monitor.schedule import Schedule
from probattr_monitor.probes import ProbeSet, load_probe_set, render
from probattr_monitor.report import DEFAULT_GATE_METRIC, METRIC_NAMES, Report, gate_mode
from probattr_monitor.report.definitions import ATTRIBUTION_SCOPE, PREFIX_METRIC_NAMES
from probattr_monitor.scoring import ProbeScore, ScoringConfig, build_report, score_probes

logger = logging.getLogger(__name__)

MODES = ("min", "max")

#: What a scoring produced (:attr:`HistoryEntry.status`).
COMPLETE, PARTIAL, FAILED = "complete", "partial", "failed"
STATUSES = (COMPLETE, PARTIAL, FAILED)


@dataclass
class HistoryEntry:
    """One scoring run as remembered by the monitor (and saved in checkpoints).

    Attributes
    ----------
    step : int
        The training step scored.
    value : float
        The tracked metric (NaN for a failed scoring).
    scalars : dict
        ``{prefix}/<name>`` scalars of the scoring (empty for a failed one).
    fingerprint : str
        The probe set's fingerprint.
    seconds : float
        Wall time of the scoring.
    n_scored : int
        Probes scored.
    errors : dict
        ``{probe_id: error}`` of the probes that failed or were skipped
        (``{"<scoring>": error}`` when the scoring itself raised).
    status : {"complete", "partial", "failed"}
        ``"complete"``: every probe scored; only such a scoring is given to the
        gates (``ModelCheckpoint``, ``EarlyStopping``, ``metric_for_best_model``)
        and to :attr:`MonitorState.best_value`. ``"partial"``: some probes failed
        or were skipped by the time budget; its values, over fewer probes, are
        recorded and written to the report sinks but are not comparable with a
        complete scoring's, so no gate sees them. ``"failed"``: nothing was scored.
    scope : {"attribution", "prefix"}
        ``"attribution"``: the whole scoring (AS, entropies, every metric);
        ``"prefix"``: a gate scoring, one forward pass per prompt, whose
        ``scalars`` hold only the prefix-surprisal metrics
        (:attr:`ProbAttrMonitor.attribution_every`).
    """

    step: int
    value: float
    scalars: dict
    fingerprint: str
    seconds: float
    n_scored: int
    errors: dict = field(default_factory=dict)
    status: str = COMPLETE
    scope: str = ATTRIBUTION_SCOPE

    @property
    def complete(self) -> bool:
        """Whether every probe was scored (the only scorings the gates see)."""
        return self.status == COMPLETE


@dataclass
class MonitorState:
    """Everything the monitor must carry across a resume."""

    history: list = field(default_factory=list)
    best_value: Optional[float] = None
    best_step: Optional[int] = None
    last_step: Optional[int] = None

    def to_dict(self) -> dict:
        return {
            "history": [asdict(h) for h in self.history],
            "best_value": self.best_value,
            "best_step": self.best_step,
            "last_step": self.last_step,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "MonitorState":
        return cls(
            history=[HistoryEntry(**h) for h in data.get("history", [])],
            best_value=data.get("best_value"),
            best_step=data.get("best_step"),
            last_step=data.get("last_step"),
        )


#: ``attribution_every="auto"`` when the gate metric is one a gate scoring computes: the
#: attribution runs on the first scoring and every 10th after it, so the loop pays for it
#: a tenth as often (docs/design.md section 10).
DEFAULT_ATTRIBUTION_EVERY = 10


def check_attribution_every(value: Any) -> Optional[int]:
    """``attribution_every`` after checking it is ``None`` or a positive int.

    Raises
    ------
    TypeError, ValueError
        Not an int (a bool, a float...), or smaller than 1.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"attribution_every must be a positive int, None or 'auto', got {value!r}")
    if value < 1:
        raise ValueError(f"attribution_every must be a positive int (1: every scoring) or None (never), got {value!r}")
    return int(value)


def check_time_budget(time_budget_s: Any) -> Optional[float]:
    """``time_budget_s`` as a float, after checking it is ``None`` or a positive, finite number of seconds.

    Raises
    ------
    TypeError
        Not a real number (a string, a bool...).
    ValueError
        NaN, infinite, zero or negative.
    """
    if time_budget_s is None:
        return None
    return check_positive_finite(
        time_budget_s,
        not_a_number="time_budget_s must be None or a number of seconds, got {value!r} ({type})",
        not_positive="time_budget_s must be None or a positive, finite number of seconds, got {value!r}")


class ProbAttrMonitor:
    """Scores a fixed probe set with the model being trained and keeps the history.

    The monitor knows nothing of training frameworks: callbacks decide *when*
    (through :attr:`schedule`) and call :meth:`run`; the monitor scores, builds
    the :class:`~probattr_monitor.report.Report` and updates its state.

    Parameters
    ----------
    probes : str, path or ProbeSet
        A built-in probe-set name (``"reasonable-en"``, ``"paper"``), a JSONL/YAML
        file, or a :class:`~probattr_monitor.probes.ProbeSet`.
    tokenizer : transformers tokenizer, optional
        Needed before the first run; may be given later to :meth:`setup`.
    scoring : ScoringConfig, optional
        Candidates (exact or budgeted), decoding, noise rule...
    schedule : Schedule, optional
        When callbacks score (default: at the end of each validation/evaluation).
    metric : str
        The gate metric whose best value is tracked (one of
        :data:`probattr_monitor.report.METRIC_NAMES`; default
        :data:`~probattr_monitor.report.DEFAULT_GATE_METRIC`, the one the
        validity study supports: see docs/validation.md). ``"noise_rate"`` is
        the paper's noise-token rate.
    mode : {"min", "max"}, optional
        Whether a lower or higher ``metric`` is better; default: the metric's
        declared direction (:data:`~probattr_monitor.report.HIGHER_IS_BETTER`).
    time_budget_s : float, optional
        Stop scoring further probes of a run once this many seconds have passed
        (single-process runs only: under DDP every rank scores its whole shard).
        ``None`` (no budget) or a positive, finite number of seconds. A scoring
        cut short by the budget is *partial* (:attr:`HistoryEntry.status`):
        recorded and written, but not given to the gates; size the budget to
        score the whole set when a checkpoint or early-stopping callback gates on it.
    prefix : str
        Logged keys are ``f"{prefix}/{name}"``.
    attribution_every : int, None or "auto"
        Run the attribution (AS, entropies, noise tokens: thousands of
        candidate passes per prompt position) on every ``attribution_every``-th
        scoring, the first scoring included (scorings 1, K + 1, 2K + 1...); the
        scorings between are *gate scorings*: one forward pass over each
        prompt, which compute only
        :data:`~probattr_monitor.report.definitions.PREFIX_METRIC_NAMES`, the
        default gate among them, with the values an attribution scoring gives
        (docs/design.md section 10). ``1`` attributes at every scoring;
        ``None`` never in the loop (score checkpoints with ``probattr watch``
        or ``probattr score``). ``"auto"`` (the default):
        :data:`DEFAULT_ATTRIBUTION_EVERY` when ``metric`` is one a gate scoring
        computes, else 1; and 1 as soon as a callback finds a gate reading a key
        that only attribution scorings log (:meth:`gate_reads`). An explicit
        K other than 1 with such a gate or ``metric`` is refused.
    """

    def __init__(
        self,
        probes: Any = "reasonable-en",
        *,
        tokenizer: Any = None,
        scoring: Optional[ScoringConfig] = None,
        schedule: Optional[Schedule] = None,
        metric: str = DEFAULT_GATE_METRIC,
        mode: Optional[str] = None,
        time_budget_s: Optional[float] = None,
        prefix: str = "probattr",
        attribution_every: Union[int, None, str] = "auto",
    ) -> None:
        if metric not in METRIC_NAMES:
            raise ValueError(f"metric must be one of {METRIC_NAMES}, got {metric!r}")
        auto = isinstance(attribution_every, str) and attribution_every == "auto"
        if auto:
            attribution_every = DEFAULT_ATTRIBUTION_EVERY if metric in PREFIX_METRIC_NAMES else 1
        attribution_every = check_attribution_every(attribution_every)
        if attribution_every != 1 and metric not in PREFIX_METRIC_NAMES:
            raise ValueError(attribution_only_refusal(f"metric={metric!r}", attribution_every,
                                                      [repr(m) for m in PREFIX_METRIC_NAMES]))
        if mode is None:
            mode = gate_mode(metric)  # raises for a metric without a direction
        if mode not in MODES:
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        time_budget_s = check_time_budget(time_budget_s)
        if not prefix or "/" in prefix.strip("/"):
            raise ValueError(f"prefix must be a non-empty name without '/', got {prefix!r}")
        self.probe_set: ProbeSet = load_probe_set(probes)  # raises on unknown set / bad file
        if len(self.probe_set) == 0:
            raise ValueError(f"probe set {self.probe_set.name!r} is empty")
        self.tokenizer = tokenizer
        self.scoring = scoring or ScoringConfig()
        self.schedule = schedule or Schedule()
        self.metric = metric
        self.mode = mode
        self.time_budget_s = time_budget_s
        self.prefix = prefix.strip("/")
        self.attribution_every = attribution_every
        #: Whether ``attribution_every`` was ``"auto"`` (so :meth:`gate_reads` may set it to 1).
        self.attribution_auto = auto
        self.state = MonitorState()
        self._checked_for: Optional[tuple] = None
        #: The report of the last scoring that attributed (tables, responses), whatever came after it.
        self.last_attribution_report: Optional[Report] = None

    # ------------------------------------------------------------------ keys
    @property
    def monitor_key(self) -> str:
        """The logged key of :attr:`metric`, e.g. ``probattr/noise_rate``."""
        return self.key(self.metric)

    def key(self, name: str) -> str:
        """The logged key of scalar ``name`` (``f"{prefix}/{name}"``)."""
        return f"{self.prefix}/{name}"

    def scalar_keys(self) -> list[str]:
        """Every scalar key a run logs: metrics, their intervals and counts (:mod:`~probattr_monitor.monitor.keys`)."""
        return scalar_keys(self.prefix)

    def every_scoring_keys(self) -> list[str]:
        """The scalar keys every scoring logs: all of :meth:`scalar_keys`, or a gate scoring's when ``attribution_every != 1``."""
        if self.attribution_every == 1:
            return self.scalar_keys()
        return [f"{self.prefix}/{name}" for name in gate_scalar_names()]

    def logged_only_by_attribution(self, key: str) -> bool:
        """Whether ``key`` is a scalar key that attribution scorings log and, at this cadence, gate scorings do not."""
        return key in self.scalar_keys() and key not in self.every_scoring_keys()

    def gate_reads(self, key: str) -> None:
        """Tell the monitor that a gate (a checkpoint, early-stopping or best-model rule) reads ``key`` at every scoring.

        With ``attribution_every="auto"``, a key that only attribution scorings
        log (``{prefix}/noise_rate``...) makes every scoring attribute. An
        explicit setting is left alone: the callbacks then refuse the gate at
        setup, naming the keys every scoring logs.
        """
        if self.attribution_auto and self.logged_only_by_attribution(key):
            logger.info("probattr: a gate reads %s, which only attribution scorings log: every scoring attributes "
                        "(attribution_every='auto' -> 1)", key)
            self.attribution_every = 1

    def attribution_due(self) -> bool:
        """Whether the next scoring attributes (every :attr:`attribution_every`-th, counting scorings in the history)."""
        if self.attribution_every is None:
            return False
        return len(self.state.history) % self.attribution_every == 0

    # ------------------------------------------------------------------ setup
    def setup(self, model: Any, tokenizer: Any = None) -> None:
        """Check, before training starts, that every probe can be scored with this model.

        A probe needs its rendered prompt plus its response: the tokens of its
        fixed response when it has one (as scoring counts them), else
        ``scoring.max_new_tokens``.

        Raises
        ------
        ValueError
            No tokenizer, or a probe (plus its response) longer than the
            model's context window.
        """
        if tokenizer is not None:
            self.tokenizer = tokenizer
        if self.tokenizer is None:
            raise ValueError("ProbAttrMonitor needs a tokenizer: pass tokenizer=... when creating it")
        limit = context_limit(model)
        if limit is None or self._checked_for == (limit, id(self.tokenizer)):
            return
        for probe in self.probe_set:
            prompt = len(render(probe, self.tokenizer).ids)
            if probe.response is not None:
                response = len(encode_prompt(self.tokenizer, probe.response, add_bos=False))
                counting = f"prompt {prompt} + fixed response {response}"
            else:
                response = self.scoring.max_new_tokens
                counting = f"prompt {prompt} + max_new_tokens={response}"
            check_fits_context(model, prompt + response, f"probe {probe.id!r} of {self.probe_set.name!r}", counting)
        self._checked_for = (limit, id(self.tokenizer))

    # ------------------------------------------------------------------ running
    def already_scored(self, step: int) -> bool:
        """Whether ``step`` has been scored, successfully or not (never score the same step twice)."""
        return self.entry(step) is not None

    def entry(self, step: int) -> Optional[HistoryEntry]:
        """The history entry of ``step`` (complete, partial or failed), or ``None`` if it was never scored."""
        for h in reversed(self.state.history):
            if h.step == step:
                return h
        return None

    def run(
        self,
        model: Any,
        step: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        gather: Optional[Callable[[Any], Sequence[Any]]] = None,
        shard: bool = True,
        attribution: Optional[bool] = None,
    ) -> Report:
        """Score the probe set with ``model`` at training ``step``.

        Training state is left untouched (see
        :func:`~probattr_monitor.monitor.guard.training_state_guard`). A probe
        that fails is recorded in ``report.meta["errors"]`` with a warning; it
        never raises out of here for a scoring failure. The history entry of the
        step (:meth:`entry`) says whether the scoring was complete, partial or
        failed (also in ``report.meta["status"]``).

        Parameters
        ----------
        model : torch.nn.Module
            The *unwrapped* model (not the DDP/FSDP wrapper).
        step : int
            Global training step, recorded in the report and history.
        rank, world_size, gather
            Distributed scoring: with ``shard=True`` each rank scores
            ``probe_set.shard(rank, world_size)``; ``gather(obj)`` must return
            the list of every rank's ``obj`` (e.g. ``all_gather_object``). All
            ranks then build the same report and state.
        shard : bool
            ``False`` makes every rank score every probe: use it when parameters
            are sharded (FSDP, DeepSpeed ZeRO-3), where each rank must run the
            same number of forward passes with the same shapes.
        attribution : bool, optional
            Attribute (``True``) or run a gate scoring (``False``); default
            :meth:`attribution_due`. Under DDP every rank must pass the same
            value (the default is the same on every rank: the history is).
        """
        if self.tokenizer is None:
            raise ValueError("ProbAttrMonitor needs a tokenizer before run(): call setup(model, tokenizer)")
        if attribution is None:
            attribution = self.attribution_due()
        started = time.monotonic()
        distributed = world_size > 1 and gather is not None
        probes = self.probe_set.shard(rank, world_size) if (distributed and shard) else self.probe_set
        deadline = None
        if self.time_budget_s is not None and not distributed:
            deadline = started + self.time_budget_s
        with training_state_guard(model):
            scores = score_probes(model, self.tokenizer, probes, self.scoring, on_error="record", deadline=deadline,
                                  attribution=bool(attribution))
        if distributed and shard:
            gathered = gather(scores)
            by_id = {s.probe_id: s for part in gathered for s in part}
            scores = [by_id[p.id] for p in self.probe_set if p.id in by_id]
        report = build_report(
            scores, self.tokenizer, self.scoring, step=step, probe_set=self.probe_set,
            meta={"world_size": world_size, "sharded": bool(distributed and shard)},
        )
        entry = self._record(report, scores, step, time.monotonic() - started)
        report.meta["status"] = entry.status
        if not report.metrics.gate_scoring:
            self.last_attribution_report = report
        return report

    def record_failure(self, step: int, error: str, seconds: float = 0.0) -> HistoryEntry:
        """Record that scoring ``step`` raised ``error`` (a ``"failed"`` entry; no value, no best).

        Callbacks call it when :meth:`run` itself raises, so that the history
        holds every scoring, failed ones included.
        """
        entry = HistoryEntry(step=int(step), value=math.nan, scalars={}, fingerprint=self.probe_set.fingerprint,
                             seconds=float(seconds), n_scored=0, errors={"<scoring>": str(error)}, status=FAILED)
        self._add(entry)
        logger.info("probattr: step %d: scoring failed: %s", step, error)
        return entry

    def _add(self, entry: HistoryEntry) -> None:
        self.state.history = [h for h in self.state.history if h.step != entry.step] + [entry]
        self.state.last_step = int(entry.step)

    def _record(self, report: Report, scores: list[ProbeScore], step: int, seconds: float) -> HistoryEntry:
        n_scored = sum(s.result is not None for s in scores)
        errors = dict(report.meta.get("errors", {}))
        if n_scored == 0:
            status = FAILED
        elif errors or n_scored < len(self.probe_set):
            status = PARTIAL
        else:
            status = COMPLETE
        value = float(report.metrics[self.metric].value) if status != FAILED else math.nan
        scalars = {} if status == FAILED else {
            k: float(v) for k, v in report.metrics.scalars(prefix=f"{self.prefix}/").items()}
        entry = HistoryEntry(step=int(step), value=value, scalars=scalars, fingerprint=self.probe_set.fingerprint,
                             seconds=float(seconds), n_scored=n_scored, errors=errors, status=status,
                             scope=report.metrics.scope)
        self._add(entry)
        if status == COMPLETE and math.isfinite(value) and (
            self.state.best_value is None
            or (value < self.state.best_value if self.mode == "min" else value > self.state.best_value)
        ):
            self.state.best_value, self.state.best_step = value, int(step)
        logger.info("probattr: step %d %s=%.4f (%s %s scoring: %d of %d probes, %.1f s)", step, self.metric, value,
                    status, report.metrics.scope, n_scored, len(self.probe_set), seconds)
        return entry

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Serializable state: history, best value and step, last scored step, probe fingerprint."""
        return {"state": self.state.to_dict(), "fingerprint": self.probe_set.fingerprint,
                "metric": self.metric, "mode": self.mode}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; warns if the probe set changed since it was saved."""
        if state.get("fingerprint") not in (None, self.probe_set.fingerprint) and is_rank_zero():
            logger.warning(
                "probattr: the checkpoint's history was scored with a different probe set "
                "(fingerprint %s, now %s); new values are not comparable with it",
                str(state.get("fingerprint"))[:12], self.probe_set.fingerprint[:12],
            )
        self.state = MonitorState.from_dict(copy.deepcopy(state.get("state", {})))
