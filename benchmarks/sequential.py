"""Sequential budgets against today's default on SmolLM2 (benchmark script, not a test).

Scores a spread of probes of a probe set as the monitor does (greedy 20-token
responses) with the reference ``Budget()`` (today's default, every position)
and with each candidate stage over several seeds, keeps every result in
``--records`` (resumable: a stored result is not recomputed), then replays
sequential ladders offline: every position takes its first stage's result,
positions still undecided at ``z`` standard errors
(:func:`probattr_monitor.report.noise.undecided`) take the next stage's, and
the last stage is the reference itself. The replay is the product's
computation (:func:`probattr_monitor.engine.sequential.replace_positions`, the
same rule, then :meth:`Report.from_results`): a position's budgeted result
depends only on its budget, ``[seed, k]`` and the input, never on which other
positions are scored, so scoring every position with every stage and merging
afterwards gives what the ladder gives when it runs.

Printed per ladder and ``z``: the token-forwards against the reference (from
the engine's per-position counts, checked against its totals), the share of
positions each stage scores, the p95 over seeds of |noise rate - reference
noise rate| on the scored probes and projected onto a set of ``--project``
probes (resampling probes with their per-seed errors), the share of seeds
whose 95 % CI (the report's probe bootstrap) covers the reference rate, and
the agreement of the noise flags and AS classes with the reference.

Run (the reference ``Budget()`` dominates: about 3 minutes per probe on 2 idle
cores, 4 probes and the stages' seeds about 50 minutes of one loaded core
here; the records make a re-run seconds)::

    python -m benchmarks.sequential --probes 4 --stages cheap6:3,s256:6 --records runs/sequential --json runs/sequential.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from probattr_monitor.engine import Budget, attribute
from probattr_monitor.engine.budget import position_token_forwards
from probattr_monitor.engine.sequential import replace_positions
from probattr_monitor.engine.text import make_response
from probattr_monitor.io_utils import atomic_write_text
from probattr_monitor.report import NoiseConfig, Report, classify, noise_flags
from probattr_monitor.scoring import ScoringConfig, undecided_rule

logger = logging.getLogger("benchmarks.sequential")

#: Candidate stages (name -> Budget with seed 0; the seed is set per run).
STAGES = {
    "cheap6": Budget(max_candidates=6, tail_samples=6, screen=0, refine=0),
    "s256": Budget(max_candidates=6, tail_samples=6, screen=256, refine=0),
    "s1024": Budget(max_candidates=6, tail_samples=6, screen=1024, refine=0),
}

#: Ladders replayed: stage names, the reference ``Budget()`` always last.
LADDERS = (("cheap6",), ("s256",), ("s1024",), ("cheap6", "s256"), ("s256", "s1024"))

Z_VALUES = (1.0, 1.5, 2.0, 2.5, 3.0)


def position_costs(res) -> np.ndarray:
    """Token-forwards of each position (KV-cache path), checked against the engine's total."""
    info = res.info
    length = len(res.prompt_ids) + len(res.response_ids)
    suffix = length - res.positions - 1
    counts = {key: np.asarray(info[key]) for key in ("num_screened", "num_refined", "refine_depth", "num_exact",
                                                       "num_sampled", "reused_token_forwards") if key in info}
    per = position_token_forwards(counts, counts["num_exact"] + counts["num_sampled"], suffix)
    if info.get("path") != "full" and int(per.sum()) + length != int(info["token_forwards"]):
        logger.warning("cost model off: %d + %d != %d", per.sum(), length, info["token_forwards"])
    return per.astype(np.float64)


