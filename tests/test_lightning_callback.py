"""ProbAttrCallback in real Lightning runs (CPU): schedule, gating, resume, W&B offline, DDP."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")
wandb = pytest.importorskip("wandb")

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, WandbLogger  # noqa: E402

from helpers.lit import PROBES, PlainForwardLM, TinyLitLM, trainer_kwargs, word_tokenizer  # noqa: E402
from helpers.probes import scoring_config, write_probes  # noqa: E402
from helpers.wandb_offline import load_wandb_table, read_wandb_records  # noqa: E402
from probattr_monitor.callbacks import ProbAttrCallback  # noqa: E402
from probattr_monitor.engine.budget import Budget  # noqa: E402
from probattr_monitor.callbacks.lightning import logged_keys  # noqa: E402
from probattr_monitor.monitor import ProbAttrMonitor, Schedule  # noqa: E402
from probattr_monitor.report import DEFAULT_GATE_METRIC  # noqa: E402
from probattr_monitor.sinks import read_history  # noqa: E402

HERE = Path(__file__).resolve().parent
GATE = f"probattr/{DEFAULT_GATE_METRIC}"  # the logged key of the default gate metric

pytestmark = pytest.mark.usefixtures("one_thread", "offline_wandb")


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    return str(write_probes(tmp_path_factory.mktemp("probes") / "probes.jsonl", PROBES))


def make_callback(probes, **kw):
    kw.setdefault("scoring", scoring_config())
    kw.setdefault("log_plots", False)
    kw.setdefault("wandb", False)
    return ProbAttrCallback(probes=probes, **kw)


def fit(module, callbacks, tmp_path, **kw):
    kw.setdefault("default_root_dir", tmp_path)  # never write into the working directory
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(**kw))
    trainer.fit(module)
    return trainer


def history_steps(cb):
    return [h.step for h in cb.history]


def csv_rows_of(logger):
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def csv_rows(trainer):
    return csv_rows_of(trainer.loggers[0])


# ----------------------------------------------------------------------------- never disturbing training


@pytest.mark.parametrize("budgeted", [False, True], ids=["exact", "budgeted"])
def test_weights_bit_identical_with_and_without_callback(tok, probes, tmp_path, budgeted):
    """Scoring never disturbs training, exact or budgeted (the tail sampler draws from its own RNG)."""
    scoring = scoring_config()
    if budgeted:  # a budget well below the ~50-token vocabulary, so tail ids are really sampled
        scoring = dataclasses.replace(scoring, candidates=Budget(max_candidates=4, tail_samples=6, screen=8))

    def run(with_callback):
        pl.seed_everything(0, verbose=False)
        module = TinyLitLM(tok, dropout=0.1)  # dropout: training consumes the RNG stream scoring must not touch
        cbs = []
        if with_callback:
            cbs = [make_callback(probes, scoring=scoring, every_n_steps=2, every_n_epochs=1,
                                 log_dir=tmp_path / "files", attribution_every=1)]  # the full path every time
        fit(module, cbs, tmp_path, max_epochs=2)
        return module, cbs

    plain, _ = run(False)
    watched, (cb,) = run(True)
    assert len(cb.history) >= 9 and cb.failures == []
    a, b = plain.state_dict(), watched.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    header = next((tmp_path / "files").rglob("tokens.csv")).read_text().splitlines()[0].split(",")
    assert ("attribution_se" in header) == budgeted  # budgeted tables carry the standard errors


# ----------------------------------------------------------------------------- schedule


def test_schedule_skips_sanity_check_and_never_scores_a_step_twice(tok, probes, tmp_path):
    pl.seed_everything(0, verbose=False)
    cb = make_callback(probes, every_n_steps=3, every_n_epochs=1, on_validation_end=True)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = fit(TinyLitLM(tok), [cb], tmp_path, max_epochs=2, num_sanity_val_steps=2, logger=logger,
                  log_every_n_steps=50)
    # 9 steps per epoch: every_n_steps gives 3, 6, 9, 12, 15, 18; epoch and validation ends fall on 9 and 18
    assert history_steps(cb) == [3, 6, 9, 12, 15, 18]
    assert [t["event"] for t in cb.timings] == ["train_step"] * 6  # the later events at 9/18 were deduplicated
    rows = [r for r in csv_rows(trainer) if r.get(GATE)]
    # every scoring reached the logger exactly once, whatever log_every_n_steps says
    assert sorted(float(r["probattr/step"]) for r in rows) == [3, 6, 9, 12, 15, 18]
    for r in rows:
        step = int(float(r["probattr/step"]))
        (entry,) = [h for h in cb.history if h.step == step]
        assert float(r[GATE]) == pytest.approx(entry.value, rel=1e-6)
    assert set(logged_keys()) <= set(rows[0])  # the documented keys, all of them


def test_on_save_checkpoint_scores_right_before_each_save(tok, probes, tmp_path):
    pl.seed_everything(0, verbose=False)
    cb = make_callback(probes, on_validation_end=False, on_save_checkpoint=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=GATE, mode="min",
                           every_n_train_steps=5, save_top_k=-1, filename="{step}")
    fit(TinyLitLM(tok), [cb, ckpt], tmp_path, max_epochs=2, enable_checkpointing=True)
    assert history_steps(cb) == [5, 10, 15]
    saved = {int(re.search(r"step=(\d+)", Path(p).name).group(1)): float(v) for p, v in ckpt.best_k_models.items()}
    assert saved == pytest.approx({h.step: h.value for h in cb.history}, rel=1e-6)  # ranked on the fresh value


def test_every_n_epochs_without_validation(tok, probes, tmp_path):
    pl.seed_everything(0, verbose=False)
    cb = make_callback(probes, every_n_epochs=2, on_validation_end=False)
    fit(TinyLitLM(tok, with_val=False), [cb], tmp_path, max_epochs=4)
    assert history_steps(cb) == [18, 36]


# ----------------------------------------------------------------------------- gating on the metric


def test_model_checkpoint_selects_by_noise_rate_not_last(tok, probes, tmp_path):
    pl.seed_everything(0, verbose=False)
    module = TinyLitLM(tok, batch_size=20, scramble_from_epoch=3)  # learns for 3 epochs, then is wiped
    cb = make_callback(probes, metric="noise_rate")  # default schedule: at each validation end
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="probattr/noise_rate", mode="min", save_top_k=1,
                           save_last=True, filename="{epoch}-{step}")
    fit(module, [cb, ckpt], tmp_path, max_epochs=5, enable_checkpointing=True)
    values = {h.step: h.value for h in cb.history}
    assert list(values) == [18, 36, 54, 72, 90]
    best_step = min(values, key=lambda s: (values[s], s))
    assert values[90] > values[best_step]  # the last checkpoint is worse...
    assert best_step < 72
    assert Path(ckpt.best_model_path).name == f"epoch={best_step // 18 - 1}-step={best_step}.ckpt"  # ...and not chosen
    assert float(ckpt.best_model_score) == pytest.approx(values[best_step], rel=1e-6)
    assert Path(ckpt.last_model_path).name == "last.ckpt"
    assert cb.monitor.state.best_step == best_step


def test_early_stopping_on_noise_rate(tok, probes, tmp_path):
    pl.seed_everything(0, verbose=False)
    module = TinyLitLM(tok, batch_size=20, scramble_from_epoch=2)
    cb = make_callback(probes, metric="noise_rate")
    stop = EarlyStopping(monitor="probattr/noise_rate", mode="min", patience=1)
    trainer = fit(module, [cb, stop], tmp_path, max_epochs=10)
    assert trainer.current_epoch < 9 and stop.stopped_epoch > 0
    assert float(stop.best_score) == pytest.approx(min(h.value for h in cb.history), rel=1e-6)


# ----------------------------------------------------------------------------- resume


def test_resume_continues_the_history(tok, probes, tmp_path):
    files = tmp_path / "probattr"
    pl.seed_everything(0, verbose=False)
    first = make_callback(probes, every_n_steps=4, log_dir=files)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(TinyLitLM(tok), [first, ckpt], tmp_path, max_epochs=2, enable_checkpointing=True)
    before = history_steps(first)
    assert before == [4, 8, 9, 12, 16, 18]

    pl.seed_everything(0, verbose=False)
    second = make_callback(probes, every_n_steps=4, log_dir=files)
    trainer = pl.Trainer(callbacks=[second, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
                         **trainer_kwargs(max_epochs=4, enable_checkpointing=True, default_root_dir=tmp_path))
    trainer.fit(TinyLitLM(tok), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    after = history_steps(second)
    assert after[: len(before)] == before  # restored from the checkpoint...
    assert [h.value for h in second.history[: len(before)]] == [h.value for h in first.history]
    assert after == [4, 8, 9, 12, 16, 18, 20, 24, 27, 28, 32, 36]  # ...continued, nothing lost
    assert len(after) == len(set(after))
    assert all(t["step"] > 18 for t in second.timings)  # nothing scored twice
    assert [h["step"] for h in read_history(files)] == after  # the files' history too
    assert sorted(p.name for p in files.glob("step-*")) == [f"step-{s:08d}" for s in after]

    # another probe set: its history is not comparable, so it starts afresh, with a warning
    other = tmp_path / "other.jsonl"
    other.write_text('{"id": "q1", "prompt": "the dog likes the river"}\n')
    third = make_callback(str(other))
    trainer = pl.Trainer(callbacks=[third], **trainer_kwargs(max_epochs=5, default_root_dir=tmp_path))
    with pytest.warns(RuntimeWarning, match="different probe set"):
        trainer.fit(TinyLitLM(tok), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert history_steps(third) == [45]


# ----------------------------------------------------------------------------- configuration errors


def test_bad_configuration_raises_at_construction(probes, tmp_path):
    with pytest.raises(ValueError, match="no-such-set"):
        ProbAttrCallback(probes="no-such-set")
    with pytest.raises((FileNotFoundError, ValueError)):
        ProbAttrCallback(probes=str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": }\n')
    with pytest.raises(ValueError):
        ProbAttrCallback(probes=str(bad))
    with pytest.raises(ValueError, match="impossible schedule"):
        ProbAttrCallback(probes=probes, on_validation_end=False)
    with pytest.raises(ValueError, match="every_n_steps"):
        ProbAttrCallback(probes=probes, every_n_steps=0)
    with pytest.raises(ValueError, match="configure these on the ProbAttrMonitor"):
        ProbAttrCallback(ProbAttrMonitor(probes), every_n_steps=3)
    with pytest.raises(ValueError, match="wandb must be"):
        ProbAttrCallback(probes=probes, wandb="yes")
    with pytest.raises(ValueError, match="unknown report formats"):
        ProbAttrCallback(probes=probes, log_dir=tmp_path, file_formats=("xls",))


@pytest.mark.parametrize(
    "case",
    ["unknown_key", "stale_key", "never_fires", "no_checkpoint", "wandb_without_run", "bad_model_attr",
     "no_tokenizer"],
)
def test_bad_configuration_raises_before_training(case, tok, probes, tmp_path):
    pl.seed_everything(0, verbose=False)
    module = TinyLitLM(tok, with_val=case != "never_fires")
    kw = {}
    callbacks = []
    match = None
    if case == "unknown_key":
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, monitor="probattr/noise_rte", mode="min"))
        match = "never logs.*did you mean 'probattr/noise_rate'"
    elif case == "stale_key":
        kw = {"every_n_steps": 4, "on_validation_end": False}
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, monitor="probattr/noise_rate", mode="min"))
        match = "missing or stale"
    elif case == "never_fires":
        match = "impossible schedule"
    elif case == "no_checkpoint":
        kw = {"on_validation_end": False, "on_save_checkpoint": True}
        match = "impossible schedule"
    elif case == "wandb_without_run":
        kw = {"wandb": True}
        match = "found no W&B run"
    elif case == "bad_model_attr":
        kw = {"model_attr": "nope"}
        match = "has no attribute 'nope'"
    elif case == "no_tokenizer":
        module.tokenizer = None
        match = "needs a tokenizer"
    cb = make_callback(probes, **kw)
    assert wandb.run is None
    with pytest.raises(ValueError, match=match):
        fit(module, [cb, *callbacks], tmp_path, max_epochs=1, enable_checkpointing=bool(callbacks))
    assert module.n_training_steps == 0  # raised before the first training step
    assert cb.history == []


def test_scoring_failure_warns_records_and_training_goes_on(tok, probes, tmp_path, monkeypatch):
    pl.seed_everything(0, verbose=False)
    module = TinyLitLM(tok)
    cb = make_callback(probes, every_n_steps=5)

    def broken(*args, **kwargs):
        raise RuntimeError("scoring exploded")

    monkeypatch.setattr(cb.monitor, "run", broken)
    with pytest.warns(RuntimeWarning, match="scoring at step 5 .* failed"):
        trainer = fit(module, [cb], tmp_path, max_epochs=2)
    assert trainer.global_step == 18 and module.n_training_steps == 18
    assert [f["step"] for f in cb.failures] == [5, 9, 10, 15, 18]
    assert "scoring exploded" in cb.failures[0]["error"]
    assert cb.state_dict()["failures"] == cb.failures


# ----------------------------------------------------------------------------- which model, keys


def test_model_resolution(tok, probes, tmp_path):
    pl.seed_everything(0, verbose=False)
    own_forward = TinyLitLM(tok)
    cb = make_callback(probes)
    fit(own_forward, [cb], tmp_path, max_epochs=1)
    assert cb._model is own_forward and len(cb.history) == 1

    child_only = PlainForwardLM(tok)
    cb = make_callback(probes)
    fit(child_only, [cb], tmp_path, max_epochs=1)
    assert cb._model is child_only.model and len(cb.history) == 1

    explicit = TinyLitLM(tok)
    cb = make_callback(probes, model_attr="model")
    fit(explicit, [cb], tmp_path, max_epochs=1)
    assert cb._model is explicit.model

    monitor = ProbAttrMonitor(probes, scoring=scoring_config(), schedule=Schedule(every_n_epochs=1), prefix="pa")
    cb = ProbAttrCallback(monitor, wandb=False, log_plots=False)
    assert cb.monitor_key == f"pa/{DEFAULT_GATE_METRIC}" and "pa" in cb.state_key
    watcher = ModelCheckpoint(dirpath=tmp_path, monitor="pa/mean_kl", mode="min")
    fit(TinyLitLM(tok), [cb, watcher], tmp_path, max_epochs=1,
        enable_checkpointing=True)
    assert [h.step for h in cb.history] == [9]


def test_importing_one_framework_never_imports_the_other():
    code = (
        "import sys\n"
        "import probattr_monitor.callbacks as c\n"
        "assert 'lightning' not in sys.modules and 'probattr_monitor.callbacks.hf' not in sys.modules\n"
        "from probattr_monitor.callbacks import ProbAttrCallback\n"
        "assert 'lightning' in sys.modules\n"
        "assert 'probattr_monitor.callbacks.hf' not in sys.modules and 'transformers.trainer' not in sys.modules\n"
        "assert 'wandb' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------- W&B


def test_wandb_and_files_draw_each_figure_once_and_both_hold_it(tok, probes, tmp_path, monkeypatch):
    import probattr_monitor.report.figures as figures

    drawn = []
    draw = figures.plot_entropy_vs_as

    def counting(table, path, **kw):
        drawn.append(Path(path))
        return draw(table, path, **kw)

    monkeypatch.setattr(figures, "plot_entropy_vs_as", counting)
    pl.seed_everything(0, verbose=False)
    wl = WandbLogger(save_dir=str(tmp_path), offline=True, project="probattr-test")
    cb = make_callback(probes, every_n_steps=4, wandb="auto", log_plots=True, log_dir=tmp_path / "files",
                       attribution_every=1)
    fit(TinyLitLM(tok), [cb], tmp_path, max_epochs=1, logger=[wl], log_every_n_steps=50)
    run_dir = Path(wl.experiment.dir).parent
    assert [type(s).__name__ for s in cb.sinks] == ["WandbSink", "FileSink"]
    wl.experiment.finish()
    steps = [h.step for h in cb.history]
    assert steps == [4, 8, 9]
    # once per scoring, into the report directory of the files; W&B logged that file
    assert drawn == [tmp_path / "files" / f"step-{s:08d}" / "entropy_vs_as.png" for s in steps]
    rows = [r for r in read_wandb_records(run_dir)["history"] if "probattr/plots/entropy_vs_as/_type" in r]
    assert [r["probattr/step"] for r in rows] == steps
    for row, step in zip(rows, steps):
        logged = (run_dir / "files" / row["probattr/plots/entropy_vs_as/path"]).read_bytes()
        assert logged == (tmp_path / "files" / f"step-{step:08d}" / "entropy_vs_as.png").read_bytes()


def test_wandb_logger_offline_run_dir_read_back(tok, probes, tmp_path):
    pl.seed_everything(0, verbose=False)
    wl = WandbLogger(save_dir=str(tmp_path), offline=True, project="probattr-test")
    csv_logger = CSVLogger(tmp_path, name="csv")
    cb = make_callback(probes, every_n_steps=4, wandb="auto", log_plots=True, max_rows_per_table=10,
                       attribution_every=1)  # token tables at every scoring
    fit(TinyLitLM(tok), [cb], tmp_path, max_epochs=1, logger=[wl, csv_logger], log_every_n_steps=50)
    run_dir = Path(wl.experiment.dir).parent
    assert [type(s).__name__ for s in cb.sinks] == ["WandbSink"]
    wl.experiment.finish()
    rec = read_wandb_records(run_dir)

    config = rec["config"]["probattr"]
    assert config["fingerprint"] == cb.monitor.probe_set.fingerprint
    assert config["probe_set"]["ids"] == ["p1", "p2", "p3"]
    assert config["scoring"] == json.loads(json.dumps(scoring_config().to_dict()))
    assert any(m["glob_name"] == "probattr/*" and m["step_metric"] == "probattr/step" for m in rec["metrics"])

    steps = [h.step for h in cb.history]
    assert steps == [4, 8, 9]
    scalar_rows = [r for r in rec["history"] if GATE in r]
    table_rows = [r for r in rec["history"] if "probattr/probes/_type" in r]
    # scalars: once per scoring, through Lightning's WandbLogger, with the step key in the same row
    assert [r["probattr/step"] for r in scalar_rows] == steps
    for row, h in zip(scalar_rows, cb.history):
        assert row[GATE] == pytest.approx(h.value, rel=1e-6)
        assert "trainer/global_step" in row
    # tables and images: once per scoring, from the sink, against the same step key
    assert [r["probattr/step"] for r in table_rows] == steps
    report = cb.last_report
    last = table_rows[-1]
    parts = sorted(k[: -len("/_type")] for k in last if re.fullmatch(r"probattr/tokens_part\d+/_type", k))
    assert len(parts) == -(-len(report.table) // 10)
    assert sum(len(load_wandb_table(run_dir, last, k)["data"]) for k in parts) == len(report.table)
    assert last["probattr/plots/entropy_vs_as/_type"] == "image-file"
    assert (run_dir / "files" / last["probattr/plots/kl_vs_as/path"]).exists()
    # W&B's own step counter was never pushed (no step= argument): contiguous
    assert [r["_step"] for r in rec["history"]] == list(range(len(rec["history"])))
    # the CSV logger got the same scalars (every configured logger)
    csv_steps = [float(r["probattr/step"]) for r in csv_rows_of(csv_logger) if r.get(GATE)]
    assert csv_steps == steps


def test_users_own_wandb_run_gets_scalars_from_the_sink(tok, probes, tmp_path):
    run = wandb.init(mode="offline", dir=str(tmp_path), project="probattr-own")
    pl.seed_everything(0, verbose=False)
    cb = make_callback(probes, wandb="auto", log_dir=tmp_path / "files")
    fit(TinyLitLM(tok), [cb], tmp_path, max_epochs=1)
    assert [type(s).__name__ for s in cb.sinks] == ["WandbSink", "FileSink"]
    run_dir = Path(run.dir).parent
    wandb.finish()
    rows = [r for r in read_wandb_records(run_dir)["history"] if "probattr/step" in r]
    assert [r["probattr/step"] for r in rows] == [9]  # one call: tables and scalars together
    assert rows[0][GATE] == pytest.approx(cb.history[0].value)
    assert rows[0]["probattr/tokens/_type"] == "table-file"
    assert [h["step"] for h in read_history(tmp_path / "files")] == [9]


def test_without_wandb_tables_go_to_the_log_dir(tok, probes, tmp_path):
    pl.seed_everything(0, verbose=False)
    cb = make_callback(probes, wandb="auto", log_plots=True)
    trainer = fit(TinyLitLM(tok), [cb], tmp_path, max_epochs=1, logger=CSVLogger(tmp_path, name="csv"))
    files = Path(trainer.log_dir) / "probattr"
    assert [type(s).__name__ for s in cb.sinks] == ["FileSink"] and cb.sinks[0].directory == files
    config = json.loads((files / "config.json").read_text())
    assert config["fingerprint"] == cb.monitor.probe_set.fingerprint and config["bootstrap"]["n_boot"] == 50
    assert {p.name for p in (files / "step-00000009").iterdir()} >= {"tokens.csv", "report.json", "metrics.json",
                                                                     "entropy_vs_as.png", "tokens_p1.html"}


# ----------------------------------------------------------------------------- DDP, two processes


def test_ddp_two_processes_same_metrics_tables_once(probes, tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "helpers.lit_ddp", str(tmp_path), probes],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    # 360 sentences, 2 ranks, batch 40: 5 steps per epoch; every_n_steps=4 plus each validation end
    steps = [4, 5, 8, 10]
    for prefix in ("probattr", "pa_full"):
        assert [s for s, _ in r0["history"][prefix]] == steps
        assert r0["history"][prefix] == r1["history"][prefix]  # every rank: the same values
        assert r0["failures"][prefix] == r1["failures"][prefix] == []
    assert r0["history"]["probattr"] == r0["history"]["pa_full"]  # sharded + gathered == every rank scoring all
    assert r0["seen"] == r1["seen"] and [s["step"] for s in r0["seen"]] == [5, 10]  # callback_metrics agree
    assert r0["best_model_score"] == r1["best_model_score"]
    # tables: rank 0 only, once per scoring
    assert r0["sinks"] == {"probattr": ["WandbSink", "FileSink"], "pa_full": ["FileSink"]}
    assert r1["sinks"] == {"probattr": [], "pa_full": []}
    assert r0["sink_steps"]["probattr"] == [steps, steps]
    assert [h["step"] for h in read_history(tmp_path / "files")] == steps
    assert sorted(p.name for p in (tmp_path / "files").glob("step-*")) == [f"step-{s:08d}" for s in steps]
    rec = read_wandb_records(Path(r0["wandb_dir"]))
    assert [r["probattr/step"] for r in rec["history"] if "probattr/probes/_type" in r] == steps
    assert [r["probattr/step"] for r in rec["history"] if "probattr/noise_rate" in r] == steps
    # sharded probes: ranks split the work; unsharded (FSDP/DeepSpeed mode): identical forwards on every rank
    f0, f1 = r0["forwards"], r1["forwards"]
    assert f0["pa_full"] == f1["pa_full"] and all(len(x["shapes"]) > 0 for x in f0["pa_full"])
    n0 = sum(len(x["shapes"]) for x in f0["probattr"])
    n1 = sum(len(x["shapes"]) for x in f1["probattr"])
    assert n0 + n1 == sum(len(x["shapes"]) for x in f0["pa_full"]) and n0 != n1
