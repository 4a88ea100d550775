"""Budgeted estimator versus exact scoring (issue 5).

Two models on which exact scoring is affordable on a CPU:

``small``
    A GPT-2 (``--small-layers`` layers, width ``--small-width``) trained here
    for ``--small-train-steps`` AdamW steps (batch 32 x 64 tokens,
    deterministic) on the docstrings of the Python standard library's
    top-level modules, with a byte-level BPE vocabulary of ``--small-vocab``
    tokens (at most 4096) trained on the same text. ``--small-corpus flat``
    (the default) makes every whitespace run one space so the text reads as
    prose like the probes; ``raw`` keeps the line breaks, and the small
    model's greedy responses then degenerate into blank lines (a stress case:
    see the README). Exact = its full vocabulary.
``smollm2``
    SmolLM2-135M-Instruct (GGUF, float32) over a fixed candidate universe: the
    ``--smol-universe`` ids of highest average prior over every position of
    every probe of both probe sets (one forward per probe). Exact =
    ``attribute(..., candidates=universe)``; budgeted = the estimator
    restricted to the same universe (``Budget(universe=...)``).

Probes: the first ``--*-paper-probes`` of ``paper`` and the first
``--*-reasonable-probes`` of ``reasonable-en``, greedy responses of
``--*-new-tokens`` tokens, ``--*-positions`` prompt positions per probe
(``--positions-from uniform``, the default: drawn uniformly, seeded by the
probe's id, so each position is as likely as in whole-prompt scoring;
``spread``: evenly spaced with both ends, which over-weights the first token
after BOS, the hardest position). The JSON output lists every probe and
position used.

Per budget setting, errors are measured over ``--seeds`` seeds by replaying
:func:`probattr_monitor.engine.budgeted.estimate_position` on the exact
per-candidate scores already computed for the reference (the same code path
the estimator runs, fed stored scores instead of model calls); token-forwards
are counted by the replay, and ``--real-runs`` budgets also run through
``attribute(..., candidates=Budget(...))`` for wall time and to check that the
real run equals the replay (``replay_vs_real_max_abs_dAS``, and the
token-forward counts).

Reported per model and budget: |ΔAS| and |ΔH'| against exact (median, 95th
percentile), the share of errors within two reported standard errors (AS, H',
H, KL), agreement of the noise-token flag (``NoiseConfig()`` defaults),
token-forwards and wall time against exact. Targets (issue 5): >= 20x fewer
token-forwards, p95 |ΔAS| <= 0.05 nats, >= 97 % noise-flag agreement,
>= 90 % of errors within 2 SE.

Exact scoring dominates the run time (on a 2-core CPU, about 700 SmolLM2
token-forwards per second: an hour or more for a few dozen SmolLM2 positions
over a 4,096-id universe). ``--records PREFIX`` keeps the exact scores in
``PREFIX.<model>.pkl``, written after every probe, and reuses those of the
same probes, positions and universe on the next run (the exact wall time is
the one measured when they were computed); ``--model-cache DIR`` keeps the
trained small model.

Run:  python benchmarks/budgeted.py --out bench_budgeted.json [--threads 1]
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import pickle
import platform
import sys
import sysconfig
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from probattr_monitor import Budget, attribute
from probattr_monitor.engine.budget import position_token_forwards
from probattr_monitor.engine.budgeted import estimate_position
from probattr_monitor.engine.passes import full_pass, response_log_prob, with_original
from probattr_monitor.engine.tail import STDERR_FIELDS
from probattr_monitor.engine.generation import greedy_response
from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.runner import ModelRunner
from probattr_monitor.io_utils import atomic_write_bytes, atomic_write_text
from probattr_monitor.probes import load_probe_set, render
from probattr_monitor.report.noise import NoiseConfig, noise_flags

PROBE_SETS = ("paper", "reasonable-en")
MEMORY_BYTES = 1024 * 2**20

# ---------------------------------------------------------------------- budgets
#: Budget settings per model (the cost ratio depends on the universe size and suffix lengths).
#: ``default`` is ``Budget()``, the training monitor's default; the others show the trade-off.
DEFAULT_BUDGETS = {
    "small": ("default", "mc=32,ts=32,screen=512,refine=0", "mc=16,ts=16,screen=256,refine=64"),
    "smollm2": ("default", "mc=32,ts=32,screen=512,refine=128", "mc=16,ts=16,screen=256,refine=64"),
}


def parse_budget(spec: str) -> Budget:
    """``"mc=32,ts=32,screen=256,refine=128,depth=0.25,nucleus=0.9"`` -> :class:`Budget`.

    Keys left out keep ``Budget``'s defaults; ``default`` alone is ``Budget()``.
    """
    kw = {}
    if spec.strip() == "default":
        return Budget()
    for part in spec.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        if key == "mc":
            kw["max_candidates"] = int(value)
        elif key == "ts":
            kw["tail_samples"] = int(value)
        elif key == "screen":
            kw["screen"] = True if value == "all" else (False if value in ("none", "0") else int(value))
        elif key == "nucleus":
            kw["nucleus"] = float(value)
        elif key == "refine":
            kw["refine"] = int(value)
        elif key == "depth":
            kw["refine_depth"] = float(value)
        else:
            raise ValueError(f"unknown budget key {key!r} in {spec!r}")
    return Budget(**kw)


# ---------------------------------------------------------------------- models
def stdlib_docstrings() -> list[str]:
    """Docstrings (> 80 characters) of the top-level modules of the Python standard library."""
    root = sysconfig.get_paths()["stdlib"]
    docs = []
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py"):
            continue
        try:
            tree = ast.parse(Path(root, name).read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    docs.append(doc)
    return docs


def train_small_model(vocab: int, steps: int, width: int, seed: int = 0, cache_dir=None, layers: int = 2,
                      flat: bool = False):
    """Byte-level BPE + small GPT-2 trained for ``steps`` AdamW steps on stdlib docstrings.

    ``flat``: every run of whitespace in the docstrings (line breaks and
    indentation included) becomes one space, so the corpus reads as running
    prose like the probes; raw docstrings make greedy responses of a small
    model degenerate into blank lines.

    Deterministic for a seed (CPU). With ``cache_dir``, the trained model and
    tokenizer are saved there and reused when the same settings ask again.
    Returns ``(model, encode, meta)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel

    if vocab > 4096:
        raise ValueError("--small-vocab must be at most 4096 (issue 5)")
    tag = (f"small-v{vocab}-w{width}-s{steps}-seed{seed}" + (f"-l{layers}" if layers != 2 else "")
           + ("-flat" if flat else ""))
    cached = Path(cache_dir, tag) if cache_dir else None
    if cached is not None and (cached / "model.pt").is_file():
        tok = Tokenizer.from_file(str(cached / "tokenizer.json"))
        saved = torch.load(cached / "model.pt", weights_only=False)
        model = GPT2LMHeadModel(GPT2Config(**saved["config"]))
        model.load_state_dict(saved["state"])
        model.eval()
        return model, (lambda text: [0] + tok.encode(text).ids), saved["meta"]
    docs = stdlib_docstrings()
    if flat:
        docs = [" ".join(d.split()) for d in docs]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer)
    data = []
    for d in docs:
        data += [0] + tok.encode(d).ids
    data = torch.tensor(data)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=256, n_embd=width, n_layer=layers,
                        n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    started = time.perf_counter()
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 20) * max(0.1, 1 - i / steps))
        model.train()
        for step in range(steps):
            starts = torch.randint(0, len(data) - 65, (32,), generator=gen)
            x = torch.stack([data[s : s + 64] for s in starts])
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if (step + 1) % 100 == 0:
                print(f"  train step {step + 1}/{steps}: loss {np.mean(losses[-50:]):.3f}", flush=True)
    model.eval()
    meta = {"vocab_size": tok.get_vocab_size(), "width": width, "layers": layers,
            "corpus": "flat" if flat else "raw", "train_steps": steps,
            "train_tokens": steps * 32 * 64, "corpus_tokens": int(len(data)),
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
            "train_seconds": time.perf_counter() - started}
    if cached is not None:
        cached.mkdir(parents=True, exist_ok=True)
        tok.save(str(cached / "tokenizer.json"))
        torch.save({"config": config.to_dict(), "state": model.state_dict(), "meta": meta}, cached / "model.pt")
    return model, (lambda text: [0] + tok.encode(text).ids), meta