def load_or_score(records: Path, key: str, fn):
    path = records / f"{key}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    value = fn()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(value))
    tmp.replace(path)
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="reasonable-en")
    parser.add_argument("--probes", type=int, default=6, help="probes, spread evenly over the set")
    parser.add_argument("--stages", default="cheap6:3,s256:6",
                        help="comma-separated NAME:SEEDS of STAGES to score (a replay of seed s reads seed "
                             "s mod SEEDS of each later stage; the ladder's first stage sets the seeds)")
    parser.add_argument("--records", default="runs/sequential")
    parser.add_argument("--project", type=int, default=None, help="probes of the projected set (default: the set's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--score-only", action="store_true", help="fill the records, print nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from probattr_monitor.models import load_model_and_tokenizer
    from probattr_monitor.probes import load_probe_set, render

    stage_seeds = {name: int(n) for name, n in (part.split(":") for part in args.stages.split(","))}
    records = Path(args.records)
    records.mkdir(parents=True, exist_ok=True)
    model, tok = load_model_and_tokenizer("smollm2")
    config = ScoringConfig()
    probe_set = load_probe_set(args.set)
    every = np.unique(np.linspace(0, len(probe_set) - 1, args.probes).round().astype(int))
    probes = [probe_set.probes[i] for i in every]
    data = {}
    for probe in probes:
        rendered = render(probe, tok)
        response = load_or_score(records, f"{probe.id}_response", lambda: make_response(
            model, tok, rendered.ids, config.decoding, config.max_new_tokens, config.top_p,
            config.num_samples, config.seed))

        def run(budget, rendered=rendered, response=response):
            return attribute(model, rendered.ids, response, candidates=budget,
                             memory_budget_mb=config.memory_budget_mb)

        ref = load_or_score(records, f"{probe.id}_ref", lambda: run(Budget()))
        logger.info("%s: reference %d token-forwards", probe.id, ref.info["token_forwards"])
        stages = {}
        for name, n_seeds in stage_seeds.items():
            budget = STAGES[name]
            for seed in range(n_seeds):
                stages[name, seed] = load_or_score(
                    records, f"{probe.id}_{name}_{seed}",
                    lambda b=budget, s=seed: run(dataclasses.replace(b, seed=s)))
            logger.info("%s: %s done", probe.id, name)
        data[probe.id] = (tuple(rendered.template_mask), ref, stages)
    if args.score_only:
        return
    ladders = [ladder for ladder in LADDERS if set(ladder) <= set(stage_seeds)]
    summary = replay(data, stage_seeds, config.noise, args.project or len(probe_set), len(probe_set), ladders)
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2))


def replay(data: dict, stage_seeds: dict, noise: NoiseConfig, project: int, set_size: int, ladders) -> dict:
    """Replay every ladder and z over the seeds; print and return the figures."""
    def report(results):
        return Report.from_results(list(results.items()), cfg=noise,
                                   template_masks={p: list(d[0]) for p, d in data.items()}, n_boot=1000, seed=0)

    ref_results = {p: d[1] for p, d in data.items()}
    ref_report = report(ref_results)
    ref_rate = ref_report.metrics.noise_rate.value
    ref_cost = sum(position_costs(r).sum() for r in ref_results.values())
    n_pos = sum(len(r) for r in ref_results.values())
    ref_tf = sum(r.info["token_forwards"] for r in ref_results.values())
    print(f"{len(data)} probes, {n_pos} positions; reference Budget(): noise rate {ref_rate:.4f}, "
          f"{ref_tf} token-forwards ({ref_tf / n_pos:.0f} per position)")
    rows = []
    rng = np.random.default_rng(0)
    for ladder in ladders:
        seeds = stage_seeds[ladder[0]]
        for z in Z_VALUES:
            errs, covered, costs, agree_flag, agree_class, shares, per_probe_err = [], 0, [], [], [], [], []
            for seed in range(seeds):
                merged, cost, reached = {}, 0.0, np.zeros(len(ladder) + 1)
                for pid, (mask, ref, stages) in data.items():
                    excluded = np.asarray(mask, dtype=bool)[ref.positions]
                    rule = undecided_rule(noise, mask)
                    res = stages[ladder[0], seed]
                    cost += len(ref.prompt_ids) + len(ref.response_ids) + position_costs(res).sum()
                    stage_of = np.zeros(len(ref), dtype=int)
                    for index, nxt in enumerate(list(ladder[1:]) + ["ref"], start=1):
                        todo = rule(res, z)
                        if not todo.any():
                            break
                        full = ref if nxt == "ref" else stages[nxt, seed % stage_seeds[nxt]]
                        sub = _subset(full, todo)
                        cost += len(ref.prompt_ids) + len(ref.response_ids) + position_costs(full)[todo].sum()
                        res = replace_positions(res, sub, todo)
                        stage_of[todo] = index
                    merged[pid] = res
                    for i in range(len(ladder) + 1):
                        reached[i] += np.sum(stage_of >= i)
                    keep = ~excluded
                    agree_flag.append(np.mean(noise_flags(res.attribution, res.entropy_full, noise)[keep]
                                              == noise_flags(ref.attribution, ref.entropy_full, noise)[keep]))
                    agree_class.append(np.mean(classify(res.attribution, noise)[keep]
                                               == classify(ref.attribution, noise)[keep]))
                rep = report(merged)
                mv = rep.metrics.noise_rate
                errs.append(abs(mv.value - ref_rate))
                covered += mv.low <= ref_rate <= mv.high
                costs.append(cost)
                shares.append(reached / n_pos)
                per_probe_err.append(_probe_flag_diffs(merged, ref_results, data, noise))
            proj = _projected_p95(per_probe_err, project, rng)
            row = {
                "ladder": list(ladder) + ["Budget()"], "z": z, "seeds": seeds,
                "token_forwards_ratio": float(ref_tf / np.mean(costs)),
                "token_forwards_per_position": float(np.mean(costs) / n_pos),
                "stage_shares": np.mean(shares, axis=0).round(4).tolist(),
                "p95_abs_error": float(np.quantile(errs, 0.95)), "max_abs_error": float(np.max(errs)),
                "projected_p95_abs_error": proj, "ci_coverage": covered / seeds,
                "flag_agreement": float(np.mean(agree_flag)), "class_agreement": float(np.mean(agree_class)),
                "projected_set_token_forwards": float(np.mean(costs) / n_pos * _set_positions(set_size, data, n_pos)),
            }
            rows.append(row)
    print(f"{'ladder':<28} {'z':>4} {'x fewer tf':>10} {'tf/pos':>7} {'stage shares':<22} {'p95 |d|':>8} "
          f"{'proj p95':>8} {'CI cov':>6} {'flag agr':>8} {'class agr':>9}")
    for r in rows:
        print(f"{' > '.join(r['ladder']):<28} {r['z']:>4.1f} {r['token_forwards_ratio']:>10.1f} "
              f"{r['token_forwards_per_position']:>7.0f} {str(r['stage_shares']):<22} {r['p95_abs_error']:>8.4f} "
              f"{r['projected_p95_abs_error']:>8.4f} {r['ci_coverage']:>6.2f} {r['flag_agreement']:>8.4f} "
              f"{r['class_agreement']:>9.4f}")
    return {"probes": list(data), "positions": n_pos, "reference_noise_rate": ref_rate,
            "reference_token_forwards": int(ref_tf), "reference_cost_model": float(ref_cost), "rows": rows}


