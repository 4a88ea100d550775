"""Measure H' (prompt+response contextual entropy) on SmolLM2 to choose the noise-token threshold.

For every probe of the built-in sets (`paper`, `reasonable-en`) this scores all
prompt positions of SmolLM2-135M-Instruct, with a greedy response, over each
position's top-N prior candidates plus the original token (exact over that set;
the full 49k vocabulary is unaffordable on a CPU, and for a trained model the
prior's top tokens carry nearly all of p_k's mass). It does the same for a
*damaged* copy of the model (Gaussian noise of ``--damage`` times each weight
tensor's std added to every weight), the stand-in for a poorly converged model.

It prints the distribution of H' over near-zero-AS tokens for both models, and
the noise rate each would get for a range of thresholds, so the default can be
chosen as one that a trained model rarely crosses and a damaged one often does.

Run:  python benchmarks/noise_threshold.py [--top 8] [--max-new-tokens 8] [--out noise_threshold.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from probattr_monitor.engine.passes import candidate_scores, response_log_prob
from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.runner import ModelRunner
from probattr_monitor.engine.stats import position_stats
from probattr_monitor.engine.text import make_response
from probattr_monitor.models import load_model_and_tokenizer
from probattr_monitor.probes import load_probe_set, render

THRESHOLDS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


def score_model(model, tok, probes, top, max_new_tokens, limit):
    """Per-token (AS, H, H', probe id) over the top-``top`` prior candidates per position."""
    rows = []
    for probe in list(probes)[:limit]:
        rendered = render(probe, tok)
        prompt = rendered.ids
        response = make_response(model, tok, prompt, "greedy", max_new_tokens)
        with scoring_mode(model):
            runner = ModelRunner(model, 2**30)
            full = runner.full_pass(prompt + response)
            lpr = response_log_prob(full, len(prompt), response)
            for k in range(1, len(prompt)):
                if rendered.template_mask[k]:
                    continue
                prior = full.log_probs[k - 1]
                ids = np.union1d(torch.topk(prior, top).indices.numpy(), [prompt[k]]).astype(np.int64)
                a, b = candidate_scores(runner, full, prompt, response, k, ids, None)
                s = position_stats(ids, a, b, lpr)
                rows.append((s.attribution, s.entropy_prompt, s.entropy_full, probe.id))
    return rows


def summarise(rows, name):
    as_ = np.array([r[0] for r in rows])
    h_full = np.array([r[2] for r in rows])
    near = np.abs(as_) <= 0.2
    hn = h_full[near]
    pct = {q: float(np.percentile(hn, q)) for q in (50, 75, 90, 95, 99)} if hn.size else {}
    rates = {t: float(np.mean(near & (h_full >= t))) for t in THRESHOLDS}
    print(f"\n{name}: {len(rows)} tokens, near-zero AS share {near.mean():.3f}, mean H' {h_full.mean():.3f}, "
          f"mean H' over near-zero {hn.mean() if hn.size else float('nan'):.3f}")
    print("  H' percentiles over near-zero tokens: " + ", ".join(f"p{q}={v:.3f}" for q, v in pct.items()))
    print("  noise rate by threshold (nats): " + ", ".join(f"{t}:{r:.3f}" for t, r in rates.items()))
    return {"n_tokens": len(rows), "near_zero_share": float(near.mean()), "mean_entropy_full": float(h_full.mean()),
            "near_zero_entropy_full_percentiles": pct, "noise_rate_by_threshold": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=8, help="prior candidates per position")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--damage", type=float, default=0.5, help="noise scale for the damaged model")
    parser.add_argument("--limit", type=int, default=1000, help="probes per set (trained model)")
    parser.add_argument("--damaged-limit", type=int, default=10, help="probes per set for the damaged model")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model, tok = load_model_and_tokenizer("smollm2")
    damaged = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in damaged.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std() * args.damage)
    out = {"settings": vars(args)}
    for set_name in ("paper", "reasonable-en"):
        probes = load_probe_set(set_name)
        for label, m, limit in (("smollm2", model, args.limit), ("damaged", damaged, args.damaged_limit)):
            started = time.perf_counter()
            rows = score_model(m, tok, probes, args.top, args.max_new_tokens, limit)
            out[f"{set_name}/{label}"] = summarise(rows, f"{set_name} / {label} ({time.perf_counter() - started:.0f} s)")
            out[f"{set_name}/{label}"]["rows"] = rows
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh)


if __name__ == "__main__":
    main()