def choose_positions(n: int, count: int, how: str, key: str, window: int = 0) -> list[int]:
    """Scored positions of one probe: ``spread`` (evenly spaced, both ends included) or
    ``uniform`` (``count`` distinct positions drawn uniformly from ``1 .. n - 1``, seeded by
    the probe's id, so each position is as likely as it is in a whole-prompt scoring run)."""
    if how == "spread":
        return spread_positions(n, count, window)
    first = max(1, n - window) if window else 1
    pool = np.arange(first, n)
    if count <= 0 or count >= len(pool):
        return pool.tolist()
    rng = np.random.default_rng([zlib.crc32(key.encode("utf-8"))])
    return sorted(int(p) for p in rng.choice(pool, count, replace=False))


def spread_positions(n: int, count: int, window: int = 0) -> list[int]:
    """``count`` evenly spaced positions in ``1 .. n - 1`` (the last ``window`` of them if ``window``)."""
    first = max(1, n - window) if window else 1
    if count <= 0 or count >= n - first:
        return list(range(first, n))
    return sorted({int(round(p)) for p in np.linspace(first, n - 1, count)})


# ---------------------------------------------------------------------- exact data
def collect_exact(model, items, universe):
    """Exact a_k, b_k over the universe, and every per-token term behind them.

    Exact cost (token-forwards, wall time) is measured for the full pass plus
    the candidate passes, exactly the work of ``attribute(candidates=universe)``
    (whose ``candidate_scores`` sums the same per-token log-probabilities).
    Each row keeps ``lp`` (float32 ``[|U|, L - k - 1]``: ``log p`` of every
    suffix token after each candidate), so that screens deeper than one token
    can be replayed; ``screen`` is its first column, ``log p(x_{k+1} | x_<k, v)``.
    """
    out = []
    for item in items:
        prompt, response = item["prompt"], item["response"]
        with scoring_mode(model):
            runner = ModelRunner(model, MEMORY_BYTES)
            t0 = time.perf_counter()
            full = full_pass(runner, prompt, response)
            lpr = response_log_prob(full, len(prompt), response)
            rows = []
            for k in item["positions"]:
                ids = with_original(universe, prompt[k])
                rest = prompt[k + 1 :] + response
                bs = runner.default_batch_size(k, len(rest) + 1, full.vocab_size)
                lp = np.concatenate([
                    runner.suffix_log_probs(full, prompt[:k], torch.from_numpy(ids[s : s + bs]), rest).numpy()
                    for s in range(0, len(ids), bs)
                ])
                prior = full.log_probs[k - 1].numpy()[ids].copy()
                n_rest = len(prompt) - k - 1
                a = prior + lp[:, :n_rest].sum(axis=1)
                b = a + lp[:, n_rest:].sum(axis=1)
                rows.append({"k": k, "ids": ids, "a": a, "b": b, "prior": prior, "n_prompt_rest": n_rest,
                             "lp": lp.astype(np.float32), "screen": lp[:, 0].copy()})
            exact_seconds = time.perf_counter() - t0
            exact_tf = runner.token_forwards
        out.append({**item, "lpr": lpr, "rows": rows, "exact_tf": exact_tf, "exact_seconds": exact_seconds})
        print(f"  exact {item['id']}: {len(rows)} positions, {exact_tf} token-forwards, {exact_seconds:.1f} s",
              flush=True)
    return out


