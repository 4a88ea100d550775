"""The monitor in a plain PyTorch training loop: score, gate, save and resume by hand.

No Lightning, no Trainer: :class:`~probattr_monitor.ProbAttrMonitor` is called
directly. The few lines that matter::

    monitor = ProbAttrMonitor(probes, tokenizer=tokenizer, scoring=ScoringConfig(...))
    monitor.setup(model)                        # checks every probe fits the context, before training
    ...
    if monitor.schedule.due("train_step", step):
        report = monitor.run(model, step)       # leaves the model's mode, RNG and grads as they were
        if monitor.state.best_step == step:     # the gate (default: mean_surprisal_prefix, lower is better)
            torch.save(checkpoint(), "best.pt")
    ...
    checkpoint = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                  "step": step, "probattr": monitor.state_dict()}   # the monitor's history travels with it
    monitor.load_state_dict(checkpoint["probattr"])                  # on resume

The data, tokenizer and probes are the Lightning example's (a generated corpus
and a word-level tokenizer); the model is a small GPT-2 trained from scratch.

Run::

    python examples/plain_loop.py                       # ./runs/plain_loop
    python examples/plain_loop.py --steps 40 --resume   # continue from runs/plain_loop/last.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightning_train import PROBES, encode, make_corpus, train_tokenizer  # noqa: E402  (the example's data)


def make_model(tokenizer, *, n_layer: int = 2, n_embd: int = 64, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=4,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(cfg)


def make_monitor(probes: Path, tokenizer, *, every_n_steps: int):
    from probattr_monitor import ProbAttrMonitor, Schedule, ScoringConfig

    return ProbAttrMonitor(str(probes), tokenizer=tokenizer,
                           scoring=ScoringConfig(candidates="all", max_new_tokens=4, n_boot=200),
                           schedule=Schedule(every_n_steps=every_n_steps, on_validation_end=False))


def write_probes(out: Path) -> Path:
    import json

    path = out / "probes.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBES), encoding="utf-8")
    return path


def train(out: Path, *, steps: int = 200, every_n_steps: int = 50, n_train: int = 2_000, batch_size: int = 32,
          lr: float = 3e-3, resume: bool = False, seed: int = 0, n_layer: int = 2, n_embd: int = 64) -> dict[str, Any]:
    """Train for ``steps`` optimizer steps (in total, counting a resumed run's), scoring every ``every_n_steps``.

    Returns ``{"monitor", "model", "step", "best_path", "last_path"}``.
    """
    out.mkdir(parents=True, exist_ok=True)
    sentences = make_corpus(n_train, seed=seed)
    tokenizer = train_tokenizer(sentences)
    ids, mask = encode(sentences, tokenizer)
    model = make_model(tokenizer, n_layer=n_layer, n_embd=n_embd, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    monitor = make_monitor(write_probes(out), tokenizer, every_n_steps=every_n_steps)
    monitor.setup(model)  # bad probes or too long a probe fail here, not mid-training

    best_path, last_path = out / "best.pt", out / "last.pt"
    step = 0
    if resume and last_path.exists():
        ckpt = torch.load(last_path, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        monitor.load_state_dict(ckpt["probattr"])  # history, best value and step
        step = ckpt["step"]

    def checkpoint() -> dict:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "probattr": monitor.state_dict()}

    gen = torch.Generator().manual_seed(seed + step)
    model.train()
    while step < steps:
        rows = torch.randint(0, len(ids), (batch_size,), generator=gen)
        batch, batch_mask = ids[rows], mask[rows]
        loss = model(input_ids=batch, attention_mask=batch_mask, labels=batch.masked_fill(batch_mask == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if monitor.schedule.due("train_step", step) and not monitor.already_scored(step):
            monitor.run(model, step)
            if monitor.state.best_step == step:  # a new best by the gate metric
                torch.save(checkpoint(), best_path)
    torch.save(checkpoint(), last_path)
    return {"monitor": monitor, "model": model, "step": step, "best_path": best_path, "last_path": last_path}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/plain_loop"))
    parser.add_argument("--steps", type=int, default=200, help="total optimizer steps")
    parser.add_argument("--every-n-steps", type=int, default=50)
    parser.add_argument("--n-train", type=int, default=2_000)
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    args = parser.parse_args(argv)
    result = train(args.out, steps=args.steps, every_n_steps=args.every_n_steps, n_train=args.n_train,
                   resume=args.resume)
    monitor = result["monitor"]
    print(f"step  {monitor.metric}  noise_rate  (95% interval)")
    for h in monitor.state.history:
        s = h.scalars
        print(f"{h.step:>4}  {h.value:.3f}  {s['probattr/noise_rate']:.3f}  "
              f"({s['probattr/noise_rate_ci_low']:.3f}, {s['probattr/noise_rate_ci_high']:.3f})  {h.status}")
    print(f"best by {monitor.metric} ({monitor.mode}): step {monitor.state.best_step} "
          f"({monitor.state.best_value:.3f}) -> {result['best_path']}; last: {result['last_path']}")
    return result


if __name__ == "__main__":
    main()
