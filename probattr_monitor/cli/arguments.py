"""Argument types that validate numeric option values while the command line is parsed.

``type=float`` takes ``nan``, ``inf`` and ``1e999``; ``type=int`` takes ``-5``
for a count. :func:`number` builds an argparse ``type`` that accepts only
finite values within bounds, so that a bad value is a usage error (exit status
2) naming the option, before any file is read or model loaded::

    p.add_argument("--max", type=number(float))            # finite
    p.add_argument("--top-p", type=number(float, above=0, maximum=1))
    p.add_argument("--limit-probes", type=number(int, minimum=1))

:func:`add_model_arguments` adds the options that say which model and probes a
command loads, the same for ``score``, ``evaluate`` and ``watch``;
:func:`add_generation_arguments` those of the responses ``score`` and
``evaluate`` generate.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Optional, Union

Number = Union[int, float]

__all__ = ["add_generation_arguments", "add_model_arguments", "number"]


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


def add_model_arguments(
    group: "argparse._ActionsContainer",
    *,
    probes_default: str,
    model: bool = True,
    dtype: bool = True,
    torchrun: bool = True,
) -> None:
    """Add the options naming the model and probes a command loads.

    ``--model`` (with ``model``), ``--config``, ``--tokenizer``, ``--probes``,
    ``--limit-probes``, ``--trust-remote-code``, ``--device``, ``--dtype``
    (with ``dtype``) and ``--threads``, read by
    :func:`~probattr_monitor.cli.loading.load_model` and
    :func:`~probattr_monitor.cli.loading.load_probes`.

    Parameters
    ----------
    group : argparse parser or argument group
        Where the options go.
    probes_default : str
        The default of ``--probes``.
    model : bool
        Add ``--model`` (``watch`` reads its checkpoints from a directory instead).
    dtype : bool
        Add ``--dtype``.
    torchrun : bool
        The command runs under torchrun: ``--device``'s help says how ``cuda``
        is read there.
    """
    positive_int = number(int, minimum=1)
    if model:
        group.add_argument("--model", "-m", required=True, metavar="M",
                           help="local HF model directory, .gguf file, Lightning .ckpt (with --config), or 'smollm2'")
    group.add_argument("--probes", "-p", default=probes_default, metavar="SET",
                       help="built-in probe set (paper, reasonable-en; see 'probattr probes') or a .jsonl/.yaml "
                            "probe file (default: %(default)s)")
    group.add_argument("--config", metavar="DIR_OR_JSON",
                       help="model config for a .ckpt: a HF model directory or a config.json "
                            "(default: config.json next to the checkpoint)")
    group.add_argument("--tokenizer", metavar="DIR",
                       help="tokenizer directory (default: the model directory; for a .ckpt, the --config "
                            "directory or the checkpoint's directory)")
    group.add_argument("--limit-probes", type=positive_int, metavar="N", help="use only the first N probes of the set")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="allow custom model code shipped with the model (off by default)")
    group.add_argument("--device", default="cpu",
                       help="torch device to run on (default: %(default)s"
                            + ("; under torchrun 'cuda' is cuda:LOCAL_RANK)" if torchrun else ")"))
    if dtype:
        group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                           help="run the model's forwards in this dtype (default: as loaded, float32 for a .ckpt); "
                                "log-softmax reductions stay float32/float64")
    group.add_argument("--threads", type=positive_int, metavar="N",
                       help="CPU threads torch may use (default: torch's choice; 1 is often fastest for small "
                            "models on a busy machine)")


def add_generation_arguments(group: "argparse._ActionsContainer", *, max_new_tokens: int) -> None:
    """Add ``--top-p``, ``--num-samples`` and ``--max-new-tokens``: how a response is generated.

    Parameters
    ----------
    group : argparse parser or argument group
        Where the options go.
    max_new_tokens : int
        The default of ``--max-new-tokens``.
    """
    positive_int = number(int, minimum=1)
    group.add_argument("--top-p", type=number(float, above=0, maximum=1), default=0.9, metavar="P",
                       help="nucleus mass of top-p decoding (default: %(default)s)")
    group.add_argument("--num-samples", type=positive_int, default=20, metavar="K",
                       help="top-p samples drawn; the most frequent response is used (default: %(default)s)")
    group.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens, metavar="N",
                       help="response length bound (default: %(default)s)")
