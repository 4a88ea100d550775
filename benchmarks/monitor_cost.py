"""What one scoring of the training monitor costs on SmolLM2 (benchmark script, not a test).

Scores the first ``--probes`` probes of a probe set with SmolLM2-135M-Instruct
exactly as :class:`~probattr_monitor.monitor.ProbAttrMonitor` does with its
default :class:`~probattr_monitor.scoring.ScoringConfig` (budgeted estimator,
``Budget()``; greedy 20-token responses) and, beside it in the same process
(unless ``--no-baseline``), with a baseline: ``--baseline whole-rows`` (the
default: ``Budget(reuse_states=False)``, every candidate row fed whole, the
default before rows resumed from earlier stages) or ``--baseline sequential``
(the opt-in ladder, ``ScoringConfig(candidates=SequentialBudget())``), and
reports per probe:

* token-forwards of the budgeted scoring (``info["token_forwards"]``) and what
  exact scoring over the whole vocabulary would have cost
  (``info["exact_token_forwards"]``), so their ratio;
* wall time of scoring (response generation included) and the suffix-token
  throughput.

Then it runs a gate scoring (one forward per prompt, docs/design.md section 10)
of the whole set, timed, and prices the monitor's default cadence
(``attribution_every="auto"``: the attribution on the first and every 10th
scoring) per scoring against attributing at every scoring, with the gate value
of both kinds of scoring on the scored probes side by side.

Then the floor: the model's raw ``model(ids).logits`` throughput on batches of
the engine's row shapes, timed in the same process, and what every scoring
above would take at that speed (the time no engine change can go below on
this machine), with how many token-forwards fit in 10 minutes at it.

After them it replays ``Budget()`` and the ladder's first stage on the stored
full-vocabulary fixtures (``tests/fixtures/full_vocab``, seconds, no model):
their accuracy over all 49,152 ids, which the timed probes cannot check.

The totals are extrapolated to the whole probe set: the budgeted cost of a
position is about a constant (the screen) plus a multiple of its suffix length,
both fitted on the scored probes; the set's prompt lengths come from rendering
its probes (no model call), and the seconds from the measured throughput.

Run::

    python benchmarks/monitor_cost.py --probes 4 [--set reasonable-en] [--threads 2] [--json out.json]
    python benchmarks/monitor_cost.py --probes 2 --baseline sequential

Two further modes (no model needed for the first, seconds):

* ``--replay-report DIR [--share 0.1] [--seeds 1000]``: on a report scored with
  today's default (every position), replay a Poisson sample of a share of the
  positions over seeds and print, side by side with the full scoring, the
  token-forwards (the share of the budgeted part; the full pass stays on every
  position), the Hájek noise rate's p95 error against the full table's rate
  and its CI coverage (see ``benchmarks/sampled_rates.py`` for what the replay
  approximates).
* ``--full-vocab-fixtures DIR [--positions 12]``: ``benchmarks/full_vocab.py``:
  score that many SmolLM2 positions (late positions of probes spread over the
  set, short responses) exactly over all 49,152 ids, store what the
  estimator reads as fixtures in DIR (skipping those already there), and
  replay ``Budget()`` on them over 20 seeds: p95 |ΔAS| and the share of errors
  within two reported standard errors. A few minutes per missing position on
  2 idle cores; seconds once stored (``tests/fixtures/full_vocab``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from probattr_monitor.io_utils import atomic_write_text
from probattr_monitor.models import load_model_and_tokenizer
from probattr_monitor.probes import load_probe_set, render
from probattr_monitor.engine import Budget
from probattr_monitor.engine.sequential import SequentialBudget
from probattr_monitor.monitor.monitor import DEFAULT_ATTRIBUTION_EVERY
from probattr_monitor.report import DEFAULT_GATE_METRIC
from probattr_monitor.scoring import ScoringConfig, build_report, score_probe, score_probes

#: ``--baseline`` choices: (name in the output, candidates).
BASELINES = {
    "whole-rows": ("Budget(reuse_states=False)", Budget(reuse_states=False)),
    "sequential": ("sequential (opt-in)", SequentialBudget()),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="reasonable-en", help="probe set (default: %(default)s)")
    parser.add_argument("--probes", type=int, default=4, help="how many of its probes to score")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--no-baseline", action="store_true", help="score the default only, no baseline beside it")
    parser.add_argument("--baseline", choices=tuple(BASELINES), default="whole-rows",
                        help="what to score beside the default (default: %(default)s)")
    parser.add_argument("--replay-report", default=None, help="report directory scored with today's default")
    parser.add_argument("--share", type=float, default=0.1, help="share of positions sampled in the replay")
    parser.add_argument("--seeds", type=int, default=1000, help="seeds of the replay")
    parser.add_argument("--full-vocab-fixtures", default=None, help="directory of full-vocabulary fixtures")
    parser.add_argument("--positions", type=int, default=12, help="positions scored over the full vocabulary")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.replay_report:
        replay_report(args.replay_report, args.share, args.seeds)
        return
    if args.full_vocab_fixtures:
        full_vocab = _full_vocab_module()
        full_vocab.main(["--out", args.full_vocab_fixtures, "--positions", str(args.positions), "--set", args.set])
        return

    model, tok = load_model_and_tokenizer("smollm2")
    probes = load_probe_set(args.set)
    configs = {"Budget() (default)": ScoringConfig()}  # the monitor's default
    if not args.no_baseline:
        name, candidates = BASELINES[args.baseline]
        configs[name] = ScoringConfig(candidates=candidates)
    summary = {"model": "SmolLM2-135M-Instruct", "probe_set": args.set, "probes_in_set": len(probes),
               "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
               "scorings": {}}
    for name, config in configs.items():
        summary["scorings"][name] = cost_of(model, tok, probes, config, args.probes, name)
    print()
    print(f"{summary['model']}, {summary['machine']}, {summary['threads']} threads, first {args.probes} "
          f"'{args.set}' probes, extrapolated to the {len(probes)} of the set")
    print(f"{'scoring':<28} {'tf/probe':>9} {'s/probe':>8} {'tf/s':>6} {'set tf':>8} {'set min':>8} "
          f"{'noise rate':>10}")
    for name, r in summary["scorings"].items():
        print(f"{name:<28} {r['token_forwards_per_probe_mean']:>9.0f} {r['seconds_per_probe_mean']:>8.1f} "
              f"{r['token_forwards_per_second']:>6.0f} {r['set_token_forwards_estimate'] / 1e6:>7.2f}M "
              f"{r['set_seconds_estimate'] / 60:>8.1f} {r['noise_rate']:>10.4f}")
    if len(summary["scorings"]) == 2:
        default, baseline = summary["scorings"].values()
        ratio = baseline["set_token_forwards_estimate"] / default["set_token_forwards_estimate"]
        seconds_ratio = baseline["set_seconds_estimate"] / default["set_seconds_estimate"]
        summary["baseline"] = args.baseline
        summary["baseline_over_default_token_forwards"] = ratio
        summary["baseline_over_default_seconds"] = seconds_ratio
        summary["baseline_noise_rate_difference"] = default["noise_rate"] - baseline["noise_rate"]
        print(f"baseline {args.baseline}: {ratio:.3f}x the default's token-forwards and {seconds_ratio:.3f}x its "
              f"time (same process, same probes); noise rate {baseline['noise_rate']:.4f}, the default's "
              f"{default['noise_rate']:.4f}")
    scorings = list(summary["scorings"].values())
    summary["gate_scorings"] = gate_scoring_cost(model, tok, probes, scorings[0], args.probes,
                                                 baseline=scorings[1] if len(scorings) == 2 else None)
    summary["raw_forward_floor"] = raw_forward_floor(model, summary["scorings"], summary["gate_scorings"])
    summary["full_vocabulary"] = full_vocabulary_check()
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2))


def gate_scoring_cost(model, tok, probes, budget: dict, n_scored: int, every: int = DEFAULT_ATTRIBUTION_EVERY,
                      repeats: int = 3, baseline: Optional[dict] = None) -> dict:
    """A gate scoring of the whole set, timed, beside the attribution scoring's estimate; the default cadence's mean.

    A gate scoring (docs/design.md section 10) is one forward over each rendered
    prompt, so it is run on every probe of the set (``repeats`` times; the
    fastest is kept). Its gate value on the probes that ``budget`` scored is
    compared with the attribution report's, and the monitor's default cadence
    (attribution on the first and every ``every``-th scoring, gate scorings
    between) is priced per scoring on average; with ``baseline`` (another
    scoring of the same probes by :func:`cost_of`), also against attributing
    every scoring with that.
    """
    config = ScoringConfig()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        scores = score_probes(model, tok, probes, config, attribution=False)
        seconds.append(time.perf_counter() - started)
    report = build_report(scores, tok, config)
    gate_tf = int(report.meta["token_forwards"])
    head = [s for s in scores if s.probe_id in {r["probe"] for r in budget["rows"]}]
    gate_head = build_report(head, tok, config).metrics[DEFAULT_GATE_METRIC].value
    attribution_tf, attribution_s = budget["set_token_forwards_estimate"], budget["set_seconds_estimate"]
    mean_tf = (attribution_tf + (every - 1) * gate_tf) / every
    mean_s = (attribution_s + (every - 1) * min(seconds)) / every
    out = {
        "gate_token_forwards": gate_tf, "gate_seconds": min(seconds), "gate_seconds_all": seconds,
        "gate_value": report.metrics[DEFAULT_GATE_METRIC].value,
        "gate_value_on_scored_probes": gate_head, "attribution_gate_value_on_scored_probes": budget["gate_value"],
        "attribution_every": every, "mean_token_forwards_per_scoring": mean_tf, "mean_seconds_per_scoring": mean_s,
        "today_over_default_cadence": attribution_tf / mean_tf,
    }
    if baseline is not None:
        out["baseline_over_default_cadence"] = baseline["set_token_forwards_estimate"] / mean_tf
    print(f"\nthe monitor's default cadence (attribution_every='auto' = {every}: the attribution on the first and "
          f"every {every}th scoring, a gate scoring between; docs/design.md section 10), {len(probes)} probes:")
    print(f"{'scoring':<34} {'token-forwards':>15} {'seconds':>10} {DEFAULT_GATE_METRIC:>22}")
    print(f"{'attribution, Budget() (estimate)':<34} {attribution_tf:>15,.0f} {attribution_s:>10.0f} "
          f"{budget['gate_value']:>22.6f}  (first {n_scored} probes)")
    print(f"{'gate scoring (measured, all probes)':<34} {gate_tf:>15,d} {min(seconds):>10.2f} {gate_head:>22.6f}  "
          f"(first {n_scored} probes; {out['gate_value']:.6f} over all)")
    print(f"{'mean per scoring, default cadence':<34} {mean_tf:>15,.0f} {mean_s:>10.0f}  "
          f"= {out['today_over_default_cadence']:.1f}x fewer token-forwards than attributing every scoring"
          + (f", {out['baseline_over_default_cadence']:.1f}x fewer than the baseline at every scoring"
             if baseline is not None else ""))
    return out


#: The time target of a default scoring on 2 CPU cores (issue 13), in seconds.
TARGET_SECONDS = 600.0


def raw_forward_throughput(model, *, rows: int = 64, lengths=(8, 16, 32), repeats: int = 3, seed: int = 0) -> dict:
    """The model's raw ``model(ids).logits`` throughput, tokens/s, on batches of ``rows`` rows.

    The engine feeds candidate rows of a position in batches of up to a few
    hundred rows, a few to a few dozen tokens each; a raw forward of the same
    shapes (no prefix cache, no log-softmax) is the fastest the model computes
    those tokens on this machine. Each shape is timed ``repeats`` times after a
    warm-up and the fastest kept; the throughput is the tokens of all shapes
    over their summed fastest times.
    """
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    tokens, seconds = 0, 0.0
    with torch.inference_mode():
        for length in lengths:
            ids = torch.randint(0, vocab, (rows, length), generator=gen)
            model(ids[:2]).logits  # warm-up
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                model(ids).logits
                best = min(best, time.perf_counter() - started)
            tokens, seconds = tokens + rows * length, seconds + best
    return {"rows": rows, "lengths": list(lengths), "tokens_per_second": tokens / seconds}


def raw_forward_floor(model, scorings: dict, gate: dict) -> dict:
    """What the scorings would take at the model's raw forward speed: the floor no engine change goes below.

    Prints, per scoring, the measured token-forwards/s as a share of the raw
    forward's and the set's time at raw speed; then the default cadence's mean
    at raw speed, and how many token-forwards a scoring may cost to fit in
    :data:`TARGET_SECONDS` at raw speed (so how many times fewer than the
    default attribution it would need).
    """
    raw = raw_forward_throughput(model)
    rate = raw["tokens_per_second"]
    out = {**raw, "scorings": {}}
    print(f"\nthe floor: raw model(ids).logits forward, {raw['rows']} rows of {raw['lengths']} tokens, "
          f"{rate:.0f} tokens/s on this machine")
    print(f"{'scoring':<34} {'share of raw speed':>19} {'set tf':>8} {'set min at raw speed':>21}")
    for name, r in scorings.items():
        share = r["token_forwards_per_second"] / rate
        minutes = r["set_token_forwards_estimate"] / rate / 60
        out["scorings"][name] = {"share_of_raw_speed": share, "set_minutes_at_raw_speed": minutes}
        print(f"{name:<34} {share:>19.2f} {r['set_token_forwards_estimate'] / 1e6:>7.2f}M {minutes:>21.1f}")
    mean_minutes = gate["mean_token_forwards_per_scoring"] / rate / 60
    fits = TARGET_SECONDS * rate
    first = next(iter(scorings.values()))["set_token_forwards_estimate"]
    out.update({"default_cadence_mean_minutes_at_raw_speed": mean_minutes,
                "token_forwards_in_target_at_raw_speed": fits,
                "attribution_over_target_token_forwards": first / fits})
    print(f"{'mean per scoring, default cadence':<34} {'':>19} "
          f"{gate['mean_token_forwards_per_scoring'] / 1e6:>7.2f}M {mean_minutes:>21.1f}")
    print(f"in {TARGET_SECONDS / 60:.0f} min at raw speed: {fits:,.0f} token-forwards, "
          f"one default attribution scoring of the set costs {first / fits:.1f}x that")
    return out


def _full_vocab_module():
    """``benchmarks.full_vocab``, also when this file runs as a script (``python benchmarks/monitor_cost.py``)."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import full_vocab

    return full_vocab