def exact_stats(rec):
    from probattr_monitor.engine.stats import position_stats

    return [position_stats(r["ids"], r["a"], r["b"], rec["lpr"]) for r in rec["rows"]]


def replay(rec, budget):
    """The estimator at every scored position of ``rec``, from the stored exact scores."""
    res = []
    for r in rec["rows"]:
        lookup = {int(v): i for i, v in enumerate(r["ids"])}

        def score_fn(cand, r=r, lookup=lookup):
            idx = np.array([lookup[int(v)] for v in cand], dtype=np.int64)
            return r["a"][idx], r["b"][idx]

        def screen_fn(cand, depth, r=r, lookup=lookup):
            idx = np.array([lookup[int(v)] for v in cand], dtype=np.int64)
            return r["lp"][idx, :depth].astype(np.float64).sum(axis=1)

        suffix_len = len(rec["prompt"]) + len(rec["response"]) - r["k"] - 1
        st, se, extra = estimate_position(r["k"], r["ids"], rec["prompt"][r["k"]], r["prior"], budget,
                                          score_fn, screen_fn, rec["lpr"], suffix_len=suffix_len)
        cost = position_token_forwards(extra, extra["num_exact"] + extra["num_sampled"], suffix_len)
        res.append((st, se, extra, cost))
    return res


