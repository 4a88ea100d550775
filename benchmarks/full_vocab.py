"""The budgeted estimator checked over SmolLM2's whole vocabulary, from stored fixtures (issue 13).

Elsewhere the estimator is validated inside a 4,096-id universe
(``benchmarks/budgeted.py``), because exact scoring over all 49,152 ids costs
``49,152 * T_k`` token-forwards per position. Here a few positions are scored
exactly over the whole vocabulary once, and everything the estimator reads is
stored, so that any :class:`~probattr_monitor.engine.Budget` replays on them
through the product's own :func:`~probattr_monitor.engine.budgeted.estimate_position`
in seconds, with no model:

* ``prior``: ``log p(v | x_<k)`` for every id (the full pass);
* ``a``, ``b``: the exact ``a_k(v)`` and ``b_k(v)`` of docs/design.md section 2
  for every id;
* ``head``: ``log p(s_t | x_<k, v, s_<t)`` of the first ``D`` suffix tokens
  ``s = x_>k + y`` after every id, ``D = max(2, ceil(T_k / 4))``: what the screen
  (depth 1) and the default refine stage (depth ``D``) read.

Arrays are float32 (about 1 MB per position, compressed); the exact reference
is recomputed from the stored ``a`` and ``b``, so replay and reference see the
same numbers. Positions are late (the last or second-to-last prompt token)
and responses short (``--max-new-tokens``, default 2: the stored set was
scored with 2, its first position with 5), so that each exact scoring stays
within a few minutes on 2 CPU cores.

Run::

    python -m benchmarks.full_vocab --out tests/fixtures/full_vocab --positions 12   # score what is missing
    python -m benchmarks.full_vocab --out tests/fixtures/full_vocab --check --seeds 20  # replay only (seconds)
    python -m benchmarks.full_vocab --check --variants   # also the cheaper budgets side by side

``tests/test_full_vocab.py`` replays ``Budget()`` on the stored fixtures and
asserts the issue's targets.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from probattr_monitor.engine import Budget
from probattr_monitor.engine.budget import position_token_forwards
from probattr_monitor.engine.budgeted import estimate_position
from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.passes import full_pass, response_log_prob
from probattr_monitor.engine.runner import ModelRunner
from probattr_monitor.engine.stats import PositionStats, position_stats
from probattr_monitor.engine.tail import STDERR_FIELDS
from probattr_monitor.io_utils import atomic_write_bytes
from probattr_monitor.report.noise import NoiseConfig, noise_flags

logger = logging.getLogger(__name__)

#: Where the repository keeps the fixtures the test replays.
FIXTURE_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "full_vocab"

#: Memory the exact sweep may use for one candidate batch.
MEMORY_BYTES = 1024 * 2**20


@dataclasses.dataclass(frozen=True)
class Fixture:
    """One prompt position scored exactly over the whole vocabulary (see the module docstring)."""

    probe: str
    position: int
    prompt: tuple
    response: tuple
    log_p_response: float
    prior: np.ndarray
    a: np.ndarray
    b: np.ndarray
    head: np.ndarray
    exact_token_forwards: int
    exact_seconds: float
    model: str = "smollm2"

    @property
    def suffix_len(self) -> int:
        """``T_k = L - k - 1``, the tokens each candidate row feeds."""
        return len(self.prompt) + len(self.response) - self.position - 1

    @property
    def vocab_size(self) -> int:
        return len(self.a)

    def exact(self) -> PositionStats:
        """The exact reference, from the stored scores."""
        ids = np.arange(self.vocab_size, dtype=np.int64)
        return position_stats(ids, self.a.astype(np.float64), self.b.astype(np.float64), self.log_p_response)


def head_depth(suffix_len: int) -> int:
    """Suffix tokens stored per id: the default refine stage's depth (at least the screen's 2)."""
    return min(suffix_len, max(2, math.ceil(Budget().refine_depth * suffix_len)))


# ---------------------------------------------------------------------- scoring and storage
def score_position(model, prompt: Sequence[int], response: Sequence[int], k: int, probe: str,
                   model_name: str = "smollm2") -> Fixture:
    """Score position ``k`` exactly over every id of ``model``'s vocabulary and keep what a replay needs."""
    prompt, response = [int(t) for t in prompt], [int(t) for t in response]
    if not 1 <= k < len(prompt):
        raise ValueError(f"position {k} is not a scored prompt position of a {len(prompt)}-token prompt")
    with scoring_mode(model):
        runner = ModelRunner(model, MEMORY_BYTES)
        started = time.perf_counter()
        full = full_pass(runner, prompt, response)
        lpr = response_log_prob(full, len(prompt), response)
        vocab = full.vocab_size
        ids = np.arange(vocab, dtype=np.int64)
        rest = prompt[k + 1 :] + response
        n_prompt_rest = len(prompt) - k - 1
        depth = head_depth(len(rest))
        prior = full.log_probs[k - 1].numpy().astype(np.float64)
        a = np.empty(vocab)
        b = np.empty(vocab)
        head = np.empty((vocab, depth), dtype=np.float32)
        bs = runner.default_batch_size(k, len(rest) + 1, vocab)
        for s in range(0, vocab, bs):
            lp = runner.suffix_log_probs(full, prompt[:k], torch.from_numpy(ids[s : s + bs]), rest).numpy()
            a[s : s + bs] = prior[s : s + bs] + lp[:, :n_prompt_rest].sum(axis=1)
            b[s : s + bs] = a[s : s + bs] + lp[:, n_prompt_rest:].sum(axis=1)
            head[s : s + bs] = lp[:, :depth]
        seconds = time.perf_counter() - started
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"non-finite exact scores at position {k} of {probe}")
    return Fixture(probe, int(k), tuple(prompt), tuple(response), float(lpr), prior.astype(np.float32),
                   a.astype(np.float32), b.astype(np.float32), head, int(runner.token_forwards), float(seconds),
                   model_name)


