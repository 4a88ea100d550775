"""Rows resumed between the estimator's stages against rows fed whole: time, interleaved per position.

``benchmarks/monitor_cost.py`` scores a probe with each setting one after the
other, so a drift of the machine's speed during one block (on this 2-core
machine the same scoring varies by about 10 % between runs) falls on one
setting only. Here each scored position of SmolLM2 is attributed with
``Budget()`` (rows resumed, the default) and ``Budget(reuse_states=False)``
(every row fed whole) in the order A B B A, and the faster of each setting's
two runs is kept; so drift falls on both alike.

Reported: per position the token-forwards and seconds of both, then the
totals' ratios (whole rows over resumed rows: above 1 means the default is
cheaper) with a 95 % bootstrap interval over positions, and the largest
difference in AS between them (they compute the same quantity).

Run::

    python benchmarks/resumed_rows.py [--probe narrative-01] [--every 4] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from probattr_monitor import attribute
from probattr_monitor.engine import Budget
from probattr_monitor.io_utils import atomic_write_text
from probattr_monitor.engine.text import make_response
from probattr_monitor.models import load_model_and_tokenizer
from probattr_monitor.probes import load_probe_set, render
from probattr_monitor.scoring import ScoringConfig

SETTINGS = {"resumed": Budget(), "whole": Budget(reuse_states=False)}


def timed(model, prompt, response, k: int, budget: Budget) -> tuple[float, int, float]:
    """``(seconds, token-forwards, AS)`` of attributing position ``k``."""
    started = time.perf_counter()
    result = attribute(model, prompt, response, candidates=budget, positions=[k])
    seconds = time.perf_counter() - started
    return seconds, int(result.info["token_forwards"]), float(result.attribution[0])


def ratio_interval(whole: np.ndarray, resumed: np.ndarray, seeds: int = 10_000, seed: int = 0) -> tuple:
    """``sum(whole) / sum(resumed)`` and its 95 % percentile bootstrap interval over positions."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(whole), size=(seeds, len(whole)))
    boot = whole[idx].sum(axis=1) / resumed[idx].sum(axis=1)
    return float(whole.sum() / resumed.sum()), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="reasonable-en")
    parser.add_argument("--probe", default="narrative-01", help="probe id (default: %(default)s)")
    parser.add_argument("--every", type=int, default=4, help="score positions 1, 1 + E, 1 + 2E... (default: 4)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer("smollm2")
    probe = next(p for p in load_probe_set(args.set) if p.id == args.probe)
    config = ScoringConfig()  # the monitor's default: a greedy 20-token response
    prompt = render(probe, tok).ids
    response = make_response(model, tok, prompt, config.decoding, config.max_new_tokens)
    rows = []
    for k in range(1, len(prompt), args.every):
        runs = {name: [] for name in SETTINGS}
        for name in ("resumed", "whole", "whole", "resumed"):
            runs[name].append(timed(model, prompt, response, k, SETTINGS[name]))
        row = {"position": k, "suffix_tokens": len(prompt) + len(response) - k - 1}
        for name, r in runs.items():
            row[f"{name}_seconds"] = min(s for s, _, _ in r)
            row[f"{name}_token_forwards"] = r[0][1]
            row[f"{name}_as"] = r[0][2]
        rows.append(row)
        print(f"k={k:>2} T={row['suffix_tokens']:>2}  resumed {row['resumed_token_forwards']:>6} tf "
              f"{row['resumed_seconds']:>6.2f} s   whole {row['whole_token_forwards']:>6} tf "
              f"{row['whole_seconds']:>6.2f} s", flush=True)
    get = lambda key: np.array([r[key] for r in rows], dtype=np.float64)  # noqa: E731
    tf = ratio_interval(get("whole_token_forwards"), get("resumed_token_forwards"))
    sec = ratio_interval(get("whole_seconds"), get("resumed_seconds"))
    max_das = float(np.max(np.abs(get("whole_as") - get("resumed_as"))))
    summary = {"probe": probe.id, "positions": len(rows), "threads": torch.get_num_threads(), "rows": rows,
               "whole_over_resumed_token_forwards": tf, "whole_over_resumed_seconds": sec, "max_abs_dAS": max_das}
    print(f"\n{probe.id}, {len(rows)} positions, interleaved A B B A, fastest of 2 each:")
    print(f"whole rows / resumed rows: token-forwards {tf[0]:.3f}x (95% CI {tf[1]:.3f}-{tf[2]:.3f}), "
          f"time {sec[0]:.3f}x (95% CI {sec[1]:.3f}-{sec[2]:.3f}); max |dAS| {max_das:.1e}")
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