# ---------------------------------------------------------------------- analysis
def evaluate(records, budget, seeds, model, universe_ids, real=True):
    """Errors over records x positions x seeds; wall time from one real run per record (``real``)."""
    cfg = NoiseConfig()
    ex_as, ex_h = [], []
    for rec in records:
        for st in exact_stats(rec):
            ex_as.append(st.attribution)
            ex_h.append(st.entropy_full)
    ex_as, ex_h = np.array(ex_as), np.array(ex_h)
    ncand = np.array([len(r["ids"]) for rec in records for r in rec["rows"]])
    ex_flag = noise_flags(ex_as, ex_h, cfg, ncand)
    d_as, d_h, se_as, se_h, d_kl, se_kl, d_hp, se_hp, agree = [], [], [], [], [], [], [], [], []
    rate_diff = []  # |noise rate (budgeted) - noise rate (exact)| over all scored positions, per seed
    ex_kl = np.array([st.kl for rec in records for st in exact_stats(rec)])
    ex_hp = np.array([st.entropy_prompt for rec in records for st in exact_stats(rec)])
    replay_cost = 0
    for seed in range(seeds):
        b = dataclasses.replace(budget, seed=seed)
        est = [x for rec in records for x in replay(rec, b)]
        if seed == 0:
            replay_cost = sum(x[3] for x in est)
        att = np.array([x[0].attribution for x in est])
        hf = np.array([x[0].entropy_full for x in est])
        d_as.append(att - ex_as)
        d_h.append(hf - ex_h)
        d_kl.append(np.array([x[0].kl for x in est]) - ex_kl)
        d_hp.append(np.array([x[0].entropy_prompt for x in est]) - ex_hp)
        se = np.array([x[1] for x in est])
        se_as.append(se[:, STDERR_FIELDS.index("attribution")])
        se_h.append(se[:, STDERR_FIELDS.index("entropy_full")])
        se_kl.append(se[:, STDERR_FIELDS.index("kl")])
        se_hp.append(se[:, STDERR_FIELDS.index("entropy_prompt")])
        flags = noise_flags(att, hf, cfg, ncand)
        agree.append(flags == ex_flag)
        rate_diff.append(abs(float(np.mean(flags)) - float(np.mean(ex_flag))))
    d_as, d_h, se_as, se_h = map(np.concatenate, (d_as, d_h, se_as, se_h))
    d_kl, d_hp, se_kl, se_hp = map(np.concatenate, (d_kl, d_hp, se_kl, se_hp))
    agree = np.concatenate(agree)

    def within(d, s):
        return float(np.mean(np.abs(d) <= 2 * s + 1e-12))

    # cost: the replay counts exactly what the estimator forwards (full pass + screen + scored ids)
    exact_tf = sum(rec["exact_tf"] for rec in records)
    exact_s = sum(rec["exact_seconds"] for rec in records)
    replay_tf = replay_cost + sum(len(rec["prompt"]) + len(rec["response"]) for rec in records)
    real_tf = real_s = max_dev = None
    if real:
        # real runs (seed 0): wall time, and a check of the replay against the estimator itself
        real_tf = real_s = max_dev = 0.0
        seed0 = [x for rec in records for x in replay(rec, dataclasses.replace(budget, seed=0))]
        i = 0
        for rec in records:
            b = dataclasses.replace(budget, seed=0, universe=universe_ids)
            t0 = time.perf_counter()
            res = attribute(model, rec["prompt"], rec["response"], candidates=b, positions=rec["positions"])
            real_s += time.perf_counter() - t0
            real_tf += res.info["token_forwards"]
            rep = np.array([x[0].attribution for x in seed0[i : i + len(rec["rows"])]])
            max_dev = max(max_dev, float(np.max(np.abs(rep - res.attribution))))
            i += len(rec["rows"])
    return {
        "budget": {"max_candidates": budget.max_candidates, "tail_samples": budget.tail_samples,
                   "nucleus": budget.nucleus, "screen": budget.screen},
        "positions": int(len(ex_as)),
        "seeds": seeds,
        "abs_dAS_median": float(np.median(np.abs(d_as))),
        "abs_dAS_p95": float(np.percentile(np.abs(d_as), 95)),
        "abs_dAS_max": float(np.max(np.abs(d_as))),
        "abs_dH_full_median": float(np.median(np.abs(d_h))),
        "abs_dH_full_p95": float(np.percentile(np.abs(d_h), 95)),
        "abs_dH_prompt_p95": float(np.percentile(np.abs(d_hp), 95)),
        "abs_dKL_p95": float(np.percentile(np.abs(d_kl), 95)),
        "within_2se_AS": within(d_as, se_as),
        "within_2se_H_full": within(d_h, se_h),
        "within_2se_H_prompt": within(d_hp, se_hp),
        "within_2se_KL": within(d_kl, se_kl),
        "noise_flag_agreement": float(np.mean(agree)),
        "exact_noise_rate": float(np.mean(ex_flag)),
        "noise_rate_abs_diff_mean": float(np.mean(rate_diff)),
        "noise_rate_abs_diff_max": float(np.max(rate_diff)),
        "token_forwards_exact": int(exact_tf),
        "token_forwards_budgeted": int(replay_tf),
        "token_forwards_budgeted_real_run": None if real_tf is None else int(real_tf),
        "token_forward_ratio": float(exact_tf / max(replay_tf, 1)),
        "seconds_exact": float(exact_s),
        "seconds_budgeted": real_s,
        "wall_ratio": None if not real_s else float(exact_s / real_s),
        "replay_vs_real_max_abs_dAS": max_dev,
    }


