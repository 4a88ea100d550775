"""The budgeted estimator checked over SmolLM2's whole vocabulary, with stored fixtures.

Each fixture is one prompt position of one probe (greedy response of
``max_new_tokens`` tokens) scored exactly (``candidates="all"``, 49,152 ids)
and with ``Budget()``; it is written atomically as JSON and reused on later
runs, so the check replays in seconds once the fixtures exist.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from probattr_monitor.engine import Budget, attribute
from probattr_monitor.engine.text import make_response
from probattr_monitor.io_utils import atomic_write_text
from probattr_monitor.models import load_model_and_tokenizer
from probattr_monitor.probes import load_probe_set, render

logger = logging.getLogger(__name__)


def _fixture(model, prompt, response, k, probe_id) -> dict:
    exact = attribute(model, prompt, response, candidates="all", positions=[k])
    budgeted = attribute(model, prompt, response, candidates=Budget(), positions=[k])
    stderr = getattr(budgeted, "stderr", None) or {}
    se = stderr.get("attribution")
    return {
        "probe": probe_id, "position": int(k), "prompt_ids": list(map(int, prompt)),
        "response_ids": list(map(int, response)),
        "exact_as": float(exact.attribution[0]), "budgeted_as": float(budgeted.attribution[0]),
        "budgeted_as_se": None if se is None else float(np.asarray(se)[0]),
        "exact_token_forwards": int(exact.info.get("token_forwards", 0)),
        "budgeted_token_forwards": int(budgeted.info.get("token_forwards", 0)),
    }


def run_full_vocab(directory: str, n_positions: int, probe_set: str, max_new_tokens: int = 8) -> None:
    """Score (or reload) ``n_positions`` fixtures in ``directory`` and print the accuracy figures."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model = tok = None
    probes = list(load_probe_set(probe_set))
    fixtures = []
    for i in range(n_positions):
        path = out / f"position-{i:02d}.json"
        if not path.exists():
            if model is None:
                model, tok = load_model_and_tokenizer("smollm2")
            probe = probes[i % len(probes)]
            prompt = list(render(probe, tok).ids)
            response = make_response(model, tok, prompt, "greedy", max_new_tokens, 0.9, 20, 0)
            k = len(prompt) - 1 - (i // len(probes))  # late positions: short suffixes
            atomic_write_text(path, json.dumps(_fixture(model, prompt, list(response), k, probe.id), indent=2))
            logger.info("stored %s", path)
        fixtures.append(json.loads(path.read_text()))
    err = np.array([abs(f["budgeted_as"] - f["exact_as"]) for f in fixtures])
    se = np.array([np.nan if f["budgeted_as_se"] is None else f["budgeted_as_se"] for f in fixtures])
    within = np.mean(err <= 2 * np.nan_to_num(se, nan=0.0))
    print(f"{len(fixtures)} positions over the full vocabulary: p95 |dAS| {np.quantile(err, 0.95):.4f} nats, "
          f"{within:.2f} within 2 SE (targets: <= 0.05, >= 0.90)")
