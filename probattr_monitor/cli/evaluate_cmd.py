"""``probattr evaluate``: the faithfulness of AS against Captum's attribution methods and ReAgent (section 5)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import time
from pathlib import Path
from typing import Any

from probattr_monitor.cli.arguments import add_generation_arguments, add_model_arguments, number
from probattr_monitor.cli.candidates import HELP as CANDIDATES_HELP, parse_candidates
from probattr_monitor.cli.errors import EXIT_SCORING, EXIT_USAGE, CLIError
from probattr_monitor.cli.loading import load_probes
from probattr_monitor.cli.output_dir import discard_if_unused, prepare_output_dir

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Compare AS with Input x Gradient, Gradient SHAP, LIME and Occlusion (Captum)
and ReAgent (this package's implementation of Inseq's algorithm) on the same
prompts and fixed responses (greedy and/or top-p), every method evaluated
under the same replacement operator (a removed token is replaced by the
model's most likely other token given its prefix) with infidelity (lower is
better), NAOPC (higher), comprehensiveness (higher) and sufficiency (lower).
"""

EPILOG = """\
writes: faithfulness.json, faithfulness.csv (one row per probe x decoding x
method), summary.csv, faithfulness.md, faithfulness_<model>_<decoding>.png
(the paper's Figs. 7-8). The tables are rewritten after every prompt (meta
"complete": false until the last), so a stopped run keeps what it finished;
--resume continues it.
"""

_positive_int = number(int, minimum=1)


