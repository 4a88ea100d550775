"""ProbAttrTrainerCallback inside real Hugging Face Trainer runs (tiny GPT-2, CPU).

Every test trains a 1-layer, width-16 GPT-2 on a templated corpus for a dozen
steps with a word-level tokenizer (see ``helpers/hf.py``), scoring three short
probes exactly over the whole vocabulary. W&B runs offline (``WANDB_MODE=
offline``) and the run directory is read back from disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from transformers import EarlyStoppingCallback  # noqa: E402

from helpers.hf import (  # noqa: E402
    PROBES,
    BlockDataset,
    ZeroWeightsFrom,
    make_corpus,
    make_tokenizer,
    make_trainer,
    state_dict_copy,
)
from helpers.probes import scoring_config, write_probes  # noqa: E402
from helpers.wandb_offline import wandb_config, wandb_history, wandb_metric_defs, wandb_run_dir  # noqa: E402
from probattr_monitor.callbacks.hf import ProbAttrTrainerCallback, producible_metric_names  # noqa: E402
from probattr_monitor.monitor import ProbAttrMonitor, Schedule  # noqa: E402
from probattr_monitor.probes import ProbeSetError  # noqa: E402
from probattr_monitor.report import DEFAULT_GATE_METRIC  # noqa: E402
from probattr_monitor.sinks.files import read_history  # noqa: E402

KEY = "eval_probattr_noise_rate"
GATE = f"probattr_{DEFAULT_GATE_METRIC}"  # metric_for_best_model of the default gate
GATE_KEY = f"eval_{GATE}"  # ...and the key the callback injects for it

pytestmark = pytest.mark.usefixtures("one_thread", "offline_wandb")


@pytest.fixture
def probes(tmp_path):
    return write_probes(tmp_path / "probes.jsonl", PROBES)


def callback(probes, metric=None, **kw):
    kw.setdefault("scoring", scoring_config())
    kw.setdefault("plots", False)
    kw.setdefault("wandb", False)
    if metric is not None:  # the callback takes its gate metric from a monitor
        schedule = Schedule(every_n_steps=kw.pop("every_n_steps", None),
                            on_validation_end=kw.pop("on_evaluate", True))
        monitor = ProbAttrMonitor(str(probes), scoring=kw.pop("scoring"), schedule=schedule, metric=metric)
        return ProbAttrTrainerCallback(monitor, **kw)
    return ProbAttrTrainerCallback(probes=str(probes), **kw)


def steps_of(cb):
    return [h.step for h in cb.history]


def eval_records(trainer, name="eval_loss"):
    return [r for r in trainer.state.log_history if name in r]


def load_checkpoint_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


# --------------------------------------------------------------------------- training is never disturbed


def test_final_weights_bit_identical_with_and_without_callback(tmp_path, probes):
    plain = make_trainer(tmp_path / "plain", [])
    plain.train()
    cb = callback(probes, every_n_steps=3)
    monitored = make_trainer(tmp_path / "monitored", [cb])
    monitored.train()
    assert steps_of(cb) == [3, 4, 6, 8, 9, 12]  # every 3 steps and at each evaluation (every 4)
    a, b = state_dict_copy(plain.model), state_dict_copy(monitored.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # same training losses, step by step
    losses = lambda t: [r["loss"] for r in t.state.log_history if "loss" in r]  # noqa: E731
    assert losses(plain) == losses(monitored)
    # negative control: a callback that draws one random number per step does change them
    from transformers import TrainerCallback

    class DrawsRandom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            torch.rand(1)

    disturbed = make_trainer(tmp_path / "disturbed", [DrawsRandom()])
    disturbed.train()
    assert not all(torch.equal(a[k], disturbed.model.state_dict()[k]) for k in a)
    # without W&B the reports went to files in the run directory
    out = Path(monitored.args.output_dir) / "probattr"
    hist = read_history(out)
    assert [h["step"] for h in hist] == [3, 4, 6, 8, 9, 12]
    assert hist[1][DEFAULT_GATE_METRIC] == pytest.approx(cb.history[1].value)
    assert (out / "step-00000004" / "tokens.csv").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["fingerprint"] == cb.monitor.probe_set.fingerprint
    assert config["scoring"]["max_new_tokens"] == 3


# --------------------------------------------------------------------------- metric_for_best_model


def test_metric_for_best_model_selects_the_lowest_noise_rate_checkpoint(tmp_path, probes):
    # From step 5 on every weight is zeroed after each optimizer step: the model is
    # uniform, every token is a noise token (rate 1), and its eval loss log|V| is
    # *lower* than the peaked initial model's, so selecting by loss would pick a
    # late checkpoint and selecting by noise rate must pick checkpoint-4.
    cb = callback(probes, metric="noise_rate")
    trainer = make_trainer(
        tmp_path, [cb, ZeroWeightsFrom(5)],
        save_strategy="steps", save_steps=4, load_best_model_at_end=True,
        metric_for_best_model="probattr_noise_rate", greater_is_better=False,
    )
    trainer.train()
    values = {h.step: h.value for h in cb.history}
    assert sorted(values) == [4, 8, 12]
    assert values[4] < 1.0 and values[8] == 1.0 and values[12] == 1.0
    evals = eval_records(trainer)
    assert [r[KEY] for r in evals] == [values[4], values[8], values[12]]
    assert min(evals, key=lambda r: r["eval_loss"])["step"] != 4  # loss would not have chosen it
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    assert trainer.state.best_metric == values[4]
    assert cb.best_step == 4 and cb.best_value == values[4]
    # the weights in memory are checkpoint-4's, not the zeroed last ones
    best = load_checkpoint_weights(trainer.state.best_model_checkpoint)
    final = trainer.model.state_dict()
    for k, v in best.items():
        assert torch.equal(final[k], v), k
    assert any(v.abs().sum() > 0 for v in best.values())
    # the injected values are saved in trainer_state.json with the evaluation's record
    saved = json.loads((Path(trainer.args.output_dir) / "checkpoint-8" / "trainer_state.json").read_text())
    assert [r[KEY] for r in saved["log_history"] if "eval_loss" in r] == [values[4], values[8]]
    assert saved["best_global_step"] == 4


def test_early_stopping_stops_on_the_noise_rate(tmp_path, probes):
    cb = callback(probes, metric="noise_rate")
    es = EarlyStoppingCallback(early_stopping_patience=2)
    trainer = make_trainer(
        tmp_path, [cb, es, ZeroWeightsFrom(5)],
        max_steps=40, eval_steps=2, logging_steps=2,
        metric_for_best_model="probattr_noise_rate", greater_is_better=False,
    )
    trainer.train()
    # evaluations at 2, 4 (trained model) then 6, 8 (uniform model, rate 1): two bad ones in a row
    assert trainer.state.global_step <= 8 < 40
    assert steps_of(cb)[-1] == trainer.state.global_step
    assert es.early_stopping_patience_counter == 2


def test_early_stopping_listed_before_the_callback_is_refused(tmp_path, probes):
    with pytest.raises(ValueError, match="list ProbAttrTrainerCallback first"):
        make_trainer(
            tmp_path, [EarlyStoppingCallback(early_stopping_patience=2), callback(probes)],
            metric_for_best_model="probattr_noise_rate", greater_is_better=False,
        )


# --------------------------------------------------------------------------- several eval datasets


def test_two_eval_datasets_are_scored_once_per_step(tmp_path, probes):
    tok = make_tokenizer()
    evals = {"a": BlockDataset(tok, make_corpus(20, seed=3)), "b": BlockDataset(tok, make_corpus(20, seed=4))}
    cb = callback(probes)
    calls = []
    run = cb.monitor.run

    def counting_run(model, step, **kw):
        calls.append(step)
        return run(model, step, **kw)

    cb.monitor.run = counting_run
    trainer = make_trainer(
        tmp_path, [cb], tokenizer=tok, eval_dataset=evals, max_steps=8,
        metric_for_best_model=GATE, greater_is_better=False,
    )
    trainer.train()
    assert calls == [4, 8]
    # injected once per evaluate() call: into dataset a's metrics (so EarlyStopping counts it once)
    a = eval_records(trainer, "eval_a_loss")
    b = eval_records(trainer, "eval_b_loss")
    assert [r[GATE_KEY] for r in a] == [h.value for h in cb.history]
    assert all(GATE_KEY not in r for r in b)
    assert trainer.state.best_metric == min(h.value for h in cb.history)
    # a later evaluate() at the same step reuses the score and returns it
    metrics = trainer.evaluate()
    assert calls == [4, 8]
    assert metrics[GATE_KEY] == cb.history[-1].value
    assert metrics[f"{GATE_KEY}_ci_low"] <= metrics[GATE_KEY] <= metrics[f"{GATE_KEY}_ci_high"]


def test_injected_keys_are_exactly_the_documented_ones(tmp_path, probes):
    cb = callback(probes)
    trainer = make_trainer(tmp_path, [cb], max_steps=4)
    trainer.train()
    injected = {k for k in eval_records(trainer)[0] if k.startswith("eval_probattr_")}
    assert injected == {f"eval_probattr_{n}" for n in producible_metric_names()}
    scalars = cb.last_report.metrics.scalars(prefix="")
    assert set(scalars) == set(producible_metric_names())


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, one_thread):
    """12 steps, evaluation and checkpoint every 4: history [4, 8, 12]."""
    tmp = tmp_path_factory.mktemp("first")
    probes = write_probes(tmp / "probes.jsonl", PROBES)
    cb = callback(probes)
    trainer = make_trainer(tmp, [cb], save_strategy="steps", save_steps=4)
    trainer.train()
    return tmp, probes, [(h.step, h.value, h.scalars) for h in cb.history]


@pytest.mark.parametrize("restore_flag", [False, True])
def test_resume_from_checkpoint_continues_the_history(tmp_path, first_run, restore_flag):
    tmp, probes, full = first_run
    assert [s for s, _, _ in full] == [4, 8, 12]
    cb = callback(probes)
    calls = []
    run = cb.monitor.run
    cb.monitor.run = lambda model, step, **kw: (calls.append(step), run(model, step, **kw))[1]
    trainer = make_trainer(tmp_path, [cb], save_strategy="steps", save_steps=4,
                           restore_callback_states_from_checkpoint=restore_flag)
    trainer.train(resume_from_checkpoint=str(tmp / "out" / "checkpoint-8"))
    assert calls == [12]  # steps 4 and 8 come from the checkpoint, not re-scored
    assert [(h.step, h.value, h.scalars) for h in cb.history] == full
    # HF's restore path leaves the user's instance in place
    assert any(c is cb for c in trainer.callback_handler.callbacks)
    saved = json.loads((tmp_path / "out" / "checkpoint-12" / "trainer_state.json").read_text())
    history = saved["stateful_callbacks"]["ProbAttrTrainerCallback"]["attributes"]["monitor_state"]["state"]["history"]
    assert [h["step"] for h in history] == [4, 8, 12]


# --------------------------------------------------------------------------- bad configuration


def test_bad_configuration_raises_at_construction(tmp_path, probes):
    with pytest.raises(ValueError, match="no-such-set"):
        ProbAttrTrainerCallback(probes="no-such-set")
    with pytest.raises(FileNotFoundError):
        ProbAttrTrainerCallback(probes=str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "ok"}\n{not json\n')
    with pytest.raises(ProbeSetError):
        ProbAttrTrainerCallback(probes=str(bad))
    with pytest.raises(ValueError, match="impossible schedule"):
        ProbAttrTrainerCallback(probes=str(probes), on_evaluate=False)
    with pytest.raises(ValueError, match="every_n_steps"):
        ProbAttrTrainerCallback(probes=str(probes), every_n_steps=0)
    with pytest.raises(ValueError, match="wandb"):
        ProbAttrTrainerCallback(probes=str(probes), wandb="yes")
    mon = ProbAttrMonitor(str(probes), scoring=scoring_config())
    with pytest.raises(ValueError, match="not both"):
        ProbAttrTrainerCallback(mon, scoring=scoring_config())


@pytest.mark.parametrize(
    "kw, overrides, match",
    [
        ({}, dict(metric_for_best_model="probattr_noise_ratio"), "never produced"),
        ({}, dict(metric_for_best_model="eval_a_probattr_noise_rate"), "never produced"),
        (dict(on_evaluate=False, every_n_steps=2), dict(metric_for_best_model="probattr_noise_rate"),
         "on_evaluate=False"),
    ],
)
def test_unproducible_metric_for_best_model_raises_at_trainer_init(tmp_path, probes, kw, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, [callback(probes, **kw)], greater_is_better=False, **overrides)


@pytest.mark.parametrize(
    "make, overrides, match",
    [
        (lambda p: callback(p), dict(eval_strategy="no"), "eval_strategy='no'"),
        (lambda p: callback(p, wandb=True), {}, "no W&B run is active"),
        (lambda p: callback(p), dict(pass_tokenizer=False), "needs a tokenizer"),
    ],
    ids=["eval-strategy-no", "wandb-required", "no-tokenizer"],
)
def test_bad_configuration_raises_before_the_first_step(tmp_path, probes, make, overrides, match):
    trainer = make_trainer(tmp_path, [make(probes)], **overrides)
    before = state_dict_copy(trainer.model)
    with pytest.raises(ValueError, match=match):
        trainer.train()
    assert trainer.state.global_step == 0
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_probe_longer_than_the_context_window_raises_at_trainer_init(tmp_path):
    path = tmp_path / "long.jsonl"
    prompt = " ".join(["the cat sees the ball"] * 7)  # 35 words > 32 positions
    path.write_text(json.dumps({"id": "long", "prompt": prompt}) + "\n")
    with pytest.raises(ValueError, match="context window is 32"):
        make_trainer(tmp_path, [callback(path)])


def test_greater_is_better_default_is_warned_about(tmp_path, probes):
    with pytest.warns(UserWarning, match="greater_is_better=False"):
        make_trainer(tmp_path, [callback(probes)], metric_for_best_model="probattr_noise_rate")


# --------------------------------------------------------------------------- scoring failures


def test_scoring_failure_warns_records_and_training_goes_on(tmp_path, probes):
    cb = callback(probes)

    def broken(model, step, **kw):
        raise RuntimeError("probe engine exploded")

    cb.monitor.run = broken
    plain = make_trainer(tmp_path / "plain", [])
    plain.train()
    trainer = make_trainer(
        tmp_path / "broken", [cb], save_strategy="steps", save_steps=4, load_best_model_at_end=True,
        metric_for_best_model="probattr_noise_rate", greater_is_better=False,
    )
    with pytest.warns(RuntimeWarning, match="probe engine exploded"):
        trainer.train()
    assert trainer.state.global_step == 12
    assert [f["step"] for f in cb.failures] == [4, 8, 12]
    # a failed scoring logs nothing (issue 12: it used to log NaN for every key)
    assert all(KEY not in r for r in eval_records(trainer))
    assert trainer.state.best_model_checkpoint is None and trainer.state.best_metric is None
    a, b = plain.model.state_dict(), trainer.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- W&B (offline run directory)


@pytest.mark.parametrize("who_starts_the_run", ["hf-wandb-callback", "user-wandb-init"])
def test_wandb_offline_run_directory(tmp_path, probes, monkeypatch, who_starts_the_run):
    wandb = pytest.importorskip("wandb")
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "probattr-tests")
    cb = callback(probes, every_n_steps=6, plots=True, wandb="auto", attribution_every=1)  # tables every scoring
    if who_starts_the_run == "hf-wandb-callback":
        report_to = ["wandb"]
    else:
        report_to = []
        wandb.init(project="probattr-tests", dir=str(tmp_path), mode="offline", config={"mine": 1})
    try:
        trainer = make_trainer(tmp_path, [cb], report_to=report_to,
                               metric_for_best_model=GATE, greater_is_better=False)
        trainer.train()
    finally:
        wandb.finish()
    run_dir = wandb_run_dir(tmp_path)
    rows = wandb_history(run_dir)
    scored = [r for r in rows if f"probattr/{DEFAULT_GATE_METRIC}" in r]
    # one row per scoring, each against the probattr/step key, nothing twice
    assert [r["probattr/step"] for r in scored] == [4, 6, 8, 12] == steps_of(cb)
    for r, h in zip(scored, cb.history):
        assert r[f"probattr/{DEFAULT_GATE_METRIC}"] == pytest.approx(h.value)
        assert r["probattr/tokens/_type"] == "table-file"
        assert r["probattr/probes/_type"] == "table-file"
        assert r["probattr/plots/entropy_vs_as/_type"] == "image-file"
    assert all(f"probattr/{DEFAULT_GATE_METRIC}" not in r for r in rows if r not in scored)
    defs = wandb_metric_defs(run_dir)
    assert {"name": "", "glob": "probattr/*", "step_metric": "probattr/step"} in defs
    # the full per-token table of the last scoring, row for row
    table = json.loads((run_dir / "files" / scored[-1]["probattr/tokens/path"]).read_text())
    report = cb.last_report
    assert table["columns"] == [str(c) for c in report.table.columns]
    assert len(table["data"]) == len(report.table)
    col = table["columns"].index("attribution")
    assert [row[col] for row in table["data"]] == pytest.approx(report.table["attribution"].tolist(), nan_ok=True)
    probes_table = json.loads((run_dir / "files" / scored[-1]["probattr/probes/path"]).read_text())
    assert len(probes_table["data"]) == 3
    # run config: fingerprint and scoring settings
    config = wandb_config(run_dir)
    assert config["probattr"]["fingerprint"] == cb.monitor.probe_set.fingerprint
    assert config["probattr"]["scoring"]["candidates"] == "all"
    if who_starts_the_run == "user-wandb-init":
        assert config["mine"] == 1
    else:  # HF's own eval metrics still go through WandbCallback against train/global_step
        assert any("eval/loss" in r and r.get("train/global_step") == 4 for r in rows)
    # W&B was used, so no file sink in the output directory
    assert not (Path(trainer.args.output_dir) / "probattr").exists()


# --------------------------------------------------------------------------- schedules from a monitor


def test_monitor_schedule_every_n_steps_and_before_checkpoints(tmp_path, probes):
    mon = ProbAttrMonitor(str(probes), scoring=scoring_config(), schedule=Schedule(every_n_steps=5, on_validation_end=False))
    cb = ProbAttrTrainerCallback(mon, wandb=False, plots=False)
    trainer = make_trainer(tmp_path / "a", [cb], eval_strategy="no", max_steps=10)
    trainer.train()
    assert steps_of(cb) == [5, 10] and cb.monitor is mon

    mon = ProbAttrMonitor(str(probes), scoring=scoring_config(),
                          schedule=Schedule(on_validation_end=False, on_save_checkpoint=True))
    cb = ProbAttrTrainerCallback(mon, wandb=False, plots=False)
    trainer = make_trainer(tmp_path / "b", [cb], eval_strategy="no", save_strategy="steps", save_steps=4)
    trainer.train()
    assert steps_of(cb) == [4, 8, 12]
    # scored before the checkpoint was written: each checkpoint holds its own step's score
    saved = json.loads((tmp_path / "b" / "out" / "checkpoint-8" / "trainer_state.json").read_text())
    history = saved["stateful_callbacks"]["ProbAttrTrainerCallback"]["attributes"]["monitor_state"]["state"]["history"]
    assert [h["step"] for h in history] == [4, 8]


# --------------------------------------------------------------------------- outside training, other ranks


def test_evaluate_before_training_scores_step_zero(tmp_path, probes):
    cb = callback(probes)
    trainer = make_trainer(tmp_path, [cb], max_steps=4)
    metrics = trainer.evaluate()
    assert steps_of(cb) == [0]
    assert metrics[GATE_KEY] == cb.history[0].value
    assert [h["step"] for h in read_history(Path(trainer.args.output_dir) / "probattr")] == [0]
    trainer.train()
    assert steps_of(cb) == [0, 4]


def test_only_world_process_zero_logs_but_every_rank_injects(tmp_path, probes):
    from transformers import TrainerControl, TrainerState

    from helpers.hf import training_args
    from helpers.models import trainer_gpt2

    tok = make_tokenizer()
    model = trainer_gpt2(tok)
    args = training_args(tmp_path / "out")
    cb = callback(probes, wandb="auto", log_dir=tmp_path / "files")
    state = TrainerState(is_world_process_zero=False, is_local_process_zero=False)
    control = TrainerControl()
    cb.on_train_begin(args, state, control, model=model, processing_class=tok)
    state.global_step = 4
    metrics = {"eval_loss": 1.0, "eval_runtime": 0.1}
    cb.on_evaluate(args, state, control, metrics=metrics, model=model)
    assert steps_of(cb) == [4] and metrics[GATE_KEY] == cb.history[0].value
    assert not (tmp_path / "files").exists() and not (tmp_path / "out" / "probattr").exists()
    # the same on rank 0 writes the report
    cb0 = callback(probes, wandb="auto", log_dir=tmp_path / "files")
    state0 = TrainerState()
    cb0.on_train_begin(args, state0, control, model=model, processing_class=tok)
    state0.global_step = 4
    cb0.on_evaluate(args, state0, control, metrics={"eval_loss": 1.0, "eval_runtime": 0.1}, model=model)
    assert [h["step"] for h in read_history(tmp_path / "files")] == [4]


DDP_SCRIPT = r'''
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from helpers.hf import make_trainer
from helpers.probes import scoring_config
from probattr_monitor.callbacks.hf import ProbAttrTrainerCallback
from probattr_monitor.report import DEFAULT_GATE_METRIC

tmp = Path(sys.argv[1])
cb = ProbAttrTrainerCallback(probes=str(tmp / "probes.jsonl"), scoring=scoring_config(), plots=False, wandb=False)
trainer = make_trainer(tmp, [cb], max_steps=8, per_device_train_batch_size=4,
                       metric_for_best_model=f"probattr_{DEFAULT_GATE_METRIC}", greater_is_better=False)
trainer.train()
rank = trainer.args.process_index
out = {
    "rank": rank,
    "world_size": trainer.args.world_size,
    "history": [[h.step, h.value, h.n_scored] for h in cb.history],
    "injected": [r.get(f"eval_probattr_{DEFAULT_GATE_METRIC}") for r in trainer.state.log_history if "eval_loss" in r],
    "best_metric": trainer.state.best_metric,
    "sharded": cb.last_report.meta.get("sharded"),
}
(tmp / f"rank{rank}.json").write_text(json.dumps(out))
# tear the gloo group down before exit: left alive, its threads can abort the process at shutdown
torch.distributed.barrier()
torch.distributed.destroy_process_group()
'''


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_share_the_work_and_only_rank_zero_writes(tmp_path, probes):
    import subprocess
    import sys

    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    here = Path(__file__).resolve().parent
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(here.parent), str(here), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(script), str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the launcher and both workers: the session started here
        output, _ = proc.communicate()
        pytest.fail("DDP run timed out:\n" + output[-4000:])
    assert proc.returncode == 0, output[-4000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["sharded"] is True
    # every rank scored its shard, gathered the whole set and injected the same values
    assert r0["history"] == r1["history"]
    assert [s for s, _, _ in r0["history"]] == [4, 8]
    assert all(n == 3 for _, _, n in r0["history"])
    assert r0["injected"] == r1["injected"] == [v for _, v, _ in r0["history"]]
    assert r0["best_metric"] == r1["best_metric"] == min(v for _, v, _ in r0["history"])
    # one set of files, written once per step (by rank 0)
    assert [h["step"] for h in read_history(tmp_path / "out" / "probattr")] == [4, 8]