# ---------------------------------------------------------------------- items
def smol_setup(args):
    from probattr_monitor.engine.text import make_response
    from probattr_monitor.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("smollm2")
    model.eval()
    items, all_prompts = [], []
    for set_name, cap in zip(PROBE_SETS, (args.smol_paper_probes, args.smol_reasonable_probes)):
        probes = list(load_probe_set(set_name))
        rendered = [render(p, tok).ids for p in probes]
        all_prompts += rendered
        for probe, ids in list(zip(probes, rendered))[:cap]:
            ids = ids[: args.smol_max_prompt] if args.smol_max_prompt else ids
            resp = make_response(model, tok, ids, max_new_tokens=args.smol_new_tokens)
            items.append({"id": f"{set_name}/{probe.id}", "prompt": list(ids), "response": list(resp),
                          "positions": choose_positions(len(ids), args.smol_positions, args.positions_from,
                                                        f"{set_name}/{probe.id}", args.smol_window)})
    # universe: highest average prior over every position of every probe
    mean_prior = None
    with scoring_mode(model):
        for ids in all_prompts:
            lp = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1).mean(0)
            mean_prior = lp if mean_prior is None else mean_prior + lp
    universe = np.sort(torch.argsort(mean_prior, descending=True)[: args.smol_universe].numpy()).astype(np.int64)
    return model, items, universe


