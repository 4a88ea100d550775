"""The monitor in a training loop run by Hugging Face ``accelerate``.

Same loop as ``examples/plain_loop.py``; what changes under ``accelerate``:

* score the *unwrapped* model: ``monitor.run(accelerator.unwrap_model(model), step, ...)``;
* with several processes, each scores its shard of the probes and the scores
  are gathered with ``accelerate.utils.gather_object``, so every rank holds the
  same report and history (``rank=accelerator.process_index``,
  ``world_size=accelerator.num_processes``);
* the monitor's state goes into the checkpoint dict that the main process saves.

Run::

    python examples/accelerate_loop.py                        # one process, CPU
    accelerate launch --num_processes 2 --cpu examples/accelerate_loop.py   # two CPU processes (gloo)
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
    """Train under an ``Accelerator`` for ``steps`` optimizer steps in total, scoring every ``every_n_steps``."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    accelerator = Accelerator(cpu=True)
    loop = build_loop(out, every_n_steps=every_n_steps, n_train=n_train, lr=lr, seed=seed, n_layer=n_layer,
                      n_embd=n_embd)
    ids, mask, monitor = loop.ids, loop.mask, loop.monitor

    best_path, last_path = out / "best.pt", out / "last.pt"
    step = 0
    if resume and last_path.exists():
        step = restore(last_path, loop)  # before accelerator.prepare: the plain model and optimizer
    model, opt = accelerator.prepare(loop.model, loop.opt)

    def gather(obj):  # every rank's obj, in rank order
        return gather_object([obj]) if accelerator.num_processes > 1 else [obj]

    def save(path: Path) -> None:
        if accelerator.is_main_process:
            torch.save(checkpoint(accelerator.unwrap_model(model), opt, monitor, step), path)

    gen = torch.Generator().manual_seed(seed + step + 1000 * accelerator.process_index)
    model.train()
    while step < steps:
        rows = torch.randint(0, len(ids), (batch_size,), generator=gen)
        batch, batch_mask = ids[rows].to(accelerator.device), mask[rows].to(accelerator.device)
        loss = model(input_ids=batch, attention_mask=batch_mask, labels=batch.masked_fill(batch_mask == 0, -100)).loss
        opt.zero_grad()
        accelerator.backward(loss)
        opt.step()
        step += 1
        if monitor.schedule.due("train_step", step) and not monitor.already_scored(step):
            monitor.run(accelerator.unwrap_model(model), step, rank=accelerator.process_index,
                        world_size=accelerator.num_processes, gather=gather)
            if monitor.state.best_step == step:
                save(best_path)
    save(last_path)
    accelerator.wait_for_everyone()
    return {"monitor": monitor, "model": accelerator.unwrap_model(model), "step": step, "best_path": best_path,
            "last_path": last_path, "accelerator": accelerator}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv, description=__doc__.splitlines()[0], default_out=Path("runs/accelerate_loop"))
    result = train(args.out, steps=args.steps, every_n_steps=args.every_n_steps, n_train=args.n_train,
                   resume=args.resume)
    monitor = result["monitor"]
    if result["accelerator"].is_main_process:
        for h in monitor.state.history:
            noise = h.scalars.get("probattr/noise_rate")  # absent from a gate scoring
            print(f"step {h.step}: {monitor.metric}={h.value:.3f} "
                  f"noise_rate={'-' if noise is None else f'{noise:.3f}'} ({h.status} {h.scope} scoring, "
                  f"{h.n_scored} probes)")
        print(f"best by {monitor.metric}: step {monitor.state.best_step} -> {result['best_path']}")
    return result


if __name__ == "__main__":
    main()
