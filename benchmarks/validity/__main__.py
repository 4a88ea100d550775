"""Run the signal-validity study: ``python -m benchmarks.validity --out runs/validity [--quick]``.

Trains every run of the plan (or the ``--quick`` one), each resumable from its
``record.json``, scores the true model of each language, then measures every
candidate signal against the ground truth and writes ``summary.json`` and
``summary.md`` (the tables of ``docs/validation.md``) and the figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from benchmarks.validity.languages import grammar_language, hmm_levels
from benchmarks.validity.runs import SEQ_LEN, RunSpec, load_record, run_one

logger = logging.getLogger("benchmarks.validity")

SCORE_AT = (10, 30, 60, 100, 200, 350, 500, 750, 1000, 1500, 2000)
FORGET_AT = (1, 25, 50, 100, 200, 300, 500, 700, 1000, 1500)

#: Languages of the overfitting, forgetting and divergence regimes.
REGIME_LANGUAGES = ("grammar", "hmm-mid")

#: The english regime: steps, scorings and BPE vocabulary of each seed's run.
ENGLISH_STEPS = 1000
ENGLISH_SCORE_AT = (10, 30, 60, 100, 150, 250, 400, 600, 800, 1000)
ENGLISH_VOCAB = 1000


def english_spec(seed: int, steps: int = ENGLISH_STEPS, score_at=ENGLISH_SCORE_AT) -> RunSpec:
    """One english run: a small GPT-2 from scratch on the English training paragraphs."""
    return RunSpec("english", "english", seed, steps=steps, score_at=tuple(score_at), vocab_size=ENGLISH_VOCAB,
                   train_stride=(SEQ_LEN - 1) // 2)


def setup_process(threads) -> None:
    """What a study's command line sets once: progress logging (Lightning's and ours quieter) and torch threads."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("lightning", "lightning.pytorch", "probattr_monitor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if threads:
        torch.set_num_threads(threads)


def languages():
    return {lang.name: lang for lang in hmm_levels() + [grammar_language()]}


def plan(quick: bool, seeds: int) -> list[RunSpec]:
    """The runs of the study, in an order where every ``forget`` run follows its ``scratch`` run."""
    if quick:
        at = (10, 50, 100, 200, 300, 400, 500, 600, 800, 1000)
        return [RunSpec("grammar", "scratch", 0, steps=1000, score_at=at, num_probes=16)]
    specs = []
    for seed in range(seeds):
        for lang in ("hmm-low", "hmm-mid", "hmm-high", "grammar"):
            specs.append(RunSpec(lang, "scratch", seed, steps=2000, score_at=SCORE_AT))
    for seed in range(seeds):
        for lang in REGIME_LANGUAGES:
            specs.append(RunSpec(lang, "overfit", seed, steps=2000, score_at=SCORE_AT, train_sequences=64))
            specs.append(RunSpec(lang, "diverge", seed, steps=2000, score_at=SCORE_AT, spike=(800, 880, 30.0)))
            specs.append(RunSpec(lang, "forget", seed, steps=1500, score_at=FORGET_AT, lr=1e-3))
    specs.extend(english_spec(seed) for seed in range(seeds))
    return specs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.validity", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/validity"))
    ap.add_argument("--quick", action="store_true", help="one short run (under 10 minutes on 2 CPU cores)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated run-name substrings to run (others are skipped)")
    ap.add_argument("--regimes", default=None, help="comma-separated regimes to run (default: all)")
    ap.add_argument("--analyse-only", action="store_true", help="measure the runs already recorded")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    setup_process(args.threads)
    langs = languages()
    out = args.out / ("quick" if args.quick else "full")
    started = time.perf_counter()
    if not args.analyse_only:
        for spec in plan(args.quick, args.seeds):
            if args.only and not any(s in spec.name for s in args.only.split(",")):
                continue
            if args.regimes and spec.regime not in args.regimes.split(","):
                continue
            run_dir = out / spec.name
            if load_record(run_dir) is not None:
                logger.info("%s: recorded, skipped", spec.name)
                continue
            pretrained = None
            if spec.regime == "forget":
                pretrained = out / f"{spec.language}.scratch.s{spec.seed}" / "final.pt"
                if not pretrained.exists():
                    logger.warning("%s: no scratch model to fine-tune (%s), skipped", spec.name, pretrained)
                    continue
            t0 = time.perf_counter()
            run_one(spec, langs.get(spec.language), run_dir, pretrained=pretrained)
            logger.info("%s: done in %.0f s", spec.name, time.perf_counter() - t0)
    from benchmarks.validity.study import analyse, write_summary

    summary = analyse(out, langs)
    summary["wall_seconds_this_invocation"] = time.perf_counter() - started
    write_summary(summary, out)
    logger.info("summary: %s", out / "summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
