"""Engine speed, side by side in one process, against the baselines of issue 2.

For each of the paper's seven prompts (20-token greedy responses from
SmolLM2-135M-Instruct) and a fixed candidate subset, at a spread of scored
positions:

(a) the engine (prefix KV cache reused, chunked LM head);
(b) the paper's scheme: for each candidate batch, ``generate`` with the response
    forced token by token (a logits processor) plus a separate forward over the
    substituted prompt, no prefix reuse;
(c) one full teacher-forced forward per candidate over ``x_<k, v, x_>k, y``
    (the engine's no-cache path);
(d) the model's raw forward throughput (``model(input_ids).logits``) on batches
    of exactly the engine's suffix shapes.

Reported: (b)/(a) and (c)/(a) wall-time ratios (how many times faster the
engine is) and the engine's throughput as a fraction of (d). Methods are
interleaved per prompt so machine load affects them alike; with ``--repeats r``
each is timed ``r`` times and the fastest kept. (a), (b) and (c)
must agree on AS; the largest difference is printed.

Run:  python benchmarks/engine.py [--candidates 16] [--positions 4] [--repeats 2] [--out bench_engine.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from probattr_monitor import attribute
from probattr_monitor.engine.stats import position_stats
from probattr_monitor.engine.text import encode_prompt, make_response
from probattr_monitor.models import load_model_and_tokenizer
from probattr_monitor.probes import load_probe_set


class _ForceTokens(LogitsProcessor):
    """Forces ``tokens[t]`` at generation step ``t`` (the paper's forced response)."""

    def __init__(self, tokens: list[int], start: int):
        self.tokens, self.start = tokens, start

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens[t]] = 0.0
        return forced


def paper_scheme(model, prompt, response, k, cand, batch_size):
    """(b): per candidate batch, generate with the response forced + a prompt forward."""
    a = np.empty(len(cand))
    b = np.empty(len(cand))
    n = len(prompt)
    for s in range(0, len(cand), batch_size):
        chunk = cand[s : s + batch_size]
        x = torch.tensor([prompt] * len(chunk))
        x[:, k] = torch.tensor(chunk)
        with torch.no_grad():
            # the separate forward over the prompt: prior + rest-of-prompt terms
            lp = torch.log_softmax(model(x, use_cache=False).logits.double(), -1)
            tok_lp = lp[:, :-1].gather(2, x[:, 1:, None])[..., 0]
            a_chunk = tok_lp[:, k - 1 :].sum(1)
            out = model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=len(response), min_new_tokens=len(response),
                do_sample=False, logits_processor=LogitsProcessorList([_ForceTokens(response, n)]),
                output_logits=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=None,
            )
        resp_lp = sum(
            torch.log_softmax(step.double(), -1)[:, tok] for step, tok in zip(out.logits, response)
        )
        a[s : s + len(chunk)] = a_chunk.numpy()
        b[s : s + len(chunk)] = (a_chunk + resp_lp).numpy()
    return a, b


def raw_forward(model, shapes):
    """(d): plain forwards over random tokens of the given [batch, length] shapes."""
    gen = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    with torch.no_grad():
        for batch, length in shapes:
            model(torch.randint(0, 1000, (batch, length), generator=gen), use_cache=False)
    return time.perf_counter() - started


