"""What ``plain_loop.py`` and ``accelerate_loop.py`` share: data, model, monitor, checkpoints, command line.

Nothing here is about the monitor's use in a loop (that is what the two
examples show); it builds what a loop needs and saves/restores a checkpoint
that carries the monitor's state next to the model's and the optimizer's::

    loop = build_loop(out, every_n_steps=50)        # data, model, optimizer, monitor.setup(model)
    loop.step = restore(out / "last.pt", loop)      # on resume: weights, optimizer, monitor history
    torch.save(checkpoint(model, loop.opt, loop.monitor, step), out / "best.pt")

The data, tokenizer and probes are the Lightning example's (a generated corpus
and a word-level tokenizer); the model is a small GPT-2 trained from scratch.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightning_train import PROBES, encode, make_corpus, train_tokenizer  # noqa: E402  (the example's data)


def make_model(tokenizer: Any, *, n_layer: int = 2, n_embd: int = 64, seed: int = 0) -> Any:
    """A small GPT-2 sized to ``tokenizer``, initialised from ``seed``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=4,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(cfg)


def make_monitor(probes: Path, tokenizer: Any, *, every_n_steps: int) -> Any:
    """The monitor: score ``probes`` every ``every_n_steps`` optimizer steps (not at validation)."""
    from probattr_monitor import ProbAttrMonitor, Schedule, ScoringConfig

    return ProbAttrMonitor(str(probes), tokenizer=tokenizer,
                           scoring=ScoringConfig(candidates="all", max_new_tokens=4, n_boot=200),
                           schedule=Schedule(every_n_steps=every_n_steps, on_validation_end=False))


def write_probes(out: Path) -> Path:
    """Write the example's probes to ``out/probes.jsonl``."""
    path = out / "probes.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBES), encoding="utf-8")
    return path


@dataclass
class Loop:
    """What a training loop starts from: token ids and mask, model, optimizer, monitor, and the step."""

    ids: torch.Tensor
    mask: torch.Tensor
    model: Any
    opt: torch.optim.Optimizer
    monitor: Any
    step: int = 0


def build_loop(out: Path, *, every_n_steps: int, n_train: int = 2_000, lr: float = 3e-3, seed: int = 0,
               n_layer: int = 2, n_embd: int = 64) -> Loop:
    """Create ``out`` and build the data, model, optimizer and monitor; ``monitor.setup(model)`` has run.

    Bad probes, or a probe too long for the model's context, fail here, not mid-training.
    """
    out.mkdir(parents=True, exist_ok=True)
    sentences = make_corpus(n_train, seed=seed)
    tokenizer = train_tokenizer(sentences)
    ids, mask = encode(sentences, tokenizer)
    model = make_model(tokenizer, n_layer=n_layer, n_embd=n_embd, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    monitor = make_monitor(write_probes(out), tokenizer, every_n_steps=every_n_steps)
    monitor.setup(model)
    return Loop(ids, mask, model, opt, monitor)


def checkpoint(model: Any, opt: torch.optim.Optimizer, monitor: Any, step: int) -> dict:
    """The checkpoint dict: the monitor's history, best value and step travel with the weights."""
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "probattr": monitor.state_dict()}


def restore(path: Path, loop: Loop) -> int:
    """Load a :func:`checkpoint` into ``loop``'s model, optimizer and monitor; return its step."""
    ckpt = torch.load(path, weights_only=False)
    loop.model.load_state_dict(ckpt["model"])
    loop.opt.load_state_dict(ckpt["optimizer"])
    loop.monitor.load_state_dict(ckpt["probattr"])  # history, best value and step
    return ckpt["step"]


def parse_args(argv: Any, *, description: str, default_out: Path) -> argparse.Namespace:
    """The examples' command line: ``--out``, ``--steps``, ``--every-n-steps``, ``--n-train``, ``--resume``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--steps", type=int, default=200, help="total optimizer steps")
    parser.add_argument("--every-n-steps", type=int, default=50)
    parser.add_argument("--n-train", type=int, default=2_000)
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    return parser.parse_args(argv)
