"""Argument types that validate numeric option values while the command line is parsed.

``type=float`` takes ``nan``, ``inf`` and ``1e999``; ``type=int`` takes ``-5``
for a count. :func:`number` builds an argparse ``type`` that accepts only
finite values within bounds, so that a bad value is a usage error (exit status
2) naming the option, before any file is read or model loaded::

    p.add_argument("--max", type=number(float))            # finite
    p.add_argument("--top-p", type=number(float, above=0, maximum=1))
    p.add_argument("--limit-probes", type=number(int, minimum=1))
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Optional, Union

Number = Union[int, float]

__all__ = ["number"]


def _text(bound: Number) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _bounds_text(minimum: Optional[Number], above: Optional[Number], maximum: Optional[Number]) -> str:
    parts = []
    if above is not None:
        parts.append(f"> {_text(above)}")
    if minimum is not None:
        parts.append(f">= {_text(minimum)}")
    if maximum is not None:
        parts.append(f"<= {_text(maximum)}")
    return " and ".join(parts)


def number(
    kind: type = float,
    *,
    minimum: Optional[Number] = None,
    above: Optional[Number] = None,
    maximum: Optional[Number] = None,
) -> Callable[[str], Number]:
    """An argparse ``type`` for a finite ``int`` or ``float`` within bounds.

    Parameters
    ----------
    kind : {int, float}
        The value's type. An ``int`` option takes only integer literals
        (``"3"``, not ``"3.0"`` or ``"1e3"``).
    minimum, maximum : int or float, optional
        Inclusive bounds.
    above : int or float, optional
        Exclusive lower bound.

    Returns
    -------
    callable
        ``convert(text) -> value``, raising :class:`argparse.ArgumentTypeError`
        (argparse prefixes the option's name: ``argument --max: ...``) for a
        malformed, non-finite or out-of-range value.
    """
    if kind not in (int, float):
        raise TypeError(f"kind must be int or float, got {kind!r}")
    noun = "an integer" if kind is int else "a finite number"
    bounds = _bounds_text(minimum, above, maximum)
    wanted = f"{noun} {bounds}" if bounds else noun

    def convert(text: str) -> Number:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r} (not a finite number)")
        if ((minimum is not None and value < minimum) or (above is not None and value <= above)
                or (maximum is not None and value > maximum)):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    convert.__name__ = kind.__name__  # argparse's fallback message names the type
    return convert