def add_parser(subparsers: Any, parents: list) -> argparse.ArgumentParser:
    """Register ``evaluate``."""
    from probattr_monitor.evaluate import METHODS

    p = subparsers.add_parser("evaluate", parents=parents, help="faithfulness of AS against other attribution methods",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to evaluate")
    add_model_arguments(g, probes_default="paper", dtype=False, torchrun=False)
    g.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory (created if missing)")
    s = p.add_argument_group("methods and cost")
    s.add_argument("--methods", default=",".join(METHODS), metavar="LIST",
                   help="comma-separated methods (default: %(default)s)")
    s.add_argument("--candidates", default="budget", metavar="SPEC", help="AS's candidates: " + CANDIDATES_HELP)
    s.add_argument("--decodings", default="greedy,top-p", metavar="LIST",
                   help="responses to evaluate: greedy, top-p or both (default: %(default)s)")
    add_generation_arguments(s, max_new_tokens=8)
    s.add_argument("--lime-samples", type=_positive_int, default=50, metavar="N",
                   help="LIME's perturbed prompts (default: %(default)s)")
    s.add_argument("--shap-samples", type=_positive_int, default=5, metavar="N",
                   help="Gradient SHAP's samples (default: %(default)s)")
    r = p.add_argument_group("ReAgent (defaults: Inseq's)")
    r.add_argument("--reagent-probes", type=_positive_int, default=16, metavar="R",
                   help="ReAgent's probes: independent runs, batched and averaged (default: %(default)s)")
    r.add_argument("--reagent-max-steps", type=_positive_int, default=3000, metavar="N",
                   help="steps before unstopped probes are given up; each costs 2 batches of R rows "
                        "(default: %(default)s)")
    r.add_argument("--reagent-keep", type=_positive_int, default=5, metavar="N",
                   help="most important positions kept by the stopping test (default: %(default)s)")
    r.add_argument("--reagent-top-k", type=_positive_int, default=3, metavar="K",
                   help="stop when every response token is in the top K (default: %(default)s)")
    r.add_argument("--reagent-ratio", type=number(float, above=0, maximum=1), default=0.3, metavar="Q",
                   help="share of positions replaced per step, below 1 (default: %(default)s)")
    r.add_argument("--reagent-replacer", choices=("model", "uniform"), default="model",
                   help="replacement tokens: sampled from the model's p(v | prefix), or uniform "
                        "(default: %(default)s)")
    s.add_argument("--masks", type=number(int, minimum=2), default=32, metavar="N",
                   help="random masks of infidelity, shared by all methods (default: %(default)s)")
    s.add_argument("--naopc-bounds", choices=("greedy", "single"), default="greedy",
                   help="NAOPC's bound search: greedy (P(P+1) forwards per prompt) or single (P) (default: %(default)s)")
    s.add_argument("--seed", type=number(int, minimum=0, maximum=2**63 - 1), default=0, help="seed (default: 0)")
    p.add_argument("--no-plots", action="store_true", help="write no figures")
    p.add_argument("--resume", action="store_true",
                   help="keep the prompts already in --out's faithfulness.json and evaluate only the rest "
                        "(its model, probe set and settings must be these)")
    p.set_defaults(func=run)
    return p


def _settings(args: argparse.Namespace) -> Any:
    from probattr_monitor.evaluate import EvaluationSettings
    from probattr_monitor.evaluate.baselines import BaselineSettings
    from probattr_monitor.evaluate.reagent import ReagentSettings

    try:
        return EvaluationSettings(
            methods=[m.strip() for m in args.methods.split(",") if m.strip()],
            baselines=BaselineSettings(lime_samples=args.lime_samples, shap_samples=args.shap_samples, seed=args.seed),
            reagent=ReagentSettings(keep_top_n=args.reagent_keep, stopping_top_k=args.reagent_top_k,
                                    replacing_ratio=args.reagent_ratio, max_steps=args.reagent_max_steps,
                                    num_probes=args.reagent_probes, replacer=args.reagent_replacer,
                                    seed=args.seed),
            n_masks=args.masks, naopc_bounds=args.naopc_bounds, decodings=tuple(d.strip() for d in args.decodings.split(",") if d.strip()),
            max_new_tokens=args.max_new_tokens, top_p=args.top_p, num_samples=args.num_samples, seed=args.seed)
    except ValueError as exc:
        raise CLIError(f"--methods/--decodings/--reagent-*: {exc}", code=EXIT_USAGE) from None


def run(args: argparse.Namespace) -> int:
    """Execute ``probattr evaluate``: options and probes are checked before the model is loaded."""
    started = time.perf_counter()
    settings = _settings(args)
    from probattr_monitor.evaluate.baselines import BASELINES

    if any(m in BASELINES for m in settings.methods):
        from probattr_monitor.evaluate.baselines import require_captum

        try:
            require_captum()
        except ImportError as exc:
            raise CLIError(str(exc), code=EXIT_USAGE) from None
    spec = parse_candidates(args.candidates)
    if spec.kind == "sequential":
        raise CLIError("--candidates sequential stops on the noise rule; the faithfulness evaluation needs each "
                       "token's AS itself: give 'budget', a count N, 'all' or ids", code=EXIT_USAGE)
    probes = load_probes(args.probes, args.limit_probes)
    out = Path(args.out)
    created = prepare_output_dir(out)
    try:
        return _run_checked(args, settings, spec, probes, out, started)
    finally:
        discard_if_unused(out, created)


def _resume_from(out: Path, resume: bool, model: str, probes: Any, settings: Any) -> list:
    """The earlier results to keep: none unless ``--resume`` and a matching ``faithfulness.json``."""
    from probattr_monitor.evaluate.outputs import read_evaluations
    from probattr_monitor.io_utils import jsonable

    path = out / "faithfulness.json"
    if not path.exists():
        if resume:
            logger.info("--resume: %s does not exist yet; evaluating every prompt", path)
        return []
    if not resume:
        logger.warning("%s exists and will be overwritten (pass --resume to keep its prompts)", path)
        return []
    try:
        meta, done = read_evaluations(path)
    except (OSError, ValueError) as exc:
        raise CLIError(f"--resume: cannot read {path}: {exc}") from None
    wanted = {"model": model, "probes": probes.name, "settings": jsonable(settings.to_dict())}
    found = {"model": (meta.get("model") or {}).get("name"), "probes": meta.get("probes"),
             "settings": meta.get("settings")}
    differ = [key for key in wanted if wanted[key] != found[key]]
    if differ:
        detail = "; ".join(f"{key}: {found[key]!r} there, {wanted[key]!r} now" for key in differ
                           if key != "settings") or "the settings differ"
        raise CLIError(f"--resume: {path} was written with another {' and '.join(differ)} ({detail}); "
                       "use the same options or another --out", code=EXIT_USAGE)
    logger.info("--resume: keeping %d evaluated prompts from %s", len(done), path)
    return done


def _run_checked(args: argparse.Namespace, settings: Any, spec: Any, probes: Any, out: Path, started: float) -> int:
    from probattr_monitor.cli.loading import load_model, vocab_size
    from probattr_monitor.evaluate import evaluate_probe_set
    from probattr_monitor.evaluate.outputs import markdown_table, summary_rows, rows, write_figures, write_outputs

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, config=args.config, tokenizer=args.tokenizer,
                        trust_remote_code=args.trust_remote_code, device=args.device)
    candidates, cand_meta = spec.resolve(vocab_size(loaded.model), seed=args.seed)
    settings = dataclasses.replace(settings, candidates=candidates)
    done = _resume_from(out, args.resume, loaded.name, probes, settings)
    expected = sum(len(settings.decodings_of(p)) for p in probes.probes)
    base_meta = {"model": {"name": loaded.name, **loaded.meta}, "probes": probes.name,
                 "settings": settings.to_dict(), "candidates_spec": cand_meta,
                 "command": shlex.join(["probattr", *args.argv]), "expected_prompts": expected}

    def write(evaluations: list, complete: bool) -> dict:
        meta = {**base_meta, "complete": complete, "evaluated_prompts": len(evaluations),
                "metric_token_forwards": sum(e.metric_token_forwards for e in evaluations)}
        try:
            return write_outputs(out, loaded.name, evaluations, meta)
        except OSError as exc:
            raise CLIError(f"cannot write to {out}: {exc}") from None

    logger.info("evaluating %s on %d probes: %s", loaded.name, len(probes), ", ".join(settings.methods))
    try:
        evaluations = evaluate_probe_set(loaded.model, loaded.tokenizer, probes, settings,
                                         progress=lambda i, label: logger.info("evaluated %s (%d of %d)", label,
                                                                               i, expected),
                                         done=done, on_result=lambda so_far: write(so_far, False))
    except ValueError as exc:
        raise CLIError(f"cannot evaluate {probes.name!r} with {loaded.name}: {exc}", code=EXIT_SCORING) from None
    written = write(evaluations, True)
    try:
        plots = [] if args.no_plots else write_figures(out, rows(loaded.name, evaluations))
    except OSError as exc:
        raise CLIError(f"cannot write to {out}: {exc}") from None
    summary = summary_rows(rows(loaded.name, evaluations))
    print(markdown_table(summary, ["decoding", "method", "infidelity", "naopc", "comprehensiveness", "sufficiency"]),
          end="")
    print(f"wrote {', '.join(str(p) for p in [*written.values(), *plots])} "
          f"({time.perf_counter() - started:.1f} s)")
    return 0