def full_vocabulary_check(seeds: int = 20) -> Optional[dict]:
    """Budget() and the sequential ladder's first stage replayed on the stored full-vocabulary fixtures.

    Seconds, no model: ``tests/fixtures/full_vocab`` holds SmolLM2 positions scored
    exactly over all 49,152 ids (``benchmarks/full_vocab.py``). ``None`` without them.
    """
    full_vocab = _full_vocab_module()
    fixtures = full_vocab.load_fixtures(full_vocab.FIXTURE_DIR)
    if not fixtures:
        return None
    first = SequentialBudget().stages[0]
    out = {name: full_vocab.check(fixtures, budget, seeds)
           for name, budget in (("Budget() (default)", Budget()), ("sequential first stage", first))}
    print(f"\nover the whole 49,152-id vocabulary ({len(fixtures)} stored SmolLM2 positions, {seeds} seeds; "
          f"benchmarks/full_vocab.py):")
    print(f"{'budget':<24} {'p95 |dAS|':>10} {'within 2 SE':>12} {'flag agreement':>15} {'exact/budget':>13}")
    for name, r in out.items():
        print(f"{name:<24} {r['abs_dAS_p95']:>10.4f} {r['within_2se_AS']:>12.3f} {r['noise_flag_agreement']:>15.3f} "
              f"{r['exact_token_forwards_per_position'] / r['token_forwards_per_position']:>12.0f}x")
    return out


