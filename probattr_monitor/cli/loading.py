"""What the commands load: ``--model`` (a Hugging Face directory, a GGUF file, a Lightning
``.ckpt`` + config, or ``smollm2``) and ``--probes`` (cut to ``--limit-probes``).

Everything is local: a path that does not exist is an error, never a hub id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from probattr_monitor.cli.checkpoint import CHECKPOINT_SUFFIXES, find_config, load_checkpoint_model
from probattr_monitor.cli.errors import CLIError
from probattr_monitor.models import TOKENIZER_FILES, has_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model, its tokenizer and what the report records about where they came from."""

    model: Any
    tokenizer: Any
    name: str
    meta: dict = field(default_factory=dict)


def default_name(spec: str) -> str:
    """The checkpoint's name: directory name, or file name without suffix."""
    if spec == "smollm2":
        return "smollm2"
    path = Path(spec)
    return path.stem if path.suffix in CHECKPOINT_SUFFIXES + (".gguf",) else (path.resolve().name or str(path))


def vocab_size(model: Any) -> int:
    """Size of the model's output vocabulary."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    return int(model.config.vocab_size)


def load_tokenizer(path: Path, trust_remote_code: bool, hint: str = "") -> Any:
    """``AutoTokenizer`` from a local directory holding tokenizer files."""
    from transformers import AutoTokenizer

    if not path.exists():
        raise CLIError(f"tokenizer not found: {path}")
    if not has_tokenizer(path):
        raise CLIError(f"{path} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...){hint}")
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"cannot load a tokenizer from {path}{hint}: {_first_line(exc)}") from None


def first_probes(probes: Any, limit: Optional[int]) -> Any:
    """The first ``limit`` probes of a probe set (``--limit-probes``).

    Parameters
    ----------
    probes : ProbeSet
        The loaded probe set.
    limit : int, optional
        How many probes to keep; ``None`` keeps them all.

    Returns
    -------
    ProbeSet
        ``probes`` itself when nothing is cut, else a set of the same name and
        source holding the first ``limit`` probes (and their source lines).
    """
    from probattr_monitor.probes import ProbeSet

    if limit is None or limit >= len(probes):
        return probes
    return ProbeSet(name=probes.name, probes=probes.probes[:limit], source=probes.source,
                    lines=None if probes.lines is None else probes.lines[:limit])


def load_probes(spec: str, limit: Optional[int] = None) -> Any:
    """Load ``--probes`` (a built-in set's name or a probe file), cut to ``--limit-probes``.

    Parameters
    ----------
    spec : str
        A built-in probe set (``paper``, ``reasonable-en``) or a ``.jsonl`` /
        ``.yaml`` probe file.
    limit : int, optional
        Keep only the first ``limit`` probes (see :func:`first_probes`).

    Returns
    -------
    ProbeSet

    Raises
    ------
    CLIError
        The set is unknown, or the file is missing or malformed
        (exit status :data:`~probattr_monitor.cli.errors.EXIT_INPUT`).
    """
    from probattr_monitor.probes import load_probe_set

    try:
        probes = load_probe_set(spec)
    except (ValueError, FileNotFoundError, TypeError, OSError) as exc:
        raise CLIError(f"cannot load probe set {spec!r}: {exc}") from None
    return first_probes(probes, limit)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(
    spec: str,
    *,
    config: Optional[str] = None,
    tokenizer: Optional[str] = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
    dtype: Optional[str] = None,
) -> LoadedModel:
    """Load ``--model`` with its tokenizer (``dtype``: ``"bfloat16"``, ``"float16"`` or ``"float32"``, or as loaded).

    Raises
    ------
    CLIError
        Missing path, unsupported file, checkpoint without config, no tokenizer,
        weights that do not fit.
    """
    path = Path(spec)
    if spec != "smollm2" and not path.exists():
        raise CLIError(f"model not found: {spec} (give a local Hugging Face model directory, a .gguf "
                       f"file, a Lightning .ckpt with --config, or 'smollm2')")
    if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        loaded = _load_checkpoint(path, config, tokenizer, trust_remote_code)
    else:
        if config is not None:
            logger.warning("--config is only used with .ckpt checkpoints; ignoring it")
        loaded = _load_pretrained(spec, path, tokenizer, trust_remote_code)
    if dtype is not None:
        import torch

        loaded.model.to(getattr(torch, dtype))  # the engine reduces half-precision logits in float32
        loaded.meta["dtype"] = dtype
    if device != "cpu":
        try:
            loaded.model.to(device)
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise CLIError(f"cannot move the model to device {device!r}: {_first_line(exc)}") from None
    loaded.meta["device"] = device
    return loaded


def _load_checkpoint(path: Path, config: Optional[str], tokenizer: Optional[str],
                     trust_remote_code: bool) -> LoadedModel:
    config_path = find_config(path, config)
    config_dir = config_path if config_path.is_dir() else config_path.parent
    logger.info("loading checkpoint %s with config %s", path, config_path)
    model, prefix, info = load_checkpoint_model(path, config_path, trust_remote_code)
    if tokenizer is not None:
        tok_path = Path(tokenizer)
        tok = load_tokenizer(tok_path, trust_remote_code)
    else:
        tok_path, tok = None, None
        for cand in dict.fromkeys([config_dir, path.parent]):
            try:
                tok = load_tokenizer(cand, trust_remote_code)
            except CLIError:
                continue
            tok_path = cand
            break
        if tok is None:
            raise CLIError(f"no tokenizer for checkpoint {path} (looked in {config_dir}"
                           + (f" and {path.parent}" if path.parent != config_dir else "")
                           + "): pass --tokenizer DIR")
    meta = {"kind": "checkpoint", "path": str(path), "config": str(config_path),
            "tokenizer": str(tok_path), "state_dict_prefix": prefix, **info}
    return LoadedModel(model, tok, default_name(str(path)), meta)


def _load_pretrained(spec: str, path: Path, tokenizer: Optional[str], trust_remote_code: bool) -> LoadedModel:
    from probattr_monitor.models import load_model_and_tokenizer

    kind = "smollm2" if spec == "smollm2" else ("gguf" if path.suffix == ".gguf" else "hf-directory")
    if path.is_file() and kind != "gguf":
        raise CLIError(f"{spec} is a file but neither a .gguf model nor a {'/'.join(CHECKPOINT_SUFFIXES)} "
                       f"checkpoint; give a model directory, a .gguf file or a checkpoint with --config")
    if path.is_dir() and not (path / "config.json").is_file():
        raise CLIError(f"{spec} is not a Hugging Face model directory: it has no config.json "
                       f"(for a Lightning checkpoint give the .ckpt file and --config)")
    if tokenizer is None and path.is_dir() and not has_tokenizer(path):
        raise CLIError(f"{spec} has no tokenizer files: pass --tokenizer DIR")
    if tokenizer is None:
        try:
            model, tok = load_model_and_tokenizer(spec, trust_remote_code=trust_remote_code)
        except FileNotFoundError as exc:
            raise CLIError(str(exc)) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CLIError(f"cannot load the model or tokenizer from {spec}: {_first_line(exc)} "
                           f"(pass --tokenizer DIR if the tokenizer lives elsewhere)") from None
        tok_source = spec
    else:
        tok = load_tokenizer(Path(tokenizer), trust_remote_code)
        model = _pretrained_model(spec, path, trust_remote_code)
        tok_source = tokenizer
    meta = {"kind": kind, "path": spec, "tokenizer": str(tok_source)}
    return LoadedModel(model, tok, default_name(spec), meta)


def _pretrained_model(spec: str, path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoModelForCausalLM

    if spec == "smollm2":
        from probattr_monitor.models import smollm2_gguf_path

        try:
            path = smollm2_gguf_path()
        except FileNotFoundError as exc:
            raise CLIError(str(exc)) from None
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    directory = str(path)
    if path.is_file():
        directory, kwargs["gguf_file"] = str(path.parent), path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"cannot load the model from {spec}: {_first_line(exc)}") from None
    return model.float().eval()
