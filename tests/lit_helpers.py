"""Small shared fixtures for the sink and Lightning-callback tests.

* :func:`corpus` / :func:`word_tokenizer`: a templated English corpus and a
  word-level ``PreTrainedTokenizerFast`` built on it with the ``tokenizers``
  library (29 tokens; ``<bos>`` is the conditioning token).
* :func:`tiny_lm`: a GPT-2 with one layer of width 16 (about 4k parameters).
* :func:`write_probes`: a 3-probe JSONL file in the corpus' vocabulary.
* :class:`TinyLitLM`: a LightningModule around the model, with an optional
  ``scramble_from_epoch`` that re-randomises (and freezes) the weights at the
  start of that epoch (the noise-token rate then rises again: the best
  checkpoint by noise rate is not the last one).
* ``python tests/lit_helpers.py ddp OUT_DIR``: the two-process DDP run of
  ``test_lightning_callback.py`` (Lightning's ``ddp`` strategy re-launches this
  script for rank 1); each rank writes ``OUT_DIR/rank<r>.json``.
* :func:`read_wandb_records`: the records of an offline W&B run's ``.wandb``
  transaction log, decoded with W&B's own protobuf ``Record`` type.
"""

from __future__ import annotations

import itertools
import json
import struct
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, TensorDataset

try:  # the sink tests use this file without Lightning
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover
    pl = None

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "a child"]
VERBS = ["sees", "likes", "finds", "helps"]
OBJECTS = ["the ball", "a book", "the garden", "her mother", "the river"]
TAILS = ["today", "at night", "in the morning"]

PROBES = [
    {"id": "p1", "prompt": "the cat sees the ball"},
    {"id": "p2", "prompt": "a child helps her mother"},
    {"id": "p3", "prompt": "my friend finds a book at night"},
]


def corpus() -> list[str]:
    """360 templated sentences."""
    return [f"{s} {v} {o} {t} ." for s, v, o, t in itertools.product(SUBJECTS, VERBS, OBJECTS, TAILS)]


def word_tokenizer():
    """A word-level fast tokenizer over :func:`corpus` (ids 0-3 are bos, eos, pad, unk)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2, "<unk>": 3}
    for word in sorted({w for s in corpus() for w in s.split()}):
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def tiny_lm(vocab_size: int, seed: int = 0):
    """A 1-layer, width-16 GPT-2 (no dropout), seeded without touching the global RNG."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=0, eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(cfg)


def write_probes(path: Path) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBES), encoding="utf-8")
    return path


def scoring_config():
    from probattr_monitor.scoring import ScoringConfig

    return ScoringConfig(candidates="all", max_new_tokens=3, n_boot=50)


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
    ``plain_forward``: leave ``forward`` undefined (the callback must then find
    the HF child itself).
    """

    def __init__(self, tokenizer, *, lr: float = 2e-2, batch_size: int = 40,
                 scramble_from_epoch: Optional[int] = None, with_val: bool = True, seed: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = tiny_lm(len(tokenizer), seed=seed)
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


class ForwardCounter:
    """Records the input shape of every forward call of ``module`` while active."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.shapes: list[tuple] = []
        self._handle = None

    def __enter__(self) -> "ForwardCounter":
        def hook(_mod, args, kwargs):
            x = kwargs.get("input_ids", args[0] if args else None)
            self.shapes.append(tuple(x.shape) if isinstance(x, torch.Tensor) else None)

        self._handle = self.module.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


# ----------------------------------------------------------------------------- W&B offline run reading

_BLOCK = 32768
_HEADER = 7


def _wandb_log_chunks(path: Path) -> Iterator[bytes]:
    """Raw records of a W&B transaction log (LevelDB-log framing: 32 KiB blocks, 7-byte headers)."""
    buf = Path(path).read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", buf[:_HEADER])
    if ident != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    i, pending = _HEADER, b""
    while i + _HEADER <= len(buf):
        left = _BLOCK - i % _BLOCK
        if left < _HEADER:
            i += left
            continue
        _crc, n, kind = struct.unpack("<IHB", buf[i:i + _HEADER])
        i += _HEADER
        if i + n > len(buf):  # still being written
            return
        data, i = buf[i:i + n], i + n
        if kind == 1:
            yield data
        elif kind == 2:
            pending = data
        elif kind == 3:
            pending += data
        elif kind == 4:
            yield pending + data
            pending = b""


