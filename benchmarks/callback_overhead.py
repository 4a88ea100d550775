"""Overhead of the training callbacks as a share of training time (benchmark script, not a test).

One function per framework; each trains the corresponding example's model
with the same seed and settings: without the callback, then with it once per
``attribution_every`` setting compared (the example's default schedule), then
without it again; and reports for each setting

* ``wall``: ``(t_with - t_without) / t_without``, ``t_without`` the mean of the
  two runs without the callback (their difference shows the clock's drift
  between runs; noisy on a shared machine);
* ``accounted``: the callback's own measured time (scoring + logging tables
  and figures, summed over its scorings) as a share of the run with it,
  ``spent / t_with``, and per scoring;
* ``work``: the scorings' token-forwards (``timings[i]["token_forwards"]``)
  against three times the training tokens (a training token is a forward and
  a backward, about three forward tokens): the part of the overhead that is
  compute, which no logging change can remove, and a way to predict the
  overhead of another run from its own sizes.

Run::

    python benchmarks/callback_overhead.py --framework lightning            # the example's defaults
    python benchmarks/callback_overhead.py --framework lightning --epochs 1 --threads 2 --json out.json
    python benchmarks/callback_overhead.py --framework hf --threads 1     # examples/hf_trainer_train.py's defaults
    python benchmarks/callback_overhead.py --framework all --threads 2    # both, one after the other
    python benchmarks/callback_overhead.py --framework lightning --attribution-every auto 1 none   # settings side by side

Both runs use the same loggers (W&B offline when installed, and CSV), so the
difference is the callback alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_example(name: str) -> Any:
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _offline_wandb(wanted: bool) -> bool:
    """Whether both runs log to W&B: ``wanted`` and wandb installed; W&B is set offline and silent either way."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return wanted and importlib.util.find_spec("wandb") is not None


def _run_result(seconds: float, steps: int, training_tokens: int, callbacks: list) -> dict[str, Any]:
    """One run's figures; with the callback (``callbacks[0]``), its timings, scopes, gate and noise rate per scoring."""
    result: dict[str, Any] = {"seconds": seconds, "steps": steps, "training_tokens": training_tokens}
    if callbacks:
        cb = callbacks[0]
        scope = {h.step: h.scope for h in cb.history}
        result["scorings"] = [dict(t, scope=scope.get(t["step"])) for t in cb.timings]
        result["gate"] = [(h.step, h.value) for h in cb.history]
        # attribution scorings only: a gate scoring has no noise rate
        result["noise_rate"] = [(h.step, h.scalars["probattr/noise_rate"]) for h in cb.history
                                if "probattr/noise_rate" in h.scalars]
    return result


# --------------------------------------------------------------------------- Lightning


