"""Training runs that save checkpoints, run as a subprocess while ``probattr watch`` scores them.

``python -m helpers.watch_train hf OUT`` trains the tiny GPT-2 of :mod:`helpers.hf`
with the HF Trainer for 6 steps, saving ``OUT/out/checkpoint-{2,4,6}/`` (with
the tokenizer). ``python -m helpers.watch_train lightning OUT`` trains
:class:`helpers.lit.TinyLitLM` for 3 epochs with a ``ModelCheckpoint`` that keeps
every epoch's ``.ckpt`` in ``OUT`` (plus ``config.json`` and the tokenizer
beside them, which ``probattr`` reads a ``.ckpt`` with). ``--pause-s`` sleeps
after each save, so that the watcher runs while training goes on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _hf(out: Path, pause_s: float) -> None:
    from transformers import TrainerCallback

    from helpers.hf import make_trainer

    class Pause(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            time.sleep(pause_s)

    trainer = make_trainer(out, [Pause()], max_steps=6, save_strategy="steps", save_steps=2, eval_strategy="no",
                           logging_steps=100)
    trainer.train()


def _lightning(out: Path, pause_s: float) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from helpers.lit import TinyLitLM, trainer_kwargs, word_tokenizer

    tok = word_tokenizer()
    module = TinyLitLM(tok, with_val=False)
    out.mkdir(parents=True, exist_ok=True)
    module.model.config.save_pretrained(out)
    tok.save_pretrained(out)

    class Pause(pl.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            time.sleep(pause_s)

    ckpt = ModelCheckpoint(dirpath=str(out), save_top_k=-1, every_n_epochs=1)
    trainer = pl.Trainer(**trainer_kwargs(enable_checkpointing=True, callbacks=[ckpt, Pause()], max_epochs=3))
    trainer.fit(module)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("hf", "lightning"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--pause-s", type=float, default=0.0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    (_hf if args.kind == "hf" else _lightning)(args.out, args.pause_s)


if __name__ == "__main__":
    main()
