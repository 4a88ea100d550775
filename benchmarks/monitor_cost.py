"""What one scoring of the training monitor costs on SmolLM2 (benchmark script, not a test).

Scores the first ``--probes`` probes of a probe set with SmolLM2-135M-Instruct
exactly as :class:`~probattr_monitor.monitor.ProbAttrMonitor` does with its
default :class:`~probattr_monitor.scoring.ScoringConfig` (budgeted estimator,
``Budget()``; greedy 20-token responses), and reports per probe:

* token-forwards of the budgeted scoring (``info["token_forwards"]``) and what
  exact scoring over the whole vocabulary would have cost
  (``info["exact_token_forwards"]``), so their ratio;
* wall time of scoring (response generation included) and the suffix-token
  throughput.

The totals are extrapolated to the whole probe set: the budgeted cost of a
position is about a constant (the screen) plus a multiple of its suffix length,
both fitted on the scored probes; the set's prompt lengths come from rendering
its probes (no model call), and the seconds from the measured throughput.

Run::

    python benchmarks/monitor_cost.py --probes 4 [--set reasonable-en] [--threads 2] [--json out.json]

Two further modes (no model needed for the first, seconds):

* ``--replay-report DIR [--share 0.1] [--seeds 1000]``: on a report scored with
  today's default (every position), replay a Poisson sample of a share of the
  positions over seeds and print, side by side with the full scoring, the
  token-forwards (the share of the budgeted part; the full pass stays on every
  position), the Hájek noise rate's p95 error against the full table's rate
  and its CI coverage (see ``benchmarks/sampled_rates.py`` for what the replay
  approximates).
* ``--full-vocab-fixtures DIR [--positions 12]``: score that many SmolLM2
  positions (late positions of the first probes, short responses) exactly
  over all 49,152 ids and with ``Budget()``, store each as a JSON fixture in
  DIR (skipping those already there), and print p95 |ΔAS| and the share of
  errors within two reported standard errors. About 10 minutes per position on
  2 idle cores; replays in seconds once stored.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from probattr_monitor.io_utils import atomic_write_text
from probattr_monitor.models import load_model_and_tokenizer
from probattr_monitor.probes import load_probe_set, render
from probattr_monitor.scoring import ScoringConfig, score_probe


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="reasonable-en", help="probe set (default: %(default)s)")
    parser.add_argument("--probes", type=int, default=4, help="how many of its probes to score")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the figures here")
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
        from benchmarks.full_vocab import run_full_vocab

        run_full_vocab(args.full_vocab_fixtures, args.positions, args.set)
        return

    model, tok = load_model_and_tokenizer("smollm2")
    config = ScoringConfig()  # the monitor's default
    probes = load_probe_set(args.set)
    rows = []
    for probe in list(probes)[: args.probes]:
        started = time.perf_counter()
        scored = score_probe(model, tok, probe, config)
        seconds = time.perf_counter() - started
        info = scored.result.info
        rows.append({
            "probe": probe.id, "prompt_tokens": len(scored.result.prompt_ids),
            "response_tokens": len(scored.result.response_ids), "positions": len(scored.result.positions),
            "token_forwards": int(info["token_forwards"]), "exact_token_forwards": int(info["exact_token_forwards"]),
            "screen_token_forwards": int(info["screen_token_forwards"]), "seconds": seconds,
        })
        r = rows[-1]
        print(f"{probe.id}: n={r['prompt_tokens']} m={r['response_tokens']} {r['token_forwards']} token-forwards "
              f"(exact {r['exact_token_forwards']}, {r['exact_token_forwards'] / r['token_forwards']:.0f}x), "
              f"{seconds:.1f} s", flush=True)

    tf = np.array([r["token_forwards"] for r in rows], dtype=float)
    secs = np.array([r["seconds"] for r in rows])
    ex = np.array([r["exact_token_forwards"] for r in rows], dtype=float)
    # Extrapolate to the whole set with the cost model of Budget: per position a
    # roughly constant screen plus a part proportional to its suffix length T_k
    # (exact ids, tail samples, the refine stage's depth). Both coefficients are
    # fitted (least squares) on the scored probes; the set's prompt lengths come
    # from rendering its probes, responses are taken at the scored mean length.
    m = float(np.mean([r["response_tokens"] for r in rows]))

    def features(n: int) -> tuple[float, float]:
        return float(n - 1), float(sum(n + m - k - 1 for k in range(1, n)))

    design = np.array([features(r["prompt_tokens"]) for r in rows])
    coef, *_ = np.linalg.lstsq(design, tf, rcond=None)
    set_design = np.array([features(len(render(p, tok).ids)) for p in probes])
    set_tf = float((set_design @ coef).sum())
    rate = float(tf.sum() / secs.sum())
    summary = {
        "model": "SmolLM2-135M-Instruct", "probe_set": args.set, "probes_scored": len(rows),
        "probes_in_set": len(probes), "budget": config.to_dict()["candidates"],
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "token_forwards_per_probe_mean": float(tf.mean()), "seconds_per_probe_mean": float(secs.mean()),
        "token_forwards_per_second": rate,
        "exact_over_budgeted": float(ex.sum() / tf.sum()),
        "set_token_forwards_estimate": set_tf, "set_seconds_estimate": set_tf / rate,
        "rows": rows,
    }
    print()
    print(f"{summary['model']}, {summary['machine']}, {summary['threads']} threads, default Budget "
          f"{summary['budget']}")
    print(f"per probe: {summary['token_forwards_per_probe_mean']:.0f} token-forwards, "
          f"{summary['seconds_per_probe_mean']:.1f} s ({summary['token_forwards_per_second']:.0f} token-forwards/s); "
          f"exact over the vocabulary would cost {summary['exact_over_budgeted']:.0f}x more")
    print(f"whole '{args.set}' set ({len(probes)} probes): ~{summary['set_token_forwards_estimate'] / 1e6:.2f}M "
          f"token-forwards, ~{summary['set_seconds_estimate'] / 60:.0f} min per scoring at this throughput")
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2))


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
