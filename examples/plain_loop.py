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
``examples/_loop_common.py`` builds them (and the monitor) and saves/restores
the checkpoint dict, for this example and ``accelerate_loop.py``.

Run::

    python examples/plain_loop.py                       # ./runs/plain_loop
    python examples/plain_loop.py --steps 40 --resume   # continue from runs/plain_loop/last.pt
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loop_common import build_loop, checkpoint, parse_args, restore  # noqa: E402  (data, model, monitor)


def train(out: Path, *, steps: int = 200, every_n_steps: int = 50, n_train: int = 2_000, batch_size: int = 32,
          lr: float = 3e-3, resume: bool = False, seed: int = 0, n_layer: int = 2, n_embd: int = 64) -> dict[str, Any]:
    """Train for ``steps`` optimizer steps (in total, counting a resumed run's), scoring every ``every_n_steps``.

    Returns ``{"monitor", "model", "step", "best_path", "last_path"}``.
    """
    loop = build_loop(out, every_n_steps=every_n_steps, n_train=n_train, lr=lr, seed=seed, n_layer=n_layer,
                      n_embd=n_embd)  # runs monitor.setup(model): bad probes fail here, not mid-training
    ids, mask, model, opt, monitor = loop.ids, loop.mask, loop.model, loop.opt, loop.monitor

    best_path, last_path = out / "best.pt", out / "last.pt"
    step = 0
    if resume and last_path.exists():
        step = restore(last_path, loop)  # model, optimizer and the monitor's history, best value and step

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
                torch.save(checkpoint(model, opt, monitor, step), best_path)
    torch.save(checkpoint(model, opt, monitor, step), last_path)
    return {"monitor": monitor, "model": model, "step": step, "best_path": best_path, "last_path": last_path}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv, description=__doc__.splitlines()[0], default_out=Path("runs/plain_loop"))
    result = train(args.out, steps=args.steps, every_n_steps=args.every_n_steps, n_train=args.n_train,
                   resume=args.resume)
    monitor = result["monitor"]
    print(f"step  {monitor.metric}  noise_rate  (95% interval)  (a gate scoring has no noise rate)")
    for h in monitor.state.history:
        s = h.scalars
        noise = (f"{s['probattr/noise_rate']:.3f}  ({s['probattr/noise_rate_ci_low']:.3f}, "
                 f"{s['probattr/noise_rate_ci_high']:.3f})" if "probattr/noise_rate" in s else "-")
        print(f"{h.step:>4}  {h.value:.3f}  {noise}  {h.status} {h.scope} scoring")
    print(f"best by {monitor.metric} ({monitor.mode}): step {monitor.state.best_step} "
          f"({monitor.state.best_value:.3f}) -> {result['best_path']}; last: {result['last_path']}")
    return result


if __name__ == "__main__":
    main()
