"""``probattr watch DIR``: score each new checkpoint of a training run as it appears, in another process.

The loop (rank 0 decides, every rank scores its shard under torchrun):

1. list the checkpoints under DIR (:mod:`~probattr_monitor.cli.watch_find`)
   that the state file does not hold yet, and take the first that is ready
   (complete and unchanged for ``--settle-s``);
2. load it, score the probe set (:class:`~probattr_monitor.monitor.ProbAttrMonitor`),
   write the report under ``OUT/step-XXXXXXXX/`` plus ``OUT/history.jsonl``, and
   log the same keys as the callbacks (``probattr/<metric>`` against
   ``probattr/step``) to the W&B run ``--wandb-run-id`` when given;
3. record it in ``OUT/watch-state.json`` and, if it is the best complete
   scoring by the gate metric, rewrite ``OUT/best.json`` (and the ``OUT/best`` link);
4. sleep ``--poll-s`` when nothing is ready; stop on ``--once``, ``--stop-after``
   or ``--idle-exit-s``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

from probattr_monitor.cli.arguments import add_model_arguments, number
from probattr_monitor.cli.candidates import HELP as CANDIDATES_HELP, parse_candidates
from probattr_monitor.cli.errors import EXIT_STATUS_HELP, EXIT_USAGE, CLIError
from probattr_monitor.cli.watch_find import Candidate, Settler, find_candidates, has_complete_files
from probattr_monitor.cli.watch_state import Scored, WatchState

logger = logging.getLogger("probattr_monitor.cli")

DESCRIPTION = """\
Watch a training run's checkpoint directory and score each new checkpoint as
it appears, outside the training loop (another process, another device):
Hugging Face Trainer 'checkpoint-<step>/' directories and Lightning '.ckpt'
files ('last*.ckpt' is skipped: it is a copy of another checkpoint).

A checkpoint is read only once it is complete (HF: trainer_state.json, which
the Trainer writes last, config.json and the weights are there) and none of
its files has changed size or modification time for --settle-s seconds.

OUT (default DIR/probattr-watch) receives per checkpoint a report directory
step-XXXXXXXX/ and a line of history.jsonl, and throughout:

  watch-state.json   the checkpoints scored (a restart skips them)
  best.json          the best complete scoring by --metric so far
  best               a link to that checkpoint (--link-best)

With --wandb-run-id the same keys as the training callbacks
(probattr/<metric> against probattr/step, the token and probe tables) go to
that W&B run, resumed with resume="allow".
"""

EPILOG = """\
examples:
  probattr watch runs/hf-out --tokenizer ./tok --poll-s 60
  probattr watch ckpts/ --config ./hf-model --once --link-best
  probattr watch runs/hf-out --wandb-project my-proj --wandb-run-id 1a2b3c4d --idle-exit-s 3600
  torchrun --nproc_per_node 2 -m probattr_monitor.cli watch runs/hf-out --once