def _timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=16, help="candidate subset size (evenly spaced ids)")
    parser.add_argument("--positions", type=int, default=4, help="scored positions per prompt (evenly spread)")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=7, help="how many of the paper's prompts")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time every method this many times per prompt and keep the fastest")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("smollm2")
    model.eval()
    vocab = model.config.vocab_size
    cand_base = np.unique(np.linspace(0, vocab - 1, args.candidates).astype(np.int64))
    batch = len(cand_base) + 1
    rows = []
    warm = encode_prompt(tok, "Warm up the model.")
    attribute(model, warm, warm[1:3], candidates=cand_base.tolist(), batch_size=batch)
    for probe in list(load_probe_set("paper"))[: args.prompts]:
        prompt = encode_prompt(tok, probe.prompt)
        response = make_response(model, tok, prompt, "greedy", args.max_new_tokens)
        n, m = len(prompt), len(response)
        positions = sorted({int(p) for p in np.linspace(1, n - 1, min(args.positions, n - 1)).round()})

        shapes = []
        for k in positions:
            n_cand = len(np.union1d(cand_base, [prompt[k]]))
            shapes.append((n_cand, n + m - k - 1))  # what the engine feeds: v, x_>k, y without y_m

        def engine(use_cache=None):
            return attribute(model, prompt, response, candidates=cand_base.tolist(), positions=positions,
                             batch_size=batch, use_cache=use_cache)

        def paper():
            lp_resp = float(res_a.log_p_response)
            out = []
            for k in positions:
                cand = np.union1d(cand_base, [prompt[k]])
                a, b = paper_scheme(model, prompt, response, k, cand.tolist(), batch)
                out.append(position_stats(cand, a, b, lp_resp).attribution)
            return np.array(out)

        t_a = t_b = t_c = t_d = float("inf")
        for _ in range(args.repeats):  # interleaved, so load drifts affect every method alike
            res_a, dt = _timed(engine)
            t_a = min(t_a, dt)
            res_c, dt = _timed(lambda: engine(use_cache=False))
            t_c = min(t_c, dt)
            as_b, dt = _timed(paper)
            t_b = min(t_b, dt)
            _, dt = _timed(lambda: raw_forward(model, shapes))
            t_d = min(t_d, dt)
        suffix_tokens = sum(b_ * t_ for b_, t_ in shapes)
        rows.append({
            "probe": probe.id, "prompt_tokens": n, "response_tokens": m, "positions": positions,
            "candidates": int(batch), "suffix_tokens": suffix_tokens,
            "engine_s": t_a, "paper_scheme_s": t_b, "full_forward_s": t_c, "raw_forward_s": t_d,
            "paper_over_engine": t_b / t_a, "full_over_engine": t_c / t_a, "engine_fraction_of_raw": t_d / t_a,
            "max_abs_diff_as_paper": float(np.max(np.abs(np.array(as_b) - res_a.attribution))),
            "max_abs_diff_as_full": float(np.max(np.abs(res_c.attribution - res_a.attribution))),
        })
        r = rows[-1]
        print(f"{probe.id}: n={n} m={m} tokens={suffix_tokens} engine {t_a:.1f}s  (b)/(a) {r['paper_over_engine']:.2f}  "
              f"(c)/(a) {r['full_over_engine']:.2f}  (a)/(d) {r['engine_fraction_of_raw']:.2f}  "
              f"|dAS| {r['max_abs_diff_as_paper']:.1e}/{r['max_abs_diff_as_full']:.1e}", flush=True)

    tot = {key: sum(r[key] for r in rows) for key in ("engine_s", "paper_scheme_s", "full_forward_s", "raw_forward_s")}
    print()
    print(f"SmolLM2-135M-Instruct, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"{batch} candidates per position, positions per prompt: {args.positions}, fastest of {args.repeats}")
    print("| prompt | n | m | suffix tokens | engine s | (b) paper / (a) | (c) full / (a) | (a) as fraction of (d) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['probe']} | {r['prompt_tokens']} | {r['response_tokens']} | {r['suffix_tokens']} | "
              f"{r['engine_s']:.1f} | {r['paper_over_engine']:.2f}x | {r['full_over_engine']:.2f}x | "
              f"{r['engine_fraction_of_raw']:.2f} |")
    print(f"| all | | | {sum(r['suffix_tokens'] for r in rows)} | {tot['engine_s']:.1f} | "
          f"{tot['paper_scheme_s'] / tot['engine_s']:.2f}x | {tot['full_forward_s'] / tot['engine_s']:.2f}x | "
          f"{tot['raw_forward_s'] / tot['engine_s']:.2f} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"rows": rows, "totals": tot, "threads": torch.get_num_threads(),
                       "repeats": args.repeats}, fh, indent=2)


if __name__ == "__main__":
    main()
