"""Word-level ``PreTrainedTokenizerFast`` tokenizers built offline with the ``tokenizers`` library.

Two ways to give the vocabulary, both deterministic:

- :func:`trained_word_tokenizer`: trained on example texts (the special tokens
  first, then the words, most frequent first), split on whitespace and punctuation;
- :func:`fixed_word_tokenizer`: ``<bos>``, ``<eos>``, ``<pad>``, ``<unk>`` as
  ids 0-3 and then the given words in order, split on whitespace only, decoded
  with spaces between words.
"""

from __future__ import annotations

from typing import Iterable, Sequence

__all__ = ["FIXED_SPECIALS", "fixed_word_tokenizer", "trained_word_tokenizer"]

#: The special tokens of :func:`fixed_word_tokenizer`, ids 0 to 3.
FIXED_SPECIALS = ("<bos>", "<eos>", "<pad>", "<unk>")


def trained_word_tokenizer(texts: Iterable[str], special_tokens: Sequence[str], **roles: str):
    """A word-level fast tokenizer trained on ``texts``.

    Parameters
    ----------
    texts : iterable of str
        The training texts; every word in them gets an id.
    special_tokens : sequence of str
        The special tokens, given the first ids in this order.
    **roles : str
        ``unk_token`` (required: the model's unknown token) and any of
        ``pad_token``, ``bos_token``, ``eos_token``, passed to
        ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=roles["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(special_tokens), min_frequency=1))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **roles)


def fixed_word_tokenizer(words: Iterable[str]):
    """A word-level fast tokenizer over :data:`FIXED_SPECIALS` (ids 0-3) and then ``words``, in order.

    Repeated words keep their first id.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(FIXED_SPECIALS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
