"""One run-config schema for both frameworks, read back from real offline W&B run directories.

A tiny Lightning fit (``WandbLogger``, offline) and a tiny Hugging Face Trainer
run (the callback logging to an offline ``wandb.init`` run) score the same probes with the same
scoring settings and schedule; the ``probattr`` part of each run's config, as
W&B wrote it into the run's transaction log, must be the same dict.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")
wandb = pytest.importorskip("wandb")
pytest.importorskip("transformers")

from lightning.pytorch.loggers import WandbLogger  # noqa: E402

from helpers.hf import make_trainer  # noqa: E402
from helpers.lit import PROBES, TinyLitLM, trainer_kwargs, word_tokenizer  # noqa: E402
from helpers.probes import scoring_config, write_probes  # noqa: E402
from helpers.wandb_offline import wandb_config, wandb_run_dir  # noqa: E402
from probattr_monitor.callbacks import ProbAttrCallback, ProbAttrTrainerCallback  # noqa: E402
from probattr_monitor.monitor.run_config import RunConfig  # noqa: E402


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    if wandb.run is not None:
        wandb.finish()


def as_json(config: dict) -> dict:
    return json.loads(json.dumps(config))


def lightning_run_config(probes: str, root: Path) -> tuple[dict, dict]:
    pl.seed_everything(0, verbose=False)
    wl = WandbLogger(save_dir=str(root), offline=True, project="probattr-run-config")
    cb = ProbAttrCallback(probes=probes, scoring=scoring_config(), every_n_steps=4, on_validation_end=True,
                          wandb="auto", log_plots=False)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(logger=wl, max_epochs=1, limit_train_batches=4,
                                                          default_root_dir=root))
    trainer.fit(TinyLitLM(word_tokenizer()))
    assert [h.step for h in cb.history] == [4]
    wl.experiment.finish()
    return wandb_config(wandb_run_dir(root))["probattr"], as_json(cb.config())


def hf_run_config(probes: str, root: Path) -> tuple[dict, dict]:
    # The run is started here with an explicit directory: HF's WandbCallback would start it in the
    # directory of W&B's process-wide settings, fixed by whichever run came first in this session.
    wandb.init(project="probattr-run-config", dir=str(root), mode="offline")
    cb = ProbAttrTrainerCallback(probes=probes, scoring=scoring_config(), every_n_steps=4, on_evaluate=True,
                                 wandb="auto", plots=False)
    trainer = make_trainer(root, [cb], report_to=[], max_steps=4)
    try:
        trainer.train()
    finally:
        wandb.finish()
    assert [h.step for h in cb.history] == [4]
    return wandb_config(wandb_run_dir(root))["probattr"], as_json(RunConfig.from_monitor(cb.monitor).to_dict())


def test_run_config_is_the_same_for_lightning_and_hf(tmp_path):
    probes = str(write_probes(tmp_path / "probes.jsonl", PROBES))
    lit, lit_expected = lightning_run_config(probes, tmp_path / "lightning")
    hf, hf_expected = hf_run_config(probes, tmp_path / "hf")

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(lit) == set(hf) == fields  # same schema
    assert lit == hf  # same values for the same probes, scoring and schedule
    assert lit == lit_expected and hf == hf_expected  # what W&B stored is what the callbacks recorded
    assert lit["probe_set"]["ids"] == ["p1", "p2", "p3"] and lit["probe_set"]["source"] == probes
    assert lit["fingerprint"] == lit["probe_set"]["fingerprint"]
    assert lit["scoring"]["max_new_tokens"] == 3 and lit["bootstrap"] == {"n_boot": 50, "ci": 0.95}
    assert lit["schedule"] == {"every_n_steps": 4, "every_n_epochs": None, "on_validation_end": True,
                               "on_save_checkpoint": False}
    assert lit["monitor_key"] == "probattr/mean_surprisal_prefix" and lit["mode"] == "min"  # the default gate