def small_setup(args):
    model, encode, meta = train_small_model(args.small_vocab, args.small_train_steps, args.small_width,
                                             layers=args.small_layers, flat=args.small_corpus == "flat",
                                             cache_dir=args.model_cache)
    items = []
    for set_name, cap in zip(PROBE_SETS, (args.small_paper_probes, args.small_reasonable_probes)):
        for probe in list(load_probe_set(set_name))[:cap]:
            ids = encode(probe.prompt)[: args.small_max_prompt]
            resp = greedy_response(model, ids, args.small_new_tokens, None)
            items.append({"id": f"{set_name}/{probe.id}", "prompt": ids, "response": resp,
                          "positions": choose_positions(len(ids), args.small_positions, args.positions_from,
                                                        f"{set_name}/{probe.id}")})
    return model, items, np.arange(meta["vocab_size"], dtype=np.int64), meta


# ---------------------------------------------------------------------- main
def _item_key(item) -> tuple:
    return item["id"], tuple(item["prompt"]), tuple(item["response"]), tuple(item["positions"])


def run_model(name, model, items, universe, budgets, args, restricted):
    print(f"[{name}] exact scoring of {sum(len(i['positions']) for i in items)} positions "
          f"over {len(universe)} candidates", flush=True)
    store = Path(f"{args.records}.{name}.pkl") if args.records else None
    known = {}
    if store is not None and store.is_file():
        known = {_item_key(r): r for r in pickle.loads(store.read_bytes())}
    records, reused = [], 0
    for item in items:
        rec = known.get(_item_key(item))
        if rec is not None and all(np.array_equal(row["ids"], with_original(universe, rec["prompt"][row["k"]]))
                                   for row in rec["rows"]):
            reused += 1
        else:
            rec = collect_exact(model, [item], universe)[0]
            if store is not None:  # after every probe: an interrupted run loses one probe at most
                known[_item_key(rec)] = rec
                atomic_write_bytes(store, pickle.dumps(list(known.values())))
        records.append(rec)
    source = f"{reused} of {len(items)} probes' exact scores reused from {store}" if reused else "computed in this run"
    if reused:
        print(f"  {source} (wall time as measured when they were computed)", flush=True)
    results = []
    for j, spec in enumerate(budgets):
        budget = parse_budget(spec)
        r = evaluate(records, budget, args.seeds, model, tuple(int(v) for v in universe) if restricted else None,
                     real=args.real_runs == "all" or (args.real_runs == "first" and j == 0))
        r["spec"] = spec
        results.append(r)
        print(f"  {spec}: p95|dAS| {r['abs_dAS_p95']:.4f}, flags {r['noise_flag_agreement']:.3f}, "
              f"2se {r['within_2se_AS']:.3f}, x{r['token_forward_ratio']:.1f} token-forwards", flush=True)
    subset = [{"id": it["id"], "prompt_len": len(it["prompt"]), "response_len": len(it["response"]),
               "positions": it["positions"]} for it in items]
    return {"model": name, "universe_size": int(len(universe)), "exact_scores": source, "subset": subset,
            "results": results}