def _wandb_records(log_file: Path, timeout_s: float) -> list:
    """Every record of a finished run; waits for its ``exit`` record (W&B's core flushes asynchronously)."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout_s
    while True:
        records = []
        if log_file.stat().st_size >= _HEADER:
            for chunk in _wandb_log_chunks(log_file):
                rec = pb.Record()
                rec.ParseFromString(chunk)
                records.append(rec)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def read_wandb_records(run_dir: Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """``history`` rows (dicts of decoded JSON values), ``config`` updates and ``metrics`` definitions."""
    (log_file,) = list(Path(run_dir).glob("*.wandb"))
    out: dict[str, Any] = {"history": [], "config": {}, "metrics": []}
    for rec in _wandb_records(log_file, timeout_s):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({(it.key or "/".join(it.nested_key)): json.loads(it.value_json)
                                   for it in rec.history.item})
        elif kind in ("config", "run"):  # the run record carries wandb.init(config=...)
            updates = rec.config.update if kind == "config" else rec.run.config.update
            for it in updates:
                out["config"][it.key or "/".join(it.nested_key)] = json.loads(it.value_json)
        elif kind == "metric":
            m = rec.metric
            out["metrics"].append({"name": m.name, "glob_name": m.glob_name, "step_metric": m.step_metric,
                                   "step_sync": m.options.step_sync})
    return out


def nested_table_rows(history: list[dict], key: str) -> list[dict]:
    """History rows that carry the W&B table ``key`` (flattened as ``key/_type`` etc)."""
    return [row for row in history if row.get(f"{key}/_type") == "table-file"]


def load_wandb_table(run_dir: Path, row: dict, key: str) -> dict:
    """The ``.table.json`` a history row points to (``{"columns": [...], "data": [[...]]}``)."""
    path = Path(run_dir) / "files" / row[f"{key}/path"]
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- two-process DDP run


class MetricRecorder(pl.Callback if pl else object):  # type: ignore[misc]
    """Records ``trainer.callback_metrics[key]`` after every validation of ``fit`` (on each rank)."""

    def __init__(self, keys: list[str]):
        self.keys = keys
        self.seen: list[dict] = []

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        row = {"step": trainer.global_step}
        row.update({k: float(trainer.callback_metrics[k]) for k in self.keys if k in trainer.callback_metrics})
        self.seen.append(row)


def counting_callback_class():
    """A ProbAttrCallback that records the input shape of every scoring forward pass."""
    from probattr_monitor.callbacks.lightning import ProbAttrCallback

    class CountingCallback(ProbAttrCallback):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.forward_log: list[dict] = []

        def _score_and_log(self, trainer, pl_module, event):
            with ForwardCounter(self._model) as counter:
                super()._score_and_log(trainer, pl_module, event)
            if counter.shapes:
                self.forward_log.append({"step": trainer.global_step, "shapes": counter.shapes})

    return CountingCallback


def main_ddp(out_dir: str, probes: str) -> None:
    """Two ranks (``strategy="ddp"``, CPU, gloo); every rank writes ``rank<r>.json``."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    torch.set_num_threads(1)
    out = Path(out_dir)
    tok = word_tokenizer()
    pl.seed_everything(0)
    module = TinyLitLM(tok)
    callback_cls = counting_callback_class()
    sharded = callback_cls(probes=probes, scoring=scoring_config(), every_n_steps=4, log_dir=out / "files",
                           log_plots=False)
    full = callback_cls(probes=probes, scoring=scoring_config(), every_n_steps=4, prefix="pa_full",
                        shard_probes=False, wandb=False, log_dir=out / "files_full", log_plots=False)
    recorder = MetricRecorder(["probattr/noise_rate", "pa_full/noise_rate"])
    ckpt = ModelCheckpoint(dirpath=out / "ckpt", monitor="probattr/noise_rate", mode="min", save_top_k=1)
    wandb_logger = WandbLogger(save_dir=str(out), offline=True, project="probattr-ddp")
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=[wandb_logger],
                         callbacks=[sharded, full, recorder, ckpt], enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=1, deterministic=True)
    trainer.fit(module)
    rank = trainer.global_rank
    result = {
        "rank": rank,
        "world_size": trainer.world_size,
        "history": {cb.monitor.prefix: [[h.step, h.value] for h in cb.history] for cb in (sharded, full)},
        "seen": recorder.seen,
        "sinks": {cb.monitor.prefix: [type(s).__name__ for s in cb.sinks] for cb in (sharded, full)},
        "sink_steps": {cb.monitor.prefix: [list(s.logged_steps) for s in cb.sinks] for cb in (sharded, full)},
        "forwards": {cb.monitor.prefix: cb.forward_log for cb in (sharded, full)},
        "failures": {cb.monitor.prefix: cb.failures for cb in (sharded, full)},
        "best_model_score": None if ckpt.best_model_score is None else float(ckpt.best_model_score),
        "wandb_dir": str(Path(wandb_logger.experiment.dir).parent) if rank == 0 else None,
    }
    if rank == 0:
        wandb_logger.experiment.finish()
    (out / f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "ddp":
        main_ddp(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: python tests/lit_helpers.py ddp OUT_DIR PROBES_JSONL")
