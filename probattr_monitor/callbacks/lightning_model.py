"""Finding the causal LM to score inside a LightningModule.

Order: an explicit dotted ``model_attr``; else the LightningModule itself when
its ``forward(input_ids=...)`` returns ``[batch, seq, vocab]`` ``.logits``; else
its unique outermost ``transformers.PreTrainedModel`` child. Each candidate is
checked with a 2-token trial forward (under the training-state guard, so
training is not disturbed). Under Lightning's FSDP the root wrapper is called
in place of the LightningModule it wraps.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from probattr_monitor.callbacks._lightning_compat import pl
from probattr_monitor.callbacks.common import trial_forward

__all__ = ["context_model", "find_causal_lm", "forward_module", "trial_forward", "transformers_children"]


def transformers_children(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The outermost ``transformers.PreTrainedModel`` submodules of ``module`` (name, module)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return []
    found: list[tuple[str, torch.nn.Module]] = []
    for name, sub in module.named_modules():
        if name and isinstance(sub, PreTrainedModel) and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, sub))
    return found


def forward_module(strategy: Any, pl_module: Any, module: torch.nn.Module) -> torch.nn.Module:
    """The module to call: under FSDP the root wrapper (``strategy.model``) stands for the LightningModule."""
    if module is pl_module:
        root = getattr(strategy, "model", None)
        if root is not None and root is not pl_module and type(root).__name__ == "FullyShardedDataParallel":
            return root
    return module


def context_model(pl_module: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
    """The module whose ``config`` gives the context window: the unique HF child, else ``model``."""
    children = transformers_children(pl_module)
    return children[0][1] if len(children) == 1 else model


def _attribute(pl_module: Any, model_attr: str) -> torch.nn.Module:
    obj: Any = pl_module
    for part in model_attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model_attr={model_attr!r}: {type(obj).__name__} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, torch.nn.Module):
        raise ValueError(f"model_attr={model_attr!r} is a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def find_causal_lm(pl_module: "pl.LightningModule", tokenizer: Any, *, model_attr: Optional[str] = None,
                   strategy: Any = None) -> torch.nn.Module:
    """The causal LM to score in ``pl_module`` (see the module documentation for the order).

    Parameters
    ----------
    pl_module : LightningModule
    tokenizer : transformers tokenizer
        Gives the token of the trial forward.
    model_attr : str, optional
        Dotted attribute of ``pl_module`` holding the model.
    strategy : Lightning strategy, optional
        ``trainer.strategy``: under FSDP the trial forward of the LightningModule
        goes through the root wrapper.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        No candidate passes the trial forward (the message says why for each,
        and to pass ``model_attr``).
    """
    if model_attr is not None:
        obj = _attribute(pl_module, model_attr)
        problem = trial_forward(obj, tokenizer)
        if problem:
            raise ValueError(f"model_attr={model_attr!r} is not a causal LM returning `.logits`: {problem}")
        return obj
    problems = []
    if type(pl_module).forward is not pl.LightningModule.forward:
        caller = pl_module if strategy is None else forward_module(strategy, pl_module, pl_module)
        problem = trial_forward(caller, tokenizer)
        if problem is None:
            return pl_module
        problems.append(f"the LightningModule: {problem}")
    children = transformers_children(pl_module)
    if len(children) == 1:
        name, child = children[0]
        problem = trial_forward(child, tokenizer)
        if problem is None:
            return child
        problems.append(f"{name}: {problem}")
    elif len(children) > 1:
        problems.append(f"several transformers models ({', '.join(n for n, _ in children)})")
    else:
        problems.append("no transformers.PreTrainedModel child")
    raise ValueError(
        "ProbAttrCallback cannot find the causal LM to score (" + "; ".join(problems)
        + "): pass model_attr='<attribute of the LightningModule>'"
    )
