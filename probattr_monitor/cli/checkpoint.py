"""Lightning (or plain PyTorch) checkpoints: weights into a Hugging Face model built from a config.

A Lightning checkpoint is a pickle whose ``"state_dict"`` holds the
LightningModule's weights. The Hugging Face model is usually an attribute of the
module, so its keys carry a prefix (``model.transformer.h.0...``); the prefix is
detected by matching the keys against those of
``AutoModelForCausalLM.from_config(config)``. The file is read with
``torch.load(..., weights_only=True)``: no arbitrary Python objects are ever
unpickled. ``hyper_parameters``, optimizer and loop states are ignored.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Optional

from probattr_monitor.cli.errors import CLIError

logger = logging.getLogger(__name__)

#: File suffixes read as PyTorch checkpoints.
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")


def find_config(ckpt: Path, config: Optional[str]) -> Path:
    """The model config of a checkpoint: ``--config``, else ``config.json`` beside it.

    Returns
    -------
    Path
        A directory holding ``config.json``, or a ``.json`` file.

    Raises
    ------
    CLIError
        ``--config`` does not exist or has no ``config.json``, or none was given
        and none lies next to the checkpoint.
    """
    if config is None:
        beside = ckpt.parent / "config.json"
        if beside.is_file():
            logger.info("using the model config next to the checkpoint: %s", beside)
            return beside
        raise CLIError(f"checkpoint {ckpt} has no model config: pass --config DIR_OR_JSON "
                       "(a Hugging Face model directory or its config.json)")
    path = Path(config)
    if not path.exists():
        raise CLIError(f"model config not found: {config}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise CLIError(f"--config {config} is a directory without config.json")
    return path


def load_config(path: Path, trust_remote_code: bool) -> Any:
    """``AutoConfig`` from a directory or a JSON file (local only)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"cannot read the model config {path}: {exc}") from None


def read_state_dict(path: Path) -> tuple[dict, dict]:
    """The tensors of a checkpoint file, loaded with ``weights_only=True``, and its step counters.

    Returns
    -------
    (state_dict, info)
        ``info`` holds Lightning's ``global_step`` and ``epoch`` when present.

    Accepts a Lightning checkpoint (``ckpt["state_dict"]``), a dict with a
    ``"model"`` / ``"model_state_dict"`` state dict, or a bare state dict.

    Raises
    ------
    CLIError
        Unreadable file, non-tensor Python objects (refused by the safe loader),
        or no state dict inside.
    """
    import pickle

    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"cannot load checkpoint {path} safely: it holds Python objects other than "
                       f"tensors and plain containers, which probattr refuses to unpickle "
                       f"(torch.load weights_only=True): {first}") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise CLIError(f"cannot read checkpoint {path}: {exc}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(ckpt, Mapping) and isinstance(ckpt.get(key), Mapping):
            state = ckpt[key]
            break
    else:
        state = ckpt
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CLIError(f"checkpoint {path} has no state dict of tensors (top-level keys: {keys})")
    info = {k: ckpt[k] for k in ("global_step", "epoch")
            if isinstance(ckpt, Mapping) and isinstance(ckpt.get(k), int) and not isinstance(ckpt.get(k), bool)}
    return dict(state), info


def _prefixes(key: str, max_depth: int = 4) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) + "." for i in range(1, min(len(parts), max_depth + 1))]


def detect_prefix(keys: list, expected: set) -> tuple[str, int]:
    """The key prefix whose removal matches the most expected keys (shortest on ties).

    Returns
    -------
    (prefix, matched)
        ``prefix`` may be ``""``; ``matched`` is how many keys then match.
    """
    counts: Counter = Counter()
    counts[""] = sum(k in expected for k in keys)
    for k in keys:
        for p in _prefixes(k):
            if k[len(p):] in expected:
                counts[p] += 1
    best = max(counts.items(), key=lambda kv: (kv[1], -len(kv[0])))
    return best


def _aliases(model: Any) -> dict:
    """Expected key -> the other keys naming the same tensor (tied weights)."""
    by_ptr: dict = {}
    for name, t in model.state_dict().items():
        by_ptr.setdefault((t.data_ptr(), tuple(t.shape)), []).append(name)
    return {n: set(group) - {n} for group in by_ptr.values() for n in group}


def load_weights(model: Any, state: Mapping, source: Path) -> str:
    """Load ``state`` into ``model`` after stripping the detected prefix; returns the prefix.

    Raises
    ------
    CLIError
        No key matches the model, weights are missing, or shapes differ.
    """
    expected = set(model.state_dict())
    keys = list(state)
    prefix, matched = detect_prefix(keys, expected)
    if matched == 0:
        raise CLIError(f"the weights in {source} do not match the model built from the config: "
                       f"checkpoint keys look like {keys[:3]}, the model expects keys like "
                       f"{sorted(expected)[:3]} (is --config the right model?)")
    mapped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] in expected}
    ignored = [k for k in keys if k[len(prefix):] not in expected or not k.startswith(prefix)]
    aliases = _aliases(model)
    missing = sorted(k for k in expected - set(mapped) if not (aliases.get(k, set()) & set(mapped)))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CLIError(f"checkpoint {source} lacks {len(missing)} weight(s) of the model built from the "
                       f"config (after removing the prefix {prefix!r}): {shown}")
    if ignored:
        logger.info("ignoring %d checkpoint entries outside the model (e.g. %s)", len(ignored), ignored[:3])
    try:
        model.load_state_dict(mapped, strict=False)
    except RuntimeError as exc:
        raise CLIError(f"the weights in {source} do not fit the model built from the config: "
                       f"{str(exc).strip().splitlines()[-1].strip()}") from None
    logger.info("loaded %d tensors from %s (prefix %r)", len(mapped), source, prefix)
    return prefix


def load_checkpoint_model(path: Path, config_path: Path, trust_remote_code: bool) -> tuple[Any, str, dict]:
    """A causal LM built from ``config_path`` with the weights of ``path``, in eval mode (float32).

    Returns
    -------
    (model, prefix, info)
        The model, the key prefix removed, and the checkpoint's ``global_step``/``epoch`` if any.
    """
    from transformers import AutoModelForCausalLM

    config = load_config(config_path, trust_remote_code)
    state, info = read_state_dict(path)
    try:
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as exc:
        raise CLIError(f"cannot build a causal LM from the config {config_path}: {exc}") from None
    prefix = load_weights(model, state, path)
    return model.float().eval(), prefix, info
