"""``probattr score`` and ``probattr watch`` under ``torchrun`` with 2 CPU processes (gloo) give the single-process results.

The oracle is the same command run in one process: the token table and every
set metric must be identical (each probe is scored by one rank with the same
seeds; the gathered scores are put back in probe-set order before the report
is built). Three probes over two ranks: the shards are uneven.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.lit import PROBES, word_tokenizer
from helpers.models import checkpoint_gpt2
from helpers.probes import write_probes
from probattr_monitor.sinks import read_history

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCORING = ["--candidates", "all", "--max-new-tokens", "3", "--n-boot", "50", "--threads", "1", "--no-plots"]


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true",
                TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _cli(*argv: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
              if nproc > 1 else [sys.executable])
    proc = subprocess.run([*launch, "-m", "probattr_monitor.cli", *argv], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    tok = word_tokenizer()
    model = root / "run" / "checkpoint-5"
    checkpoint_gpt2(len(tok), seed=4).save_pretrained(model)
    tok.save_pretrained(model)
    (model / "trainer_state.json").write_text("{}")
    write_probes(root / "probes.jsonl", PROBES)
    return root


def test_score_under_torchrun_matches_one_process(model_dir):
    args = ["score", "--model", str(model_dir / "run" / "checkpoint-5"), "--probes", str(model_dir / "probes.jsonl"),
            "--formats", "csv", *SCORING]
    _cli(*args, "--out", str(model_dir / "one"))
    _cli(*args, "--out", str(model_dir / "two"), nproc=2)
    assert (model_dir / "one" / "tokens.csv").read_text() == (model_dir / "two" / "tokens.csv").read_text()
    one = json.loads((model_dir / "one" / "metrics.json").read_text())
    two = json.loads((model_dir / "two" / "metrics.json").read_text())
    assert one["metrics"] == two["metrics"]
    assert two["meta"]["world_size"] == 2 and two["meta"]["sharded"] is True
    assert two["meta"]["responses"] == one["meta"]["responses"]


@pytest.mark.slow  # a subprocess run; kept out of the default suite's 10-minute budget
def test_watch_under_torchrun_matches_one_process(model_dir, tmp_path):
    for name in ("one", "two"):
        shutil.copytree(model_dir / "run", tmp_path / name)
    common = ["--probes", str(model_dir / "probes.jsonl"), "--once", "--settle-s", "0", *SCORING]
    _cli("watch", str(tmp_path / "one"), *common)
    proc = _cli("watch", str(tmp_path / "two"), *common, nproc=2)
    assert proc.stdout.count("scored 1 checkpoint(s)") == 1  # rank 0 alone reports and writes
    one = read_history(tmp_path / "one" / "probattr-watch")
    two = read_history(tmp_path / "two" / "probattr-watch")
    drop = {"created_at"}
    assert [{k: v for k, v in h.items() if k not in drop} for h in one] == \
        [{k: v for k, v in h.items() if k not in drop} for h in two]
    assert (tmp_path / "one" / "probattr-watch" / "step-00000005" / "tokens.csv").read_text() == \
        (tmp_path / "two" / "probattr-watch" / "step-00000005" / "tokens.csv").read_text()
    meta = json.loads((tmp_path / "two" / "probattr-watch" / "step-00000005" / "metrics.json").read_text())["meta"]
    assert meta["world_size"] == 2 and meta["sharded"] is True
