"""The two-process DDP run of ``test_lightning_callback.py``.

``python -m helpers.lit_ddp OUT_DIR PROBES_JSONL`` (with ``tests`` on
``PYTHONPATH``) trains :class:`helpers.lit.TinyLitLM` with Lightning's ``ddp``
strategy on two CPU processes (gloo); Lightning re-launches the same module
for rank 1. Each rank writes ``OUT_DIR/rank<r>.json``: the callbacks' histories,
the metrics seen by a recording callback, the sinks and the shapes of every
scoring forward pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from helpers.lit import TinyLitLM, word_tokenizer
from helpers.probes import scoring_config


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


class MetricRecorder(pl.Callback):
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
                        shard_probes=False, wandb=False, log_dir=out / "files_full", log_plots=False,
                        attribution_every=1)  # its noise_rate is recorded at every scoring
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
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m helpers.lit_ddp OUT_DIR PROBES_JSONL")
    main_ddp(sys.argv[1], sys.argv[2])