def cost_of(model, tok, probes, config: ScoringConfig, n_probes: int, name: str) -> dict:
    """Score the first ``n_probes`` probes with ``config``; per-probe costs and the set's extrapolation."""
    rows, scores = [], []
    for probe in list(probes)[:n_probes]:
        started = time.perf_counter()
        scored = score_probe(model, tok, probe, config)
        seconds = time.perf_counter() - started
        scores.append(scored)
        info = scored.result.info
        rows.append({
            "probe": probe.id, "prompt_tokens": len(scored.result.prompt_ids),
            "response_tokens": len(scored.result.response_ids), "positions": len(scored.result.positions),
            "token_forwards": int(info["token_forwards"]), "exact_token_forwards": int(info["exact_token_forwards"]),
            "screen_token_forwards": int(info["screen_token_forwards"]), "seconds": seconds,
            "positions_per_stage": info.get("positions_per_stage"),
        })
        r = rows[-1]
        print(f"{name}: {probe.id}: n={r['prompt_tokens']} m={r['response_tokens']} {r['token_forwards']} "
              f"token-forwards, {seconds:.1f} s" + (f", positions per stage {r['positions_per_stage']}"
                                                  if r["positions_per_stage"] else ""), flush=True)
    report = build_report(scores, tok, config)
    tf = np.array([r["token_forwards"] for r in rows], dtype=float)
    secs = np.array([r["seconds"] for r in rows])
    ex = np.array([r["exact_token_forwards"] for r in rows], dtype=float)
    # Extrapolate to the whole set: per position a roughly constant part (the
    # screen) plus a part proportional to its suffix length T_k (exact ids, tail
    # samples, the refine stage's depth); both coefficients are fitted (least
    # squares) on the scored probes; the set's prompt lengths come from
    # rendering its probes, responses are taken at the scored mean length.
    m = float(np.mean([r["response_tokens"] for r in rows]))

    def features(n: int) -> tuple[float, float]:
        return float(n - 1), float(sum(n + m - k - 1 for k in range(1, n)))

    design = np.array([features(r["prompt_tokens"]) for r in rows])
    coef, *_ = np.linalg.lstsq(design, tf, rcond=None)
    set_design = np.array([features(len(render(p, tok).ids)) for p in probes])
    set_tf = float((set_design @ coef).sum())
    rate = float(tf.sum() / secs.sum())
    return {
        "candidates": config.to_dict()["candidates"], "probes_scored": len(rows),
        "token_forwards_per_probe_mean": float(tf.mean()), "seconds_per_probe_mean": float(secs.mean()),
        "token_forwards_per_second": rate, "exact_over_budgeted": float(ex.sum() / tf.sum()),
        "set_token_forwards_estimate": set_tf, "set_seconds_estimate": set_tf / rate,
        "noise_rate": float(report.metrics.noise_rate.value),
        "gate_value": float(report.metrics[DEFAULT_GATE_METRIC].value), "rows": rows,
    }