def markdown(report):
    lines = []
    for m in report["models"]:
        lines.append(f"\n### {m['model']} (universe {m['universe_size']}, "
                     f"{sum(len(s['positions']) for s in m['subset'])} positions of {len(m['subset'])} probes)\n")
        lines.append("| budget | p50 \\|ΔAS\\| | p95 \\|ΔAS\\| | p50 \\|ΔH'\\| | p95 \\|ΔH'\\| | AS within 2SE | "
                     "H' within 2SE | H within 2SE | KL within 2SE | noise-flag agreement | "
                     "\\|Δ noise rate\\| mean / max | token-forwards exact/budgeted | wall exact/budgeted |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in m["results"]:
            cells = [r["spec"], f"{r['abs_dAS_median']:.4f}", f"{r['abs_dAS_p95']:.4f}",
                     f"{r['abs_dH_full_median']:.4f}", f"{r['abs_dH_full_p95']:.4f}",
                     f"{r['within_2se_AS']:.3f}", f"{r['within_2se_H_full']:.3f}",
                     f"{r['within_2se_H_prompt']:.3f}", f"{r['within_2se_KL']:.3f}",
                     f"{r['noise_flag_agreement']:.3f}",
                     f"{r['noise_rate_abs_diff_mean']:.4f} / {r['noise_rate_abs_diff_max']:.4f}",
                     f"{r['token_forward_ratio']:.1f}x",
                     "n/a" if r["wall_ratio"] is None else f"{r['wall_ratio']:.1f}x"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_budgeted.json")
    p.add_argument("--small-budgets", nargs="+", default=list(DEFAULT_BUDGETS["small"]),
                   help="budget specs like mc=16,ts=80,screen=128 (screen=all|none|N, nucleus=F)")
    p.add_argument("--smol-budgets", nargs="+", default=list(DEFAULT_BUDGETS["smollm2"]))
    p.add_argument("--seeds", type=int, default=20, help="replay seeds per budget")
    p.add_argument("--real-runs", choices=("all", "first", "none"), default="all",
                   help="which budgets also run through attribute() for wall time (token-forwards come "
                        "from the replay, which the real run checks)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--records", default=None,
                   help="keep the exact per-candidate scores in PREFIX.<model>.pkl: reuse those of the same "
                        "probes, positions and universe found there, compute the rest (saved after every probe)")
    p.add_argument("--positions-from", choices=("uniform", "spread"), default="uniform",
                   help="scored positions: drawn uniformly from the prompt (seeded per probe; as often as in "
                        "whole-prompt scoring) or evenly spread with both ends (over-weights the first token)")
    p.add_argument("--skip-smol", action="store_true")
    p.add_argument("--skip-small", action="store_true")
    p.add_argument("--smol-universe", type=int, default=4096)
    p.add_argument("--smol-paper-probes", type=int, default=3)
    p.add_argument("--smol-reasonable-probes", type=int, default=5)
    p.add_argument("--smol-positions", type=int, default=4)
    p.add_argument("--smol-new-tokens", type=int, default=10)
    p.add_argument("--smol-window", type=int, default=0,
                   help="score positions among the last N prompt tokens only (0: the whole prompt)")
    p.add_argument("--smol-max-prompt", type=int, default=0, help="truncate prompts (0: no)")
    p.add_argument("--small-vocab", type=int, default=4096)
    p.add_argument("--small-width", type=int, default=64)
    p.add_argument("--small-layers", type=int, default=2)
    p.add_argument("--small-corpus", choices=("flat", "raw"), default="flat",
                   help="docstrings with whitespace runs made single spaces (prose, like the probes), or raw")
    p.add_argument("--small-train-steps", type=int, default=600)
    p.add_argument("--model-cache", default=None, help="directory to keep the trained small model in")
    p.add_argument("--small-paper-probes", type=int, default=7)
    p.add_argument("--small-reasonable-probes", type=int, default=13)
    p.add_argument("--small-positions", type=int, default=6)
    p.add_argument("--small-new-tokens", type=int, default=8)
    p.add_argument("--small-max-prompt", type=int, default=64)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report = {"machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                          "platform": platform.platform(), "threads": torch.get_num_threads()},
              "args": vars(args), "models": []}
    if not args.skip_small:
        model, items, universe, meta = small_setup(args)
        print(f"[small] trained: {meta}", flush=True)
        entry = run_model("small", model, items, universe, args.small_budgets, args, restricted=False)
        entry["training"] = meta
        report["models"].append(entry)
    if not args.skip_smol:
        model, items, universe = smol_setup(args)
        report["models"].append(run_model("smollm2", model, items, universe, args.smol_budgets, args, restricted=True))
    report["seconds"] = time.perf_counter() - started
    table = markdown(report)
    report["markdown"] = table
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(table)
    print(f"\nwrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