def save_fixture(fx: Fixture, path: Path) -> None:
    """Write ``fx`` as one compressed ``.npz`` (atomically)."""
    meta = {"probe": fx.probe, "position": fx.position, "prompt": list(fx.prompt), "response": list(fx.response),
            "log_p_response": fx.log_p_response, "exact_token_forwards": fx.exact_token_forwards,
            "exact_seconds": fx.exact_seconds, "model": fx.model}
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(json.dumps(meta)), prior=fx.prior, a=fx.a, b=fx.b, head=fx.head)
    atomic_write_bytes(path, buf.getvalue())


def load_fixture(path: Path) -> Fixture:
    """Read a fixture written by :func:`save_fixture`."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {name: z[name] for name in ("prior", "a", "b", "head")}
    return Fixture(meta["probe"], int(meta["position"]), tuple(meta["prompt"]), tuple(meta["response"]),
                   float(meta["log_p_response"]), exact_token_forwards=int(meta["exact_token_forwards"]),
                   exact_seconds=float(meta["exact_seconds"]), model=meta.get("model", "smollm2"), **arrays)


def load_fixtures(directory: Path = FIXTURE_DIR) -> list[Fixture]:
    """Every fixture in ``directory``, in file-name order."""
    return [load_fixture(p) for p in sorted(Path(directory).glob("position-*.npz"))]


# ---------------------------------------------------------------------- replay
def replay(fx: Fixture, budget: Budget) -> tuple[PositionStats, np.ndarray, dict, int]:
    """``budget``'s estimate at ``fx``'s position from the stored scores: (stats, stderr, extra, token-forwards).

    The token-forwards are counted as the engine counts them for this position
    (screened ids + refined ids times the refine depth + scored ids times
    ``T_k``, less the row tokens resumed from an earlier stage's states,
    ``extra["reused_token_forwards"]``; the full pass, shared by all positions
    of a probe, is not included).

    Raises
    ------
    ValueError
        If ``budget`` reads deeper into the suffix than the fixture stores.
    """
    prior = fx.prior.astype(np.float64)
    a, b, head = fx.a.astype(np.float64), fx.b.astype(np.float64), fx.head.astype(np.float64)
    ids = np.arange(fx.vocab_size, dtype=np.int64)
    scored = [0]

    def score_fn(cand):
        scored[0] += len(cand)
        return a[cand], b[cand]

    def screen_fn(cand, depth):
        if depth > head.shape[1]:
            raise ValueError(f"the fixture of {fx.probe}:{fx.position} stores {head.shape[1]} suffix tokens "
                             f"per id; this budget reads {depth}")
        return head[cand, :depth].sum(axis=1)

    st, se, extra = estimate_position(fx.position, ids, fx.prompt[fx.position], prior, budget, score_fn,
                                      screen_fn, fx.log_p_response, suffix_len=fx.suffix_len)
    cost = position_token_forwards(extra, scored[0], fx.suffix_len)
    return st, se, extra, int(cost)


def check(fixtures: Sequence[Fixture], budget: Budget, seeds: int = 20,
          noise: Optional[NoiseConfig] = None) -> dict:
    """Errors of ``budget`` against exact over ``fixtures`` and ``seeds`` seeds.

    Returns p50/p95/max |ΔAS| (nats), the share of AS errors within two
    reported standard errors, p95 |ΔH'|, the share of H' errors within two
    standard errors, noise-flag agreement (``NoiseConfig()`` by default), and
    the mean token-forwards per position of the estimator and of exact scoring.
    """
    if not fixtures:
        raise ValueError("no full-vocabulary fixtures to check")
    cfg = noise or NoiseConfig()
    exact = [fx.exact() for fx in fixtures]
    ex_as = np.array([s.attribution for s in exact])
    ex_h = np.array([s.entropy_full for s in exact])
    ex_flag = noise_flags(ex_as, ex_h, cfg)
    d_as, se_as, d_h, se_h, agree, cost = [], [], [], [], [], []
    i_as, i_h = STDERR_FIELDS.index("attribution"), STDERR_FIELDS.index("entropy_full")
    for seed in range(seeds):
        b = dataclasses.replace(budget, seed=seed)
        out = [replay(fx, b) for fx in fixtures]
        att = np.array([o[0].attribution for o in out])
        hf = np.array([o[0].entropy_full for o in out])
        d_as.append(att - ex_as)
        d_h.append(hf - ex_h)
        se_as.append([o[1][i_as] for o in out])
        se_h.append([o[1][i_h] for o in out])
        agree.append(noise_flags(att, hf, cfg) == ex_flag)
        cost.append([o[3] for o in out])
    d_as, se_as, d_h, se_h = (np.abs(np.concatenate(x)) for x in (d_as, se_as, d_h, se_h))
    return {
        "positions": len(fixtures), "seeds": seeds,
        "abs_dAS_p50": float(np.median(d_as)), "abs_dAS_p95": float(np.quantile(d_as, 0.95)),
        "abs_dAS_max": float(d_as.max()),
        "within_2se_AS": float(np.mean(d_as <= 2 * se_as + 1e-12)),
        "abs_dH_full_p95": float(np.quantile(d_h, 0.95)),
        "within_2se_H_full": float(np.mean(d_h <= 2 * se_h + 1e-12)),
        "noise_flag_agreement": float(np.mean(np.concatenate(agree))),
        "exact_noise_flags": int(ex_flag.sum()),
        "token_forwards_per_position": float(np.mean(cost)),
        "exact_token_forwards_per_position": float(np.mean([fx.vocab_size * fx.suffix_len for fx in fixtures])),
    }


# ---------------------------------------------------------------------- the run
def choose(probe_count: int, n_positions: int) -> list[tuple[int, int]]:
    """``(probe index, offset from the last prompt token)`` pairs: probes spread over the set, offsets 0 and 1."""
    probes = np.unique(np.round(np.linspace(0, probe_count - 1, n_positions)).astype(int))
    out = [(int(p), i % 2) for i, p in enumerate(probes)]
    i = 0
    while len(out) < n_positions:  # fewer probes than positions: go further back in the same probes
        out.append((int(probes[i % len(probes)]), 2 + i // len(probes)))
        i += 1
    return out


def run_full_vocab(directory, n_positions: int, probe_set: str = "reasonable-en", max_new_tokens: int = 2) -> list:
    """Score the fixtures missing in ``directory`` (``position-XX.npz``) and return them all."""
    from probattr_monitor.engine.text import make_response
    from probattr_monitor.models import load_model_and_tokenizer
    from probattr_monitor.probes import load_probe_set, render

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    probes = list(load_probe_set(probe_set))
    model = tok = None
    for i, (p, offset) in enumerate(choose(len(probes), n_positions)):
        path = out / f"position-{i:02d}.npz"
        if path.exists():
            continue
        if model is None:
            model, tok = load_model_and_tokenizer("smollm2")
        prompt = list(render(probes[p], tok).ids)
        response = make_response(model, tok, prompt, "greedy", max_new_tokens)
        k = len(prompt) - 1 - offset
        fx = score_position(model, prompt, response, k, probes[p].id)
        save_fixture(fx, path)
        logger.info("stored %s (%s, k=%d, T=%d): %d token-forwards in %.0f s", path, fx.probe, k, fx.suffix_len,
                    fx.exact_token_forwards, fx.exact_seconds)
    return load_fixtures(out)


#: Budgets replayed side by side by ``--variants``: what the screen, the refine stage and the sample sizes buy.
VARIANTS = {
    "Budget() (default)": Budget(),
    "no refine": Budget(refine=0),
    "screen 256, no refine": Budget(screen=256, refine=0),
    "no screen, no refine": Budget(screen=0, refine=0),
    "mc 16, ts 16": Budget(max_candidates=16, tail_samples=16),
    "mc 6, ts 6, screen 256, no refine (sequential's first stage)": Budget(6, 6, screen=256, refine=0),
}


def variant_table(fixtures: Sequence[Fixture], seeds: int) -> list[dict]:
    """:func:`check` of every budget of :data:`VARIANTS`, in order."""
    return [{"budget": name, **check(fixtures, budget, seeds)} for name, budget in VARIANTS.items()]


def print_variants(rows: Sequence[dict]) -> None:
    print("| budget | token-forwards per position | exact / budget | p50 |ΔAS| | p95 |ΔAS| | AS within 2 SE "
          "| p95 |ΔH'| | H' within 2 SE | noise-flag agreement |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget']} | {r['token_forwards_per_position']:.0f} | "
              f"{r['exact_token_forwards_per_position'] / r['token_forwards_per_position']:.0f}x | "
              f"{r['abs_dAS_p50']:.4f} | {r['abs_dAS_p95']:.4f} | {r['within_2se_AS']:.3f} | "
              f"{r['abs_dH_full_p95']:.3f} | {r['within_2se_H_full']:.3f} | {r['noise_flag_agreement']:.3f} |")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(FIXTURE_DIR), help="fixture directory (default: %(default)s)")
    parser.add_argument("--positions", type=int, default=12, help="positions to have scored")
    parser.add_argument("--set", default="reasonable-en", help="probe set (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=2, help="greedy response length (default: 2)")
    parser.add_argument("--check", action="store_true", help="replay the stored fixtures only; score nothing")
    parser.add_argument("--variants", action="store_true",
                        help="also replay the cheaper budgets of VARIANTS side by side (Markdown table)")
    parser.add_argument("--seeds", type=int, default=20, help="seeds of the replay (default: 20)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    fixtures = load_fixtures(Path(args.out)) if args.check else run_full_vocab(
        args.out, args.positions, args.set, args.max_new_tokens)
    fig = check(fixtures, Budget(), args.seeds)
    print(f"{fig['positions']} positions over the full vocabulary, Budget(), {fig['seeds']} seeds: "
          f"p95 |dAS| {fig['abs_dAS_p95']:.4f} nats (target <= 0.05), {fig['within_2se_AS']:.3f} within 2 SE "
          f"(target >= 0.90), noise-flag agreement {fig['noise_flag_agreement']:.3f}, "
          f"{fig['exact_token_forwards_per_position'] / fig['token_forwards_per_position']:.0f}x fewer "
          f"token-forwards than exact")
    out = {"default": fig}
    if args.variants:
        out["variants"] = variant_table(fixtures, args.seeds)
        print_variants(out["variants"])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
