"""Settings of the budgeted estimator (:class:`Budget`), checked when they are made."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Optional, Union

from probattr_monitor.engine.validation import as_token_ids


@dataclasses.dataclass(frozen=True)
class Budget:
    """Settings of the budgeted estimator (pass as ``attribute(..., candidates=Budget(...))``).

    The defaults are the training monitor's; how they were chosen, and what
    they cost and achieve on real models, is in the README, section
    'Budgeted attribution'.

    Parameters
    ----------
    max_candidates : int, default 32
        Size of the exact set ``E`` per position (original token, prior nucleus,
        top screening scores), at least 1.
    tail_samples : int, default 32
        Distinct tail candidates drawn per position by priority sampling and
        scored exactly; 0 ignores the tail (sums over ``E`` only). Standard
        errors are NaN where fewer than two ids were sampled at random.
    nucleus : float, default 0.9
        Prior mass (of the universe) whose nucleus goes into ``E`` (capped at
        half of ``max_candidates`` when screening, all of it otherwise).
        0 disables the nucleus.
    screen : bool or int, default 1024
        An int ``m``: screen at most ``m`` ids, the top-prior ones holding
        ``SCREEN_MASS`` of the prior mass (at least ``min(m, MIN_SCREEN)``;
        both constants of :mod:`probattr_monitor.engine.screening`);
        ``True``: screen every id of the universe; ``False`` (or 0): no
        screening, the screening score is the prior.
    refine : int, default 256
        Re-screen at most this many of the best-screened ids (those holding
        ``REFINE_MASS`` of the predicted mass, at least ``min(refine,
        MIN_REFINE)``) over the first ``refine_depth`` of the suffix; 0: no
        refine stage.
    refine_depth : float, default 0.25
        Share of the suffix ``v, x_>k, y`` the refine stage reads (at least 2
        tokens; the stage is skipped where that is the whole suffix).
    seed : int, default 0
        Seed of the tail sampler. Position ``k`` draws from
        ``numpy.random.default_rng([seed, k])``: results are deterministic for
        a seed and do not depend on which other positions are scored.
    universe : sequence of int, optional
        Candidate ids the estimator is restricted to (the original token is
        always added); default: the whole output vocabulary. With a universe,
        the estimate targets exact scoring with ``candidates=universe``.
    reuse_states : bool, default True
        Keep the KV states of the screen and refine stages' rows and resume a
        later stage's row of the same id from them
        (:mod:`~probattr_monitor.engine.stages`), instead of feeding its first
        tokens again. The estimates are the same up to float rounding; it
        saves the ``reused`` term of the cost model below. The states kept at
        one position are bounded by half the engine's memory budget (rows
        beyond it are fed whole). ``False``: the cost without it (benchmarks).

    Cost model
    ----------
    In token-forwards (the engine's cost unit, ``info["token_forwards"]``), with
    ``L = len(prompt) + len(response)``, ``T_k = L - k - 1`` the suffix length at
    position ``k``, ``U_k`` the universe, ``S_k`` the screened and ``R_k`` the
    refined ids and ``d_k = max(2, ceil(refine_depth * T_k))``::

        budgeted = L + sum_k [ |S_k| + |R_k| * d_k + (|E_k| + sampled_k) * T_k - reused_k ]
        exact    = L + sum_k  |U_k| * T_k

    with ``|S_k| <= screen``, ``|R_k| <= refine``, ``|E_k| <= max_candidates``
    and ``sampled_k <= tail_samples``: the defaults cost at most
    ``1024 + 64 T_k + 64 T_k`` per position. ``reused_k`` (with
    ``reuse_states``) is one token per refined id that was screened plus, per
    scored id, the tokens its deepest screening stage fed (1 or ``d_k``):
    ``info["reused_token_forwards"]``. (On models without a KV cache
    every row also carries the prefix: ``k + 1`` per screened id, ``k + d_k``
    per refined one, ``L - 1`` per scored one.) ``info["exact_token_forwards"]``
    reports what exact scoring would have cost, and
    ``info["screen_token_forwards"]`` what the two screening stages did.

    Raises
    ------
    ValueError, TypeError
        For budgets that make no sense: fewer than one candidate, negative
        samples, a nucleus outside ``[0, 1]``, a negative seed, screen or
        refine size, a refine depth outside ``(0, 1]``, an empty or duplicated
        universe.

    Example
    -------
    >>> Budget(max_candidates=16, tail_samples=16, screen=256).screen_size
    256
    """

    max_candidates: int = 32
    tail_samples: int = 32
    nucleus: float = 0.9
    screen: Union[bool, int] = 1024
    refine: int = 256
    refine_depth: float = 0.25
    seed: int = 0
    universe: Optional[tuple] = None
    reuse_states: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.reuse_states, bool):
            raise TypeError(f"Budget.reuse_states must be True or False, got {type(self.reuse_states).__name__}")
        _check_int(self.max_candidates, "max_candidates")
        if self.max_candidates < 1:
            raise ValueError(
                f"Budget.max_candidates must be at least 1 (the original token is always scored "
                f"exactly), got {self.max_candidates}"
            )
        _check_int(self.tail_samples, "tail_samples")
        if self.tail_samples < 0:
            raise ValueError(f"Budget.tail_samples must be >= 0 (0 ignores the tail), got {self.tail_samples}")
        if isinstance(self.nucleus, bool) or not isinstance(self.nucleus, numbers.Real):
            raise TypeError(f"Budget.nucleus must be a number in [0, 1], got {type(self.nucleus).__name__}")
        if not 0.0 <= float(self.nucleus) <= 1.0:
            raise ValueError(f"Budget.nucleus must be a prior mass in [0, 1], got {self.nucleus}")
        if not isinstance(self.screen, bool):
            _check_int(self.screen, "screen", "True, False or a non-negative number of ids to screen")
            if self.screen < 0:
                raise ValueError(f"Budget.screen must be True, False or a non-negative int, got {self.screen}")
        _check_int(self.refine, "refine", "a non-negative number of ids to refine")
        if self.refine < 0:
            raise ValueError(f"Budget.refine must be a non-negative int (0: no refine stage), got {self.refine}")
        if isinstance(self.refine_depth, bool) or not isinstance(self.refine_depth, numbers.Real):
            raise TypeError(f"Budget.refine_depth must be a share of the suffix in (0, 1], "
                            f"got {type(self.refine_depth).__name__}")
        if not 0.0 < float(self.refine_depth) <= 1.0:
            raise ValueError(f"Budget.refine_depth must be a share of the suffix in (0, 1], got {self.refine_depth}")
        _check_int(self.seed, "seed")
        if self.seed < 0:
            raise ValueError(f"Budget.seed must be a non-negative integer, got {self.seed}")
        if self.universe is not None:
            if isinstance(self.universe, str):
                if self.universe != "all":
                    raise ValueError(f"Budget.universe must be 'all', None or a sequence of token ids, "
                                     f"got the string {self.universe!r}")
                object.__setattr__(self, "universe", None)
                return
            try:
                ids = as_token_ids(self.universe, "Budget.universe")
            except ValueError as err:
                if "empty" in str(err):
                    raise ValueError("Budget.universe is empty: give None (whole vocabulary) or "
                                     "at least one token id") from None
                raise
            if len(set(ids)) != len(ids):
                dup = sorted({c for c in ids if ids.count(c) > 1})[:10]
                raise ValueError(f"Budget.universe has duplicate ids: {dup}")
            object.__setattr__(self, "universe", tuple(sorted(ids)))

    @property
    def screen_size(self) -> Optional[int]:
        """Ids screened per position: ``None`` = the whole universe, 0 = none."""
        if self.screen is True:
            return None
        if self.screen is False:
            return 0
        return int(self.screen)

    def to_info(self) -> dict:
        """The settings as recorded in ``AttributionResult.info["budget"]`` (the universe by its size)."""
        return {
            "max_candidates": self.max_candidates,
            "tail_samples": self.tail_samples,
            "nucleus": self.nucleus,
            "screen": self.screen,
            "refine": self.refine,
            "refine_depth": self.refine_depth,
            "seed": self.seed,
            "universe_size": None if self.universe is None else len(self.universe),
            "reuse_states": self.reuse_states,
        }


def position_token_forwards(extra: dict, num_scored: Any, suffix_len: Any) -> Any:
    """The cost model's token-forwards of a scored position (:class:`Budget`, "Cost model"), without the full pass.

    ``|S_k| + |R_k| * d_k + num_scored * T_k - reused_k`` from what the
    estimator reports (``extra`` of ``estimate_position``, or the per-position
    arrays of ``info``): ``num_screened``, ``num_refined``, ``refine_depth``
    and ``reused_token_forwards`` (0 when absent). ``num_scored`` is the ids
    scored over the whole suffix (exact and sampled); ints or arrays alike.
    The benchmarks replaying the estimator count with it.
    """
    return (extra["num_screened"] + extra["num_refined"] * extra["refine_depth"] + num_scored * suffix_len
            - extra.get("reused_token_forwards", 0))


def _check_int(value: Any, name: str, what: str = "an integer") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Budget.{name} must be {what}, got {type(value).__name__} {value!r}")
