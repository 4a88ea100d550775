"""Small shared building blocks for the sink and Lightning-callback tests.

* :func:`corpus` / :func:`word_tokenizer`: a templated English corpus and a
  word-level tokenizer with a fixed vocabulary over it (``<bos>`` is the
  conditioning token);
* :data:`PROBES`: three probes in the corpus' vocabulary;
* :class:`TinyLitLM`: a LightningModule around :func:`helpers.models.one_layer_gpt2`,
  with an optional ``scramble_from_epoch`` that re-randomises (and freezes) the
  weights at the start of that epoch (the noise-token rate then rises again:
  the best checkpoint by noise rate is not the last one);
* :func:`trainer_kwargs`: quiet, deterministic single-process CPU trainer settings.

The two-process DDP run is :mod:`helpers.lit_ddp`.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers.models import one_layer_gpt2
from helpers.word_tokenizers import fixed_word_tokenizer

try:  # the sink tests use this file without Lightning
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover
    pl = None

SUBJECTS = ("the cat", "the dog", "a bird", "my friend", "the teacher", "a child")
VERBS = ("sees", "likes", "finds", "helps")
OBJECTS = ("the ball", "a book", "the garden", "her mother", "the river")
TAILS = ("today", "at night", "in the morning")

PROBES = (
    {"id": "p1", "prompt": "the cat sees the ball"},
    {"id": "p2", "prompt": "a child helps her mother"},
    {"id": "p3", "prompt": "my friend finds a book at night"},
)


def corpus() -> list[str]:
    """360 templated sentences."""
    return [f"{s} {v} {o} {t} ." for s, v, o, t in itertools.product(SUBJECTS, VERBS, OBJECTS, TAILS)]


def word_tokenizer():
    """A word-level fast tokenizer over :func:`corpus` (ids 0-3 are bos, eos, pad, unk; then the words, sorted)."""
    return fixed_word_tokenizer(sorted({w for s in corpus() for w in s.split()}))


def encoded_corpus(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids (bos + sentence + eos, right-padded) and attention mask of the corpus."""
    rows = [[tokenizer.bos_token_id] + tokenizer(s, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for s in corpus()]
    length = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (length - len(r)) for r in rows])
    return ids, (ids != tokenizer.pad_token_id).long()


class TinyLitLM(pl.LightningModule if pl else torch.nn.Module):  # type: ignore[misc]
    """The tiny GPT-2 trained on :func:`corpus` (9 optimizer steps per epoch with the defaults).

    ``scramble_from_epoch``: at the start of that epoch the weights are
    re-randomised and the learning rate set to 0, so from then on the model is
    (and stays) untrained and its noise-token rate is back at its maximum.
    :class:`PlainForwardLM` is the same module without a ``forward`` (the
    callback must then find the HF child itself).
    """

    def __init__(self, tokenizer, *, lr: float = 2e-2, batch_size: int = 40,
                 scramble_from_epoch: Optional[int] = None, with_val: bool = True, seed: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = one_layer_gpt2(len(tokenizer), seed=seed)
        for m in self.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = dropout
        self.lr = lr
        self.batch_size = batch_size
        self.scramble_from_epoch = scramble_from_epoch
        self.ids, self.mask = encoded_corpus(tokenizer)
        self.with_val = with_val
        self.n_training_steps = 0

    def forward(self, input_ids, **kwargs):
        return self.model(input_ids=input_ids, **kwargs)

    def _loss(self, batch):
        ids, mask = batch
        return self.model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss

    def training_step(self, batch, batch_idx):
        self.n_training_steps += 1
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch), batch_size=len(batch[0]))

    def on_train_epoch_start(self):
        if self.scramble_from_epoch is not None and self.current_epoch == self.scramble_from_epoch:
            gen = torch.Generator().manual_seed(1000)
            with torch.no_grad():
                for p in self.model.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            for opt in self.trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = 0.0

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.ids, self.mask), batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(0))

    def val_dataloader(self):
        if not self.with_val:
            return []
        return DataLoader(TensorDataset(self.ids[:80], self.mask[:80]), batch_size=80)


class PlainForwardLM(TinyLitLM):
    """Same module without a ``forward``: the HF model is a child attribute only."""

    if pl is not None:
        forward = pl.LightningModule.forward


def trainer_kwargs(**overrides: Any) -> dict[str, Any]:
    """Quiet, deterministic single-process CPU trainer settings."""
    kw: dict[str, Any] = dict(accelerator="cpu", devices=1, deterministic=True, enable_progress_bar=False,
                              enable_model_summary=False, logger=False, num_sanity_val_steps=0,
                              enable_checkpointing=False, max_epochs=2)
    kw.update(overrides)
    return kw
