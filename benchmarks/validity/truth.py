"""A language's true distribution as a causal LM, and a word-level tokenizer for it.

:class:`TrueLM` returns the exact ``log P(x_{t+1} | x_<=t)`` of a
:class:`~benchmarks.validity.languages.Language` as its logits, so the engine
scores the *true* model like any checkpoint: its AS, H and H' are the floor a
converging checkpoint should approach, and its per-token quantities are the
language's true contextual distributions ``P(x_k | rest of prompt[, response])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import torch
from torch import nn

from benchmarks.validity.languages import BOS_ID, Language


@dataclass
class TrueLMOutput:
    """What :class:`TrueLM` returns: ``logits`` only (no cache)."""

    logits: torch.Tensor


class TrueLM(nn.Module):
    """The exact next-token distribution of ``language`` as a model without a KV cache.

    ``forward(input_ids)`` returns float64 logits ``[B, T, V]`` equal to the true
    log-probabilities (they are normalised, so ``log_softmax`` leaves them as
    they are). Every row must start with the start token.
    """

    def __init__(self, language: Language):
        super().__init__()
        self.language = language
        self.config = SimpleNamespace(vocab_size=language.vocab_size)
        # A parameter so that device and dtype are discoverable like any model's.
        self.register_buffer("_anchor", torch.zeros((), dtype=torch.float64))

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                **kwargs) -> TrueLMOutput:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("TrueLM does not take padded rows")
        return TrueLMOutput(logits=self.language.next_token_log_probs(input_ids.cpu()))


def word_tokenizer(language: Language):
    """A ``PreTrainedTokenizerFast`` mapping each word of ``language`` to its id.

    The start token ``<s>`` (id 0) is the BOS token the product prepends; text
    is split on whitespace. Unknown words map to the start token's id, which no
    probe contains (probes are sampled from the language).
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(language.words)}
    if vocab.get("<s>") != BOS_ID:
        raise ValueError("the language's token 0 must be '<s>'")
    core = Tokenizer(WordLevel(vocab, unk_token="<s>"))
    core.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="<s>", unk_token="<s>",
                                  pad_token="<s>")
    return tok
