"""What the opt-in replacement entropy costs on SmolLM2 (benchmark script, not a test).

For every probe of a set, one prior pass over the rendered prompt gives each
position's mass-90 % candidate set (:func:`~probattr_monitor.engine.replacement.mass_candidates`),
so the number of candidates, how many positions the cap cuts, and the cost of
the regenerations follow without generating anything:

* greedy rows: ``1 + sum_k min(C_k, cap)`` per probe (the unmodified prompt's
  reference plus one row per candidate); top-p rows: ``num_samples`` times that;
* generated tokens <= rows x ``max_new_tokens`` (equal unless every row of a
  batch stops at EOS early);
* token-forwards with a KV cache <= ``n + rows x (n + max_new_tokens - 1)``.

These are load-independent. With ``--run N`` the first N probes are also
regenerated for real and the measured counters printed beside the bounds.

Run::

    python benchmarks/replacement_cost.py [--set paper] [--cap 32] [--num-samples 20] [--max-new-tokens 20] [--run 0]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="paper")
    ap.add_argument("--cap", type=int, default=32)
    ap.add_argument("--mass", type=float, default=0.9)
    ap.add_argument("--num-samples", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--run", type=int, default=0, help="also regenerate the first N probes and print the counters")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from probattr_monitor.engine.replacement import prior_probs, mass_candidates, replacement_entropy
    from probattr_monitor.models import load_model_and_tokenizer
    from probattr_monitor.probes import load_probe_set, render

    model, tok = load_model_and_tokenizer("smollm2")
    rows_out = []
    for i, probe in enumerate(load_probe_set(args.set)):
        ids = render(probe, tok).ids
        n = len(ids)
        with torch.no_grad():
            prior = prior_probs(model, ids)
        sizes = np.array([mass_candidates(prior[k - 1].numpy(), args.mass)[0].size for k in range(1, n)])
        used = np.minimum(sizes, args.cap)
        greedy_rows = 1 + int(used.sum())
        rows = greedy_rows * (1 + args.num_samples)
        rec = {
            "probe": probe.id, "prompt_tokens": n, "positions": n - 1,
            "candidates_median": float(np.median(sizes)), "candidates_max": int(sizes.max()),
            "capped_positions": int((sizes > args.cap).sum()), "candidates_used": int(used.sum()),
            "generated_tokens_bound": rows * args.max_new_tokens,
            "token_forwards_bound": n + rows * (n + args.max_new_tokens - 1),
        }
        if i < args.run:
            res = replacement_entropy(model, ids, mass=args.mass, max_candidates=args.cap,
                                      max_new_tokens=args.max_new_tokens, num_samples=args.num_samples,
                                      eos_token_id=tok.eos_token_id)
            rec["generated_tokens"] = res.generated_tokens
            rec["token_forwards"] = res.token_forwards
        rows_out.append(rec)
        print(json.dumps(rec))
    total = {k: sum(r[k] for r in rows_out) for k in ("positions", "candidates_used", "capped_positions",
                                                       "generated_tokens_bound", "token_forwards_bound")}
    total["probes"] = len(rows_out)
    total["settings"] = {"cap": args.cap, "mass": args.mass, "num_samples": args.num_samples,
                         "max_new_tokens": args.max_new_tokens, "set": args.set}
    print(json.dumps({"total": total}))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"probes": rows_out, "total": total}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
