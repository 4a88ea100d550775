"""Every ProbAttrCallback setting is reachable from a LightningCLI YAML file (``class_path``/``init_args``).

The callback is built by a real ``LightningCLI`` (jsonargparse resolving the
type hints): nested dataclasses (``ScoringConfig`` with its ``NoiseConfig`` and
``Budget``), the probe file, the schedule, the gate and the sink settings come
from the YAML, and a short fit then scores with them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest.importorskip("jsonargparse")
pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from helpers.lit import PROBES, TinyLitLM, word_tokenizer  # noqa: E402
from helpers.probes import write_probes  # noqa: E402
from probattr_monitor.callbacks import ProbAttrCallback  # noqa: E402
from probattr_monitor.engine.budget import Budget  # noqa: E402


class CLIModule(TinyLitLM):
    """TinyLitLM with only YAML-friendly arguments (the word tokenizer is built inside)."""

    def __init__(self, lr: float = 2e-2, batch_size: int = 40):
        super().__init__(word_tokenizer(), lr=lr, batch_size=batch_size)


def _config(tmp_path, candidates: str) -> str:
    probes = write_probes(tmp_path / "probes.jsonl", PROBES)
    text = f"""
    seed_everything: 0
    trainer:
      accelerator: cpu
      devices: 1
      max_epochs: 2
      logger: false
      enable_checkpointing: false
      enable_progress_bar: false
      enable_model_summary: false
      default_root_dir: {tmp_path / "run"}
      callbacks:
        - class_path: probattr_monitor.callbacks.ProbAttrCallback
          init_args:
            probes: {probes}
            scoring:
              candidates: {candidates}
              max_new_tokens: 3
              n_boot: 50
              ci: 0.9
              noise:
                high_above: 2.5
            every_n_epochs: 1
            on_validation_end: false
            metric: noise_rate
            mode: max
            prefix: probes_yaml
            time_budget_s: 600
            wandb: false
            log_dir: {tmp_path / "files"}
            log_plots: false
            max_rows_per_table: 123
            file_formats: [csv]
    """
    (tmp_path / "cfg").mkdir(exist_ok=True)
    path = tmp_path / "cfg" / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def _callback(cli) -> ProbAttrCallback:
    found = [c for c in cli.trainer.callbacks if isinstance(c, ProbAttrCallback)]
    assert len(found) == 1
    return found[0]


def test_callback_built_from_yaml_through_lightning_cli(tmp_path):
    cli = LightningCLI(CLIModule, run=False, parser_kwargs={"exit_on_error": False}, args=["--config", _config(tmp_path, '"all"')])
    cb = _callback(cli)
    mon = cb.monitor
    assert [p.id for p in mon.probe_set] == [p["id"] for p in PROBES]
    assert mon.scoring.candidates == "all" and mon.scoring.max_new_tokens == 3
    assert mon.scoring.n_boot == 50 and mon.scoring.ci == 0.9
    assert mon.scoring.noise.high_above == 2.5
    assert mon.schedule.every_n_epochs == 1 and not mon.schedule.on_validation_end
    assert (mon.metric, mon.mode, mon.prefix, mon.time_budget_s) == ("noise_rate", "max", "probes_yaml", 600.0)
    assert cb.wandb is False and cb.log_dir == tmp_path / "files" and cb.log_plots is False

    cli.trainer.fit(cli.model)
    assert [h.step for h in mon.state.history] == [cli.trainer.global_step // 2, cli.trainer.global_step]
    assert all(h.complete for h in mon.state.history)
    assert "probes_yaml/noise_rate" in cli.trainer.callback_metrics
    assert any((tmp_path / "files").rglob("*.csv"))


def test_budget_candidates_from_yaml(tmp_path):
    budget = "\n                class_path: probattr_monitor.engine.budget.Budget\n" \
             "                init_args: {max_candidates: 7, tail_samples: 5, screen: false}"
    cli = LightningCLI(CLIModule, run=False, parser_kwargs={"exit_on_error": False}, args=["--config", _config(tmp_path, budget)])
    cand = _callback(cli).monitor.scoring.candidates
    assert isinstance(cand, Budget)
    assert (cand.max_candidates, cand.tail_samples, cand.screen) == (7, 5, False)


def test_bad_setting_in_yaml_fails_at_setup(tmp_path):
    path = Path(_config(tmp_path, '"all"'))
    path.write_text(path.read_text().replace("metric: noise_rate", "metric: not_a_metric"))
    with pytest.raises(ValueError, match="metric must be one of"):
        LightningCLI(CLIModule, run=False, parser_kwargs={"exit_on_error": False}, args=["--config", str(path)])


@pytest.mark.parametrize("value, expected", [("3", 3), ("null", None), ("auto", 10)])
def test_attribution_every_from_yaml(tmp_path, value, expected):
    path = Path(_config(tmp_path, '"all"'))
    lines = [line for line in path.read_text().splitlines() if line.strip() not in ("metric: noise_rate", "mode: max")]
    at = next(i for i, line in enumerate(lines) if line.strip() == "prefix: probes_yaml")
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    lines.insert(at + 1, f"{indent}attribution_every: {value}")
    path.write_text("\n".join(lines) + "\n")
    cli = LightningCLI(CLIModule, run=False, parser_kwargs={"exit_on_error": False}, args=["--config", str(path)])
    assert _callback(cli).monitor.attribution_every == expected
