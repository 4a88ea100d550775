"""Score one of the paper's prompts with SmolLM2-135M-Instruct and print the per-token table.

Exact attribution over the full 49,152-token vocabulary takes hours on a CPU,
so this example sums over a fixed candidate subset (every 256th token id plus
each prompt token), which is exact over that subset.

Run:  python examples/quickstart.py [--stride 256] [--out quickstart_out]
"""

from __future__ import annotations

import argparse
import logging
import time

from probattr_monitor import attribute_text
from probattr_monitor.models import load_model_and_tokenizer

PROMPT = "What year did Albert Einstein visit Mars?"  # the paper's Table 1, prompt 7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=256, help="score every STRIDE-th token id as a candidate")
    parser.add_argument("--out", default=None, help="also write tokens.csv / tokens.json to this directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, tokenizer = load_model_and_tokenizer("smollm2")
    candidates = list(range(0, model.config.vocab_size, args.stride))
    started = time.perf_counter()
    res = attribute_text(model, tokenizer, PROMPT, candidates=candidates, max_new_tokens=20)
    seconds = time.perf_counter() - started

    print(f"prompt:   {PROMPT!r}")
    print(f"response: {res.response_text!r}")
    print(f"log P(response | prompt) = {res.log_p_response:.3f} nats;"
          f" {len(candidates)} candidates; {seconds:.1f} s ({res.info['path']} path)")
    print(f"{'pos':>3}  {'token':<12} {'AS':>7} {'H':>6} {'H_full':>6} {'KL':>6}  top replacements given the response")
    for i in range(len(res)):
        top = ", ".join(f"{tokenizer.decode([int(t)])!r} {p:.2f}"
                        for t, p in zip(res.top_posterior_ids[i][:3], res.top_posterior_probs[i][:3]))
        print(f"{res.positions[i]:>3}  {res.token_texts[i]!r:<12} {res.attribution[i]:>7.3f} "
              f"{res.entropy_prompt[i]:>6.3f} {res.entropy_full[i]:>6.3f} {res.kl[i]:>6.3f}  {top}")
    if args.out:
        decode = lambda t: tokenizer.decode([t])  # noqa: E731
        res.to_csv(f"{args.out}/tokens.csv", decode)
        res.to_json(f"{args.out}/tokens.json", decode)
        print(f"wrote {args.out}/tokens.csv and tokens.json")


if __name__ == "__main__":
    main()
