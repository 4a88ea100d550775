"""Tiny, fast building blocks for the Hugging Face Trainer tests.

Everything here is deterministic and CPU-only:

- :func:`make_corpus`: templated English sentences over a small vocabulary;
- :func:`make_tokenizer`: a word-level tokenizer trained on it (BOS/EOS/PAD/UNK
  specials, vocab < 100);
- :func:`helpers.models.trainer_gpt2` (the model of :func:`make_trainer`): a
  1-layer GPT-2 (width 16) whose initial weights have a wide spread, so that
  its next-token distributions are far from uniform and its noise-token rate
  is clearly below 1 from the first step;
- :class:`BlockDataset`: the corpus packed into fixed-length LM blocks;
- :data:`PROBES`: three short probes in the corpus' vocabulary;
- :func:`training_args` / :func:`make_trainer`: ``TrainingArguments`` and a
  ``Trainer`` for quick, reproducible runs;
- :class:`ZeroWeightsFrom`: a test-only callback that zeroes every weight from a
  given step on (the model becomes uniform, so its noise rate jumps to 1).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

import torch

from helpers.models import trainer_gpt2
from helpers.word_tokenizers import trained_word_tokenizer

SUBJECTS = ("the cat", "the dog", "a bird", "my friend", "the teacher", "a child", "the farmer", "her brother")
VERBS = ("sees", "likes", "finds", "follows", "helps", "watches")
OBJECTS = ("the ball", "a tree", "the river", "a small house", "the red car", "an old book", "the green field")
PLACES = ("in the park", "near the river", "at school", "on the hill", "in the garden", "by the road")
TIMES = ("every morning", "at night", "on sunday", "after lunch", "before dinner")

SPECIALS = ("[UNK]", "[PAD]", "[BOS]", "[EOS]")


def make_corpus(n: int = 300, seed: int = 0) -> list[str]:
    """``n`` templated sentences ("the cat sees the ball in the park every morning .")."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
        if rng.random() < 0.7:
            parts.append(rng.choice(PLACES))
        if rng.random() < 0.5:
            parts.append(rng.choice(TIMES))
        out.append(" ".join(parts) + " .")
    return out


def make_tokenizer(texts: Optional[list[str]] = None):
    """A word-level fast tokenizer trained on ``texts`` (default: :func:`make_corpus`)."""
    texts = make_corpus() if texts is None else texts
    return trained_word_tokenizer(texts, SPECIALS, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                  eos_token="[EOS]")


class BlockDataset(torch.utils.data.Dataset):
    """``texts`` joined by EOS, after a BOS, and cut into blocks of ``block`` tokens."""

    def __init__(self, tokenizer, texts: list[str], block: int = 16) -> None:
        ids: list[int] = [tokenizer.bos_token_id]
        for t in texts:
            ids += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(ids) // block
        self.blocks = torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict:
        x = self.blocks[i]
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}


PROBES = (
    {"id": "p1", "prompt": "the cat sees the ball", "tags": ["test"]},
    {"id": "p2", "prompt": "my friend helps a child in the park", "tags": ["test"]},
    {"id": "p3", "prompt": "the farmer finds an old book", "response": "at night ."},
)


def training_args(output_dir: Path, **overrides: Any):
    """``TrainingArguments`` for short, reproducible CPU runs (no reporting unless asked)."""
    from transformers import TrainingArguments

    kw: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=12,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=3e-3,
        warmup_steps=0,
        logging_steps=4,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    kw.update(overrides)
    return TrainingArguments(**kw)


def make_trainer(tmp_path: Path, callbacks: list, *, model_seed: int = 0, eval_dataset: Any = "default",
                 tokenizer=None, pass_tokenizer: bool = True, **args_overrides: Any):
    """A ``Trainer`` for the tiny model on the templated corpus with ``callbacks``."""
    from transformers import Trainer

    tokenizer = tokenizer or make_tokenizer()
    model = trainer_gpt2(tokenizer, model_seed)
    train = BlockDataset(tokenizer, make_corpus(300, seed=1))
    if isinstance(eval_dataset, str) and eval_dataset == "default":
        eval_dataset = BlockDataset(tokenizer, make_corpus(40, seed=2))
    return Trainer(
        model=model,
        args=training_args(tmp_path / "out", **args_overrides),
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=tokenizer if pass_tokenizer else None,
        callbacks=callbacks,
    )


def state_dict_copy(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class ZeroWeightsFrom:
    """Factory of a ``TrainerCallback`` that zeroes every parameter at each step >= ``step``.

    A GPT-2 with all-zero weights predicts the uniform distribution: every AS is
    exactly 0 and every contextual entropy maximal, so every scored token is a
    noise token (noise rate 1). Training keeps running, but the zeroing is
    repeated after each optimizer step, so every later evaluation sees it.
    """

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class _Zero(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step >= step:
                    with torch.no_grad():
                        for p in model.parameters():
                            p.zero_()

        return _Zero()