def _subset(res, mask):
    """The result restricted to the masked positions (as if those alone had been scored)."""
    n = len(res)
    out = {}
    for f in dataclasses.fields(res):
        v = getattr(res, f.name)
        if isinstance(v, np.ndarray) and len(v) == n:
            out[f.name] = v[mask]
    out["stderr"] = {k: np.asarray(v)[mask] for k, v in res.stderr.items()}
    out["info"] = {k: (np.asarray(v)[mask] if isinstance(v, (list, np.ndarray)) and len(v) == n else v)
                   for k, v in res.info.items()}
    return dataclasses.replace(res, **out)


def _probe_flag_diffs(merged, ref_results, data, noise):
    """Per probe: (sum of flag differences, scored positions) over the non-excluded positions."""
    out = []
    for pid, res in merged.items():
        ref = ref_results[pid]
        keep = ~np.asarray(data[pid][0], dtype=bool)[ref.positions]
        d = (noise_flags(res.attribution, res.entropy_full, noise).astype(int)
             - noise_flags(ref.attribution, ref.entropy_full, noise).astype(int))[keep]
        out.append((int(d.sum()), int(keep.sum())))
    return out


def _projected_p95(per_seed, project: int, rng, draws: int = 2000) -> float:
    """p95 of |rate error| on a set of ``project`` probes drawn with replacement from the scored ones."""
    n_probes = len(per_seed[0])
    errs = []
    for _ in range(draws):
        seed = rng.integers(len(per_seed))
        pick = rng.integers(n_probes, size=project)
        diff = sum(per_seed[seed][i][0] for i in pick)
        size = sum(per_seed[seed][i][1] for i in pick)
        errs.append(abs(diff) / size)
    return float(np.quantile(errs, 0.95))


def _set_positions(set_size, data, n_pos):
    return n_pos / len(data) * set_size


if __name__ == "__main__":
    main()