""" + EXIT_STATUS_HELP

_positive_int = number(int, minimum=1)
_seconds = number(float, minimum=0)


def add_parser(subparsers: Any, parents: list) -> argparse.ArgumentParser:
    """Register ``watch``."""
    p = subparsers.add_parser("watch", parents=parents, help="score each new checkpoint of a run as it appears",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="the directory the training run saves its checkpoints in")
    g = p.add_argument_group("what to score")
    g.add_argument("--out", "-o", metavar="OUT", help="where reports and state go (default: DIR/probattr-watch)")
    add_model_arguments(g, probes_default="reasonable-en", model=False)
    s = p.add_argument_group("scoring and gate")
    s.add_argument("--candidates", default="budget", metavar="SPEC", help=CANDIDATES_HELP)
    s.add_argument("--max-new-tokens", type=_positive_int, default=20, metavar="N",
                   help="response length bound (default: %(default)s)")
    s.add_argument("--seed", type=number(int, minimum=0), default=0, help="seed (default: %(default)s)")
    s.add_argument("--batch-size", type=_positive_int, metavar="B", help="candidates per forward pass")
    s.add_argument("--n-boot", type=number(int, minimum=0), default=1000, metavar="B",
                   help="bootstrap resamples (default: %(default)s)")
    s.add_argument("--metric", default=None, metavar="NAME",
                   help="gate metric of best.json (default: the monitor's, mean_surprisal_prefix)")
    s.add_argument("--mode", choices=("min", "max"), help="better is lower/higher (default: the metric's direction)")
    s.add_argument("--link-best", action="store_true", help="keep OUT/best a symbolic link to the best checkpoint")
    s.add_argument("--prefix", default="probattr", help="logged keys are PREFIX/<name> (default: %(default)s)")
    w = p.add_argument_group("watching")
    w.add_argument("--poll-s", type=_seconds, default=30.0, metavar="S", help="seconds between looks (default: 30)")
    w.add_argument("--settle-s", type=_seconds, default=10.0, metavar="S",
                   help="a checkpoint must be unchanged this long before it is read (default: 10)")
    w.add_argument("--once", action="store_true", help="score what is complete now, then exit")
    w.add_argument("--stop-after", type=_positive_int, metavar="N", help="exit after scoring N checkpoints")
    w.add_argument("--idle-exit-s", type=_seconds, metavar="S",
                   help="exit when no checkpoint has been scored for S seconds")
    o = p.add_argument_group("where results go")
    o.add_argument("--wandb-run-id", metavar="ID", help="log into this W&B run (resume='allow')")
    o.add_argument("--wandb-project", metavar="NAME", help="its W&B project")
    o.add_argument("--wandb-entity", metavar="NAME", help="its W&B entity")
    o.add_argument("--wandb-dir", metavar="DIR", help="W&B's local directory (default: W&B's)")
    o.add_argument("--formats", default="csv,json", metavar="LIST", help="token-table formats (default: csv,json)")
    o.add_argument("--no-plots", action="store_true", help="write no figures")
    p.set_defaults(func=run)
    return p


def _monitor(args: argparse.Namespace) -> Any:
    from probattr_monitor.monitor import ProbAttrMonitor
    from probattr_monitor.report import DEFAULT_GATE_METRIC
    from probattr_monitor.scoring import ScoringConfig

    try:
        scoring = ScoringConfig(max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
                                n_boot=args.n_boot)
        probes: Any = args.probes
        if args.limit_probes is not None:
            from probattr_monitor.cli.loading import first_probes
            from probattr_monitor.probes import load_probe_set

            probes = first_probes(load_probe_set(args.probes), args.limit_probes)
        # off the training loop the whole scoring is the point: every checkpoint is attributed
        return ProbAttrMonitor(probes, scoring=scoring, metric=args.metric or DEFAULT_GATE_METRIC, mode=args.mode,
                               prefix=args.prefix, attribution_every=1)
    except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
        raise CLIError(str(exc), code=EXIT_USAGE) from None


class _Outputs:
    """Rank 0's writers: the file sink, the optional W&B run, the state file and the gate."""

    def __init__(self, args: argparse.Namespace, monitor: Any, directory: Path, out: Path) -> None:
        from probattr_monitor.monitor.run_config import RunConfig
        from probattr_monitor.sinks import FileSink

        self.directory, self.out, self.link = directory, out, args.link_best
        formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
        out.mkdir(parents=True, exist_ok=True)
        self.state = WatchState.load(out, monitor.metric, monitor.mode, monitor.probe_set.fingerprint)
        config = {**RunConfig.from_monitor(monitor).to_dict(), "watch": str(directory)}
        try:
            self.files = FileSink(out, formats=formats, plots=not args.no_plots)
            self.files.setup(config)
        except (ValueError, ImportError, OSError) as exc:
            raise CLIError(f"cannot write to {out}: {exc}") from None
        self.wandb_run, self.wandb = None, None
        if args.wandb_run_id is not None or args.wandb_project is not None:
            self.wandb_run, self.wandb = _wandb(args, monitor.prefix, config)

    def record(self, cand: Candidate, step: int, report: Any, entry: Any, seconds: float) -> None:
        if report is not None:
            self.files.log(report, step, self._report_name(cand, step))
            if self.wandb is not None:
                self.wandb.log(report, step, log_scalars=True, figures=self.files.figures)  # drawn once
            scored = Scored(cand.name, step, entry.status, float(entry.value), seconds,
                            "; ".join(f"{k}: {v}" for k, v in entry.errors.items()) or None)
        else:
            scored = Scored(cand.name, step, "unreadable", math.nan, seconds, entry)
        best = self.state.add(scored)
        self.state.save(self.out)
        if best:
            self.state.write_best(self.out, self.directory, self.link)
            logger.info("new best: %s (%s=%.6g)", cand.name, self.state.metric, scored.value)

    def _report_name(self, cand: Candidate, step: int) -> str:
        """``step-XXXXXXXX``, or with the checkpoint's name after it when another checkpoint has this step.

        Lightning names a second checkpoint of a step ``...-v1.ckpt`` (a run
        resumed from an earlier checkpoint saves that step again); each gets
        its own report, so neither overwrites the other.
        """
        from probattr_monitor.report.figures import safe_file_stem
        from probattr_monitor.sinks.files import step_dir_name

        name = step_dir_name(step)
        taken = any(s.step == step and s.name != cand.name and s.status != "unreadable"
                    for s in self.state.scored.values())
        return f"{name}-{safe_file_stem(cand.name)}" if taken else name

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _wandb(args: argparse.Namespace, prefix: str, config: dict) -> tuple:
    try:
        import wandb
    except ImportError:
        raise CLIError("--wandb-run-id needs wandb: pip install wandb") from None
    from probattr_monitor.sinks import WandbSink

    try:
        run = wandb.init(id=args.wandb_run_id, project=args.wandb_project, entity=args.wandb_entity,
                         dir=args.wandb_dir, resume="allow")
    except Exception as exc:  # wandb raises its own error types (UsageError, CommError...)
        raise CLIError(f"cannot open the W&B run {args.wandb_run_id!r}: {exc}") from None
    sink = WandbSink(run, prefix=prefix, log_scalars=True)
    sink.setup(config)
    return run, sink