def replay_report(directory: str, share: float, seeds: int) -> None:
    """Print today's default and a sampled scoring side by side, replayed on a fully scored report."""
    from benchmarks.sampled_rates import replay_noise_rate
    from probattr_monitor.report import Report

    report = Report.load(directory)
    table = report.table
    scored = table[~table["excluded"].astype(bool)] if "excluded" in table.columns else table
    flags = scored["noise"].astype(bool).to_numpy()
    summary = replay_noise_rate(flags, share, seeds=seeds)
    print(f"{len(flags)} scored positions, noise rate {summary.full_rate:.4f} (today's default, every position)")
    print(f"{'scoring':<28} {'budgeted share':>14} {'p95 |d noise rate|':>19} {'CI coverage':>12}")
    print(f"{'today (every position)':<28} {1.0:>14.2f} {0.0:>19.4f} {'-':>12}")
    print(f"{'Poisson sample, Hajek':<28} {share:>14.2f} {summary.p95_abs_error:>19.4f} {summary.coverage:>12.3f}")
    print(f"mean positions sampled {summary.mean_sampled:.1f}; a ±0.01 CI at this rate needs "
          f"{summary.positions_needed_for_001} of {len(flags)} positions")
    print(f"token-forwards: the budgeted part scales with the share (~{share:.2f} of today's), "
          f"the full pass (L per probe) stays on every position")


if __name__ == "__main__":
    main()
