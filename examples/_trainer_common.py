"""What ``hf_trainer_train.py`` and ``sft_trainer.py`` share: their common options and the offline W&B setup.

::

    ap = trainer_arguments(__doc__, output_dir="runs/hf_trainer", max_steps=300)
    ap.add_argument(...)                                   # the script's own options
    args = ap.parse_args(argv)
    out, use_wandb = prepare(args, wandb_project="probattr-hf-example")
    ...                                                    # report_to=["wandb"] if use_wandb else []
    trainer.train()
    wandb_dir = finish_wandb(use_wandb)                    # the offline run's files, or None
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

import torch


def trainer_arguments(doc: str, *, output_dir: str, max_steps: int) -> argparse.ArgumentParser:
    """A parser with ``--output-dir``, ``--max-steps``, ``--eval-steps``, ``--threads``, ``--no-wandb``, ``--seed``.

    ``doc`` is the script's docstring (its first line is the description);
    ``output_dir`` and ``max_steps`` are the script's defaults.
    """
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--output-dir", default=output_dir)
    ap.add_argument("--max-steps", type=int, default=max_steps)
    ap.add_argument("--eval-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads; 1 (default) is fastest for a model this small, and much faster "
                         "than several threads on a busy machine; 0 = torch's choice")
    ap.add_argument("--no-wandb", action="store_true", help="write the tables to files instead of W&B")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def prepare(args: argparse.Namespace, *, wandb_project: str) -> tuple[Path, bool]:
    """Set the threads, create ``--output-dir`` and point W&B at an offline run inside it.

    Returns ``(output directory, whether W&B is used)``: not with ``--no-wandb``,
    nor when wandb is not installed (the callback then writes its tables to files).
    The ``WANDB_*`` variables already set are kept.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    use_wandb = not args.no_wandb
    if use_wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            print("wandb is not installed: writing the tables to files instead", file=sys.stderr)
            use_wandb = False
    if use_wandb:
        os.environ.setdefault("WANDB_MODE", "offline")  # no account, no server; `wandb sync` later
        os.environ.setdefault("WANDB_DIR", str(out))
        os.environ.setdefault("WANDB_PROJECT", wandb_project)
        os.environ.setdefault("WANDB_SILENT", "true")
    return out, use_wandb


def finish_wandb(use_wandb: bool) -> Optional[str]:
    """Finish the W&B run the Trainer started, if any; return its files' directory (``wandb.run.dir``)."""
    if not use_wandb:
        return None
    import wandb

    if wandb.run is None:
        return None
    run_dir = wandb.run.dir
    wandb.finish()
    return run_dir
