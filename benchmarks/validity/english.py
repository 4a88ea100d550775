"""Real English text from files already on the machine, split into training and held-out paragraphs.

The corpus is the license texts of ``/usr/share/common-licenses`` (plain English
prose, present on every Debian-based machine) and, when more text is wanted,
the module docstrings of the running Python's standard library. Paragraphs
(blank-line separated, whitespace collapsed) are de-duplicated and assigned to
the held-out split by a hash of their text, so the split is deterministic and
no paragraph appears in both.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

LICENSE_DIR = Path("/usr/share/common-licenses")
#: Files of LICENSE_DIR used, in this order (links to the same text are skipped by de-duplication).
LICENSE_FILES = ("GPL-3", "GPL-2", "LGPL-3", "LGPL-2.1", "GFDL-1.3", "GFDL-1.2", "Apache-2.0", "MPL-2.0",
                 "Artistic", "CC0-1.0", "BSD")
MIN_PARAGRAPH_CHARS = 40


@dataclass(frozen=True)
class EnglishCorpus:
    """Training and held-out paragraphs; ``sources`` lists the files read."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]
    sources: tuple[str, ...]

    def text(self, split: str) -> str:
        return "\n\n".join(self.train if split == "train" else self.held_out)


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs of ``text`` with whitespace collapsed; short ones dropped."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        p = " ".join(block.split())
        if len(p) >= MIN_PARAGRAPH_CHARS:
            out.append(p)
    return out


def held_out_of(paragraph: str, held_out_fraction: float) -> bool:
    """Whether ``paragraph`` belongs to the held-out split (a hash of its text, not of its position)."""
    h = int.from_bytes(hashlib.sha256(paragraph.encode("utf-8")).digest()[:8], "big")
    return (h / 2**64) < held_out_fraction


def stdlib_docstrings(limit_files: Optional[int] = None) -> Iterable[tuple[str, str]]:
    """(path, module docstring) of the standard library's top-level modules, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))[:limit_files]
    for f in files:
        try:
            doc = ast.get_docstring(ast.parse(f.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        if doc:
            yield str(f), doc


def build_corpus(*, held_out_fraction: float = 0.5, with_stdlib: bool = True,
                 license_dir: Path = LICENSE_DIR) -> EnglishCorpus:
    """Read the texts, de-duplicate paragraphs, split them by hash.

    Raises
    ------
    FileNotFoundError
        If none of the source files exists.
    """
    texts: list[tuple[str, str]] = []
    for name in LICENSE_FILES:
        f = license_dir / name
        if f.is_file():
            texts.append((str(f), f.read_text(encoding="utf-8", errors="replace")))
    if with_stdlib:
        texts.extend(stdlib_docstrings())
    if not texts:
        raise FileNotFoundError(f"no English source text found (looked in {license_dir} and the stdlib)")
    seen: set[str] = set()
    train, held = [], []
    for _, text in texts:
        for p in paragraphs(text):
            if p in seen:
                continue
            seen.add(p)
            (held if held_out_of(p, held_out_fraction) else train).append(p)
    return EnglishCorpus(tuple(train), tuple(held), tuple(path for path, _ in texts))


# --- the English regime of the validity study: tokenizer, sequences and probes -------------------------

#: Start token of the study's English tokenizer (id 0, prepended by the product as BOS).
START = "<s>"


def train_tokenizer(paragraphs_: Sequence[str], vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``paragraphs_`` only, ``<s>`` at id 0.

    Byte-level, so every text (held-out text included) encodes without unknown
    tokens and decodes back to itself.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[START], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(list(paragraphs_), trainer=trainer)
    if core.token_to_id(START) != 0:
        raise RuntimeError("the start token did not get id 0")
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=START, eos_token=START, pad_token=START)


def token_stream(tokenizer, paragraphs_: Sequence[str]) -> list[int]:
    """The ids of ``paragraphs_``, each paragraph followed by the start token (its separator)."""
    out: list[int] = []
    for p in paragraphs_:
        out.extend(tokenizer.encode(p, add_special_tokens=False))
        out.append(0)
    return out


def windows(ids: Sequence[int], length: int, stride: int) -> torch.Tensor:
    """``[N, length]`` windows of ``ids`` every ``stride`` tokens, each starting with the start token."""
    body = length - 1
    rows = [[0, *ids[s:s + body]] for s in range(0, len(ids) - body + 1, stride)]
    return torch.tensor(rows, dtype=torch.long)


def split_held_out(held_out: Sequence[str], *, probe_fraction: float = 0.15,
                   val_fraction: float = 0.15) -> tuple[list[str], list[str], list[str]]:
    """Held-out paragraphs as (probe, validation, truth) parts, by a second hash of each paragraph."""
    probe, val, truth = [], [], []
    for p in held_out:
        h = int.from_bytes(hashlib.sha256(b"part:" + p.encode("utf-8")).digest()[:8], "big") / 2**64
        (probe if h < probe_fraction else val if h < probe_fraction + val_fraction else truth).append(p)
    return probe, val, truth


def probe_prompts(tokenizer, paragraphs_: Sequence[str], num: int, tokens: int, seed: int) -> list[str]:
    """``num`` prompts of about ``tokens`` tokens cut from ``paragraphs_`` at word starts (seeded).

    A prompt is the text of ``tokens`` consecutive tokens of one paragraph,
    starting and ending at a word boundary, so it re-encodes to the same ids.
    """
    rng = np.random.default_rng(10_000 + seed)
    order = rng.permutation(len(paragraphs_))
    out: list[str] = []
    for i in order:
        ids = tokenizer.encode(paragraphs_[i], add_special_tokens=False)
        pieces = tokenizer.convert_ids_to_tokens(ids)
        starts = [j for j, t in enumerate(pieces) if t.startswith("Ġ") and j + tokens < len(ids)
                  and pieces[j + tokens].startswith("Ġ")]
        if not starts:
            continue
        j = starts[int(rng.integers(len(starts)))]
        out.append(tokenizer.decode(ids[j:j + tokens]).strip())
        if len(out) == num:
            break
    return out