def lightning_overhead(*, epochs: int = 4, n_train: int = 6_000, every_n_steps: Optional[int] = None,
                       use_wandb: bool = True, workdir: Optional[Path] = None,
                       attribution_every: Sequence[Any] = ("auto",)) -> list[dict[str, Any]]:
    """Train ``examples/lightning_train.py``'s model without ProbAttrCallback, then with it once per setting.

    ``attribution_every``: the callback's settings to compare (``"auto"``, the
    example's default; ``1``: every scoring attributes); one summary each,
    against the same run without the callback.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    ex = _load_example("lightning_train")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="probattr-overhead-"))
    use_wandb = _offline_wandb(use_wandb)
    if use_wandb:
        from lightning.pytorch.loggers import WandbLogger

    def run(setting: Any, tag: str = "") -> dict[str, Any]:
        out = workdir / (f"without{tag}" if setting is None else f"with-{setting}")
        module, _tok, probes = ex.build(out, n_train=n_train)
        loggers: list = [CSVLogger(out, name="csv")]
        if use_wandb:
            loggers.insert(0, WandbLogger(project="probattr-overhead", save_dir=str(out), offline=True))
        callbacks = [ex.make_callback(probes, every_n_steps=every_n_steps, wandb="auto" if use_wandb else False,
                                      attribution_every=_value(setting))] if setting is not None else []
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=loggers, callbacks=callbacks,
                             log_every_n_steps=20, enable_model_summary=False, enable_progress_bar=False,
                             enable_checkpointing=False, default_root_dir=out)
        started = time.perf_counter()
        trainer.fit(module)
        seconds = time.perf_counter() - started
        if use_wandb:
            loggers[0].experiment.finish()
        ids = module.train_data[0]  # padded to the longest sentence: every row is fed whole
        return _run_result(seconds, trainer.global_step, int(ids.numel()) * epochs, callbacks)

    without, withs = _bracketed(run, attribution_every)
    schedule = "every validation end (once per epoch)" + (f" + every {every_n_steps} steps" if every_n_steps else "")
    return [summarise("lightning", schedule, epochs, with_cb, without,
                      {"n_train": n_train, "use_wandb": use_wandb, "attribution_every": setting})
            for setting, with_cb in zip(attribution_every, withs)]


# --------------------------------------------------------------------------- HF Trainer


def hf_overhead(*, max_steps: int = 300, eval_steps: int = 50, batch_size: int = 16, use_wandb: bool = True,
                workdir: Optional[Path] = None, attribution_every: Sequence[Any] = ("auto",)) -> list[dict[str, Any]]:
    """Train ``examples/hf_trainer_train.py``'s model without ProbAttrTrainerCallback, then with it once per setting.

    Both runs evaluate and save every ``eval_steps`` steps and train exactly
    ``max_steps`` steps: no early stopping and no reload of the best checkpoint
    at the end (the run without the callback has no probattr metric to gate
    on), so the difference is the callback alone.
    """
    from transformers import Trainer

    ex = _load_example("hf_trainer_train")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="probattr-overhead-hf-"))
    use_wandb = _offline_wandb(use_wandb)

    def run(setting: Any, tag: str = "") -> dict[str, Any]:
        out = workdir / (f"without{tag}" if setting is None else f"with-{setting}")
        out.mkdir(parents=True, exist_ok=True)
        os.environ["WANDB_DIR"] = str(out)
        model, tokenizer, train, val, probes = ex.build(out)
        callbacks = [ex.make_callback(probes, wandb="auto" if use_wandb else False,
                                      attribution_every=_value(setting))] if setting is not None else []
        args = ex.training_arguments(out, max_steps=max_steps, eval_steps=eval_steps, batch_size=batch_size, seed=0,
                                     use_wandb=use_wandb, gate=False)
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, processing_class=tokenizer,
                          callbacks=callbacks)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        if use_wandb:
            import wandb

            if wandb.run is not None:
                wandb.finish()
        steps = trainer.state.global_step
        return _run_result(seconds, steps, steps * batch_size * ex.BLOCK, callbacks)

    without, withs = _bracketed(run, attribution_every)
    return [summarise("hf", f"every evaluation (every {eval_steps} steps)", None, with_cb, without,
                      {"max_steps": max_steps, "use_wandb": use_wandb, "attribution_every": setting})
            for setting, with_cb in zip(attribution_every, withs)]


def _bracketed(run: Any, settings: Sequence[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The runs with the callback, one per setting, between two runs without it (the first also warms up).

    The run without the callback is the mean of the two; ``seconds_runs`` keeps
    both, so their difference shows how much the wall clock drifts between runs.
    """
    first = run(None, "-before")
    withs = [run(setting) for setting in settings]
    last = run(None, "-after")
    without = dict(first, seconds=(first["seconds"] + last["seconds"]) / 2,
                   seconds_runs=[first["seconds"], last["seconds"]])
    return without, withs


def summarise(framework: str, schedule: str, epochs: Optional[int], with_cb: dict, without: dict,
              extra: dict) -> dict[str, Any]:
    """The figures of one framework's pair of runs (see the module docstring)."""
    spent = sum(t["score_s"] + t["log_s"] for t in with_cb["scorings"])
    work = sum(int(t.get("token_forwards", 0)) for t in with_cb["scorings"])
    n = max(1, len(with_cb["scorings"]))
    scopes = [t["scope"] for t in with_cb["scorings"]]
    return {
        "framework": framework, "schedule": schedule, "epochs": epochs, "steps": with_cb["steps"],
        "w&b": extra.get("use_wandb"), **{k: v for k, v in extra.items() if k != "use_wandb"},
        "seconds_without": without["seconds"], "seconds_without_runs": without.get("seconds_runs"),
        "seconds_with": with_cb["seconds"],
        "wall_overhead": (with_cb["seconds"] - without["seconds"]) / without["seconds"],
        "callback_seconds": spent, "accounted_share": spent / with_cb["seconds"],
        "n_scorings": len(with_cb["scorings"]),
        "n_attribution_scorings": scopes.count("attribution"),
        "scopes": scopes,
        "score_s_per_scoring": sum(t["score_s"] for t in with_cb["scorings"]) / n,
        "log_s_per_scoring": sum(t["log_s"] for t in with_cb["scorings"]) / n,
        "scoring_token_forwards": work,
        "training_tokens": with_cb["training_tokens"],
        # work, not time: a training token costs about three forward tokens (forward and backward)
        "work_ratio": work / (3 * max(1, with_cb["training_tokens"])),
        "noise_rate": with_cb["noise_rate"],
        "gate": with_cb["gate"],
        "per_scope": {scope: {"n": scopes.count(scope),
                              "score_s": sum(t["score_s"] for t in with_cb["scorings"] if t["scope"] == scope),
                              "log_s": sum(t["log_s"] for t in with_cb["scorings"] if t["scope"] == scope),
                              "token_forwards": sum(int(t.get("token_forwards", 0)) for t in with_cb["scorings"]
                                                    if t["scope"] == scope)}
                      for scope in sorted(set(scopes), key=str)},
    }


