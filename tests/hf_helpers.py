"""Tiny, fast building blocks for the Hugging Face Trainer tests.

Everything here is deterministic and CPU-only:

- :func:`make_corpus`: templated English sentences over a small vocabulary;
- :func:`make_tokenizer`: a word-level ``PreTrainedTokenizerFast`` trained on it
  with the ``tokenizers`` library (BOS/EOS/PAD/UNK specials, vocab < 100);
- :func:`make_model`: a 1-layer GPT-2 (width 16) whose initial weights have a
  wide spread, so that its next-token distributions are far from uniform and
  its noise-token rate is clearly below 1 from the first step;
- :class:`BlockDataset`: the corpus packed into fixed-length LM blocks;
- :func:`write_probes`: a few short probes in a JSONL file;
- :func:`training_args`: ``TrainingArguments`` for quick, reproducible runs;
- :class:`ZeroWeightsFrom`: a test-only callback that zeroes every weight from a
  given step on (the model becomes uniform, so its noise rate jumps to 1);
- :func:`wandb_records` / :func:`wandb_history`: read an offline W&B run
  directory back (``run-<id>.wandb`` is a LevelDB-style log of protobuf records;
  :func:`wandb_run_dir` waits until it is completely written).
"""

from __future__ import annotations

import glob
import json
import os
import random
import struct
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from probattr_monitor.scoring import ScoringConfig

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "a child", "the farmer", "her brother"]
VERBS = ["sees", "likes", "finds", "follows", "helps", "watches"]
OBJECTS = ["the ball", "a tree", "the river", "a small house", "the red car", "an old book", "the green field"]
PLACES = ["in the park", "near the river", "at school", "on the hill", "in the garden", "by the road"]
TIMES = ["every morning", "at night", "on sunday", "after lunch", "before dinner"]

SPECIALS = ["[UNK]", "[PAD]", "[BOS]", "[EOS]"]


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
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = make_corpus() if texts is None else texts
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
    )


def make_model(tokenizer, seed: int = 0, *, n_layer: int = 1, init_range: float = 0.5, dropout: float = 0.1):
    """A tiny ``GPT2LMHeadModel`` (width 16, 2 heads, 32 positions) for ``tokenizer``.

    ``init_range`` is GPT-2's ``initializer_range``: the default 0.02 gives a
    nearly uniform model (noise rate ~1); 0.5 gives peaked distributions.
    Dropout is on by default so that training consumes the RNG (a callback that
    disturbed the RNG state would change the final weights).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=n_layer, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=init_range,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg)


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


PROBES = [
    {"id": "p1", "prompt": "the cat sees the ball", "tags": ["test"]},
    {"id": "p2", "prompt": "my friend helps a child in the park", "tags": ["test"]},
    {"id": "p3", "prompt": "the farmer finds an old book", "response": "at night ."},
]


def write_probes(directory: Path, probes: list[dict] = PROBES) -> Path:
    """Write ``probes`` to ``directory/probes.jsonl`` and return the path."""
    path = Path(directory) / "probes.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in probes), encoding="utf-8")
    return path


def scoring() -> ScoringConfig:
    """Exact over the whole (tiny) vocabulary, short responses, few bootstrap draws."""
    return ScoringConfig(candidates="all", max_new_tokens=3, n_boot=50)


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
    model = make_model(tokenizer, model_seed)
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


# --------------------------------------------------------------------------- W&B offline run directory

_BLOCK = 32768
_HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version


def wandb_run_dir(wandb_dir: Path, *, timeout: float = 60.0) -> Path:
    """The single ``offline-run-*`` directory under ``wandb_dir/wandb``, once fully written.

    ``wandb.finish()`` can return before the ``wandb-core`` service has written
    the last records of an offline run (seen with wandb 0.31 on a busy machine:
    rows missing right after ``finish``, present a few seconds later), so this
    waits until the transaction log ends with its ``exit`` record.
    """
    runs = sorted(glob.glob(os.path.join(str(wandb_dir), "wandb", "offline-run-*")))
    assert len(runs) == 1, f"expected one offline run under {wandb_dir}, found {runs}"
    run_dir = Path(runs[0])
    deadline = time.monotonic() + timeout
    while True:
        try:
            if any(r.WhichOneof("record_type") == "exit" for r in wandb_records(run_dir)):
                return run_dir
        except (ValueError, OSError):  # no log yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the W&B run in {run_dir} was not completely written within {timeout} s")
        time.sleep(0.2)


def wandb_records(run_dir: Path) -> Iterator[Any]:
    """Every protobuf ``Record`` of the run's ``run-<id>.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    paths = glob.glob(os.path.join(str(run_dir), "run-*.wandb"))
    if len(paths) != 1:
        raise ValueError(f"expected one run-*.wandb file in {run_dir}, found {paths}")
    data = Path(paths[0]).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log")
    pos, buf = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # block padding
            pos += left
            continue
        if pos + 7 + length > len(data):  # a record still being written
            return
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # FULL
            buf = chunk
        elif kind == 2:  # FIRST
            buf = chunk
            continue
        elif kind == 3:  # MIDDLE
            buf += chunk
            continue
        elif kind == 4:  # LAST
            buf += chunk
        record = pb.Record()
        record.ParseFromString(buf)
        yield record


def _item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def wandb_history(run_dir: Path) -> list[dict]:
    """History rows as dicts (nested keys joined with '/'; values JSON-decoded)."""
    rows = []
    for r in wandb_records(run_dir):
        if r.WhichOneof("record_type") == "history":
            rows.append({_item_key(i): json.loads(i.value_json) for i in r.history.item})
    return rows


def wandb_config(run_dir: Path) -> dict:
    """The run config: ``wandb.init(config=...)`` then every later update (values JSON-decoded)."""
    out: dict = {}
    for r in wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        updates = r.config.update if kind == "config" else r.run.config.update if kind == "run" else []
        for i in updates:
            out[_item_key(i)] = json.loads(i.value_json)
    return out


def wandb_metric_defs(run_dir: Path) -> list[dict]:
    """``define_metric`` records: name or glob and step metric."""
    out = []
    for r in wandb_records(run_dir):
        if r.WhichOneof("record_type") == "metric":
            m = r.metric
            out.append({"name": m.name, "glob": m.glob_name, "step_metric": m.step_metric})
    return out
