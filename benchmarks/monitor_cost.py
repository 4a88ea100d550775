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
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

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


if __name__ == "__main__":
    main()