FRAMEWORKS = {"lightning": lightning_overhead, "hf": hf_overhead}


def _print(res: dict[str, Any]) -> None:
    span = f"{res['epochs']} epochs, " if res.get("epochs") else ""
    print(f"[{res['framework']}] {span}{res['steps']} optimizer steps, schedule: {res['schedule']}, "
          f"attribution_every={res['attribution_every']!r} ({res['n_attribution_scorings']} of {res['n_scorings']} "
          f"scorings attribute), W&B offline: {res['w&b']}")
    runs = res.get("seconds_without_runs") or []
    print(f"  training without the callback: {res['seconds_without']:.1f} s (mean of "
          f"{', '.join(f'{t:.1f}' for t in runs)} s, before and after); with it: {res['seconds_with']:.1f} s "
          f"-> wall-clock overhead {100 * res['wall_overhead']:+.1f}%")
    print(f"  callback's own time: {res['callback_seconds']:.1f} s over {res['n_scorings']} scorings "
          f"({res['score_s_per_scoring']:.2f} s scoring + {res['log_s_per_scoring']:.2f} s logging each) "
          f"= {100 * res['accounted_share']:.1f}% of the run")
    print(f"  work: {res['scoring_token_forwards']:,} scoring token-forwards against {res['training_tokens']:,} "
          f"training tokens (x3 for forward and backward) = {100 * res['work_ratio']:.1f}% of the training work")
    for scope, part in res["per_scope"].items():
        n = max(1, part["n"])
        print(f"  {scope} scorings: {part['n']}, {part['score_s'] / n:.2f} s scoring + {part['log_s'] / n:.2f} s "
              f"logging and {part['token_forwards'] / n:,.0f} token-forwards each")
    print("  gate per scoring: " + ", ".join(f"{s}: {v:.4f}" for s, v in res["gate"]))
    print("  noise rate per attribution scoring: " + ", ".join(f"{s}: {v:.3f}" for s, v in res["noise_rate"]))


def _value(setting: Any) -> Any:
    """The callback's ``attribution_every`` for a benchmark setting (``"none"``: ``None``, never in the loop)."""
    return None if setting == "none" else setting


def _setting(text: str) -> Any:
    """``--attribution-every`` values: ``"auto"``, ``"none"`` (never in the loop) or a positive int."""
    if text in ("auto", "none"):
        return text
    return int(text)


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=sorted(FRAMEWORKS) + ["all"], default="all")
    parser.add_argument("--epochs", type=int, default=4, help="default: the example's")
    parser.add_argument("--n-train", type=int, default=6_000)
    parser.add_argument("--every-n-steps", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=300, help="HF: training steps (default: the example's)")
    parser.add_argument("--eval-steps", type=int, default=50, help="HF: evaluation interval (default: the example's)")
    parser.add_argument("--no-wandb", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--attribution-every", nargs="+", default=["auto"], type=_setting,
                        help="the callback's settings to compare, each against the same run without it: "
                             "'auto' (the default), an int (1: attribute at every scoring) or 'none'")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; load average {os.getloadavg()[0]:.1f}")
    names = sorted(FRAMEWORKS) if args.framework == "all" else [args.framework]
    results = []
    for name in names:
        if name == "lightning":
            kwargs: dict[str, Any] = {"epochs": args.epochs, "n_train": args.n_train,
                                      "every_n_steps": args.every_n_steps}
        else:
            kwargs = {"max_steps": args.max_steps, "eval_steps": args.eval_steps}
        kwargs["use_wandb"] = not args.no_wandb
        kwargs["attribution_every"] = args.attribution_every
        for res in FRAMEWORKS[name](**kwargs):
            _print(res)
            results.append(res)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