class _Clock:
    """When the loop stops: ``--once``, ``--stop-after``, ``--idle-exit-s``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.once, self.stop_after, self.idle = args.once, args.stop_after, args.idle_exit_s
        self.n_scored = 0
        self.last = time.monotonic()

    def scored(self) -> None:
        self.n_scored += 1
        self.last = time.monotonic()

    def done(self, pending: bool) -> bool:
        if self.stop_after is not None and self.n_scored >= self.stop_after:
            return True
        if self.once and not pending:
            return True
        return self.idle is not None and not pending and time.monotonic() - self.last >= self.idle


def _decide(directory: Path, state: WatchState, settler: Settler) -> tuple:
    """``(next ready candidate or None, whether any unscored complete one is still settling)``."""
    pending = False
    for cand in find_candidates(directory):
        if cand.name in state.scored:
            continue
        if settler.is_ready(cand):
            return cand, True
        pending = pending or has_complete_files(cand)  # one being written, or broken, does not count
    return None, pending


def _score_one(args: argparse.Namespace, monitor: Any, cand: Candidate, ranks: Any) -> tuple:
    """``(step, report, history entry)``, or ``(step, None, error)`` when the checkpoint cannot be loaded."""
    from probattr_monitor.cli.dist_setup import device_for_rank
    from probattr_monitor.cli.loading import load_model, vocab_size
    from probattr_monitor.distributed import all_gather_object

    error: Optional[str] = None
    loaded = None
    try:
        loaded = load_model(str(cand.path), config=args.config, tokenizer=args.tokenizer,
                            trust_remote_code=args.trust_remote_code, device=device_for_rank(args.device),
                            dtype=args.dtype)
        candidates, _ = parse_candidates(args.candidates).resolve(vocab_size(loaded.model), seed=args.seed)
        monitor.scoring = dataclasses.replace(monitor.scoring, candidates=candidates)
        monitor.setup(loaded.model, loaded.tokenizer)
    except (CLIError, ValueError) as exc:
        error = str(exc)
    if ranks.world_size > 1:  # every rank must agree before the collective of monitor.run
        errors = [e for e in all_gather_object(error) if e is not None]
        error = errors[0] if errors else None
    step = cand.step if cand.step is not None else int((loaded.meta.get("global_step", 0) if loaded else 0))
    if error is not None:
        logger.warning("probattr: cannot score %s: %s", cand.name, error)
        return step, None, error
    report = monitor.run(loaded.model, step, rank=ranks.rank, world_size=ranks.world_size, gather=ranks.gather)
    entry = monitor.entry(step)
    del loaded
    gc.collect()
    return step, report, entry


def run(args: argparse.Namespace) -> int:
    """Execute ``probattr watch``."""
    from probattr_monitor.cli.dist_setup import start_ranks, stop_ranks
    from probattr_monitor.distributed import broadcast_object

    directory = Path(args.dir)
    if not directory.is_dir():
        raise CLIError(f"DIR {args.dir} is not a directory")
    parse_candidates(args.candidates)  # a bad spec is a usage error now, not at the first checkpoint
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    monitor = _monitor(args)
    out = Path(args.out) if args.out else directory / "probattr-watch"
    ranks = start_ranks(args.device)
    outputs = _Outputs(args, monitor, directory, out) if ranks.writes else None
    settler = Settler(args.settle_s, time.monotonic)
    clock = _Clock(args)
    try:
        while True:
            decision = None
            if ranks.writes:
                cand, pending = _decide(directory, outputs.state, settler)
                decision = (cand, clock.done(pending) if cand is None else False)
            if ranks.world_size > 1:
                decision = broadcast_object(decision)
            cand, stop = decision
            if stop:
                break
            if cand is None:
                time.sleep(min(args.poll_s, args.settle_s) if args.once else args.poll_s)
                continue
            started = time.monotonic()
            step, report, entry = _score_one(args, monitor, cand, ranks)
            if outputs is not None:
                outputs.record(cand, step, report, entry, time.monotonic() - started)
                settler.forget(cand.name)
            clock.scored()
    finally:
        if outputs is not None:
            outputs.close()
        stop_ranks(ranks)
    if outputs is not None:
        best = outputs.state.best
        print(f"scored {clock.n_scored} checkpoint(s) this run, {len(outputs.state.scored)} in all; "
              f"best by {monitor.metric}: {best or 'none yet'}; state in {out}")
    return 0
