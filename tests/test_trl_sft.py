"""The HF callback works unchanged with TRL's ``SFTTrainer`` (a ``Trainer`` subclass), gating included.

Same oracle as tests/test_hf_callback.py's ``metric_for_best_model`` test: from
step 5 on the weights are zeroed after every optimizer step, so every token
becomes a noise token (rate 1) while the eval loss drops to log|V|; gating on
the callback's key must keep checkpoint-4 and load it at the end.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from trl import SFTConfig, SFTTrainer  # noqa: E402

from helpers.hf import PROBES, ZeroWeightsFrom, make_corpus, make_tokenizer  # noqa: E402
from helpers.models import trainer_gpt2  # noqa: E402
from helpers.probes import scoring_config, write_probes  # noqa: E402
from probattr_monitor.callbacks.hf import ProbAttrTrainerCallback  # noqa: E402
from probattr_monitor.monitor import ProbAttrMonitor, Schedule  # noqa: E402


def _sft_trainer(tmp_path, callbacks, **overrides):
    tokenizer = make_tokenizer()
    args = dict(output_dir=str(tmp_path / "out"), max_steps=12, per_device_train_batch_size=8,
                per_device_eval_batch_size=16, learning_rate=3e-3, warmup_steps=0, logging_steps=4,
                eval_strategy="steps", eval_steps=4, save_strategy="steps", save_steps=4, report_to=[],
                use_cpu=True, dataloader_num_workers=0, seed=0, data_seed=0, disable_tqdm=True,
                max_length=32, dataset_text_field="text")
    args.update(overrides)
    return SFTTrainer(
        model=trainer_gpt2(tokenizer, 0),
        args=SFTConfig(**args),
        train_dataset=datasets.Dataset.from_dict({"text": make_corpus(300, seed=1)}),
        eval_dataset=datasets.Dataset.from_dict({"text": make_corpus(40, seed=2)}),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def test_sft_trainer_gates_on_the_callbacks_key(tmp_path):
    probes = write_probes(tmp_path / "probes.jsonl", PROBES)
    monitor = ProbAttrMonitor(str(probes), scoring=scoring_config(), schedule=Schedule(), metric="noise_rate")
    cb = ProbAttrTrainerCallback(monitor, wandb=False, plots=False)
    trainer = _sft_trainer(tmp_path, [cb, ZeroWeightsFrom(5)], load_best_model_at_end=True,
                           metric_for_best_model="probattr_noise_rate", greater_is_better=False)
    trainer.train()
    values = {h.step: h.value for h in cb.history}
    assert sorted(values) == [4, 8, 12]
    assert values[4] < 1.0 and values[8] == 1.0 and values[12] == 1.0
    evals = [r for r in trainer.state.log_history if "eval_loss" in r]
    assert [r["eval_probattr_noise_rate"] for r in evals] == [values[4], values[8], values[12]]
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    assert trainer.state.best_metric == values[4]
    # the weights in memory are checkpoint-4's, not the zeroed ones
    from safetensors.torch import load_file

    best = load_file(str(tmp_path / "out" / "checkpoint-4" / "model.safetensors"))
    final = trainer.model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in best.items())
    assert any(v.abs().sum() > 0 for v in best.values())


@pytest.mark.slow  # a subprocess run; kept out of the default suite's 10-minute budget
def test_sft_example_script_runs_and_keeps_the_gates_best(tmp_path):
    """examples/sft_trainer.py at tiny sizes: the best checkpoint is the scoring with the lowest gate value."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "sft_trainer.py"
    proc = subprocess.run([sys.executable, str(script), "--output-dir", str(tmp_path), "--max-steps", "6",
                           "--eval-steps", "2", "--n-train", "200", "--n-probes", "2",
                           "--max-new-tokens", "3", "--no-wandb"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^\s+(\d+)\s+([0-9.]+) \[", proc.stdout, flags=re.M)
    values = {int(s): float(v) for s, v in rows}
    assert sorted(values) == [2, 4, 6]
    best_step = min(values, key=values.get)
    assert f"checkpoint-{best_step} (" in proc.stdout
