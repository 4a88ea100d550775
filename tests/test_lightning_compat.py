"""Every Lightning internal the Lightning callback reads, checked against the installed Lightning.

One test per function of ``probattr_monitor.callbacks._lightning_compat``, each
with a real ``Trainer`` / ``ModelCheckpoint`` / ``EarlyStopping``: a Lightning
release that renames or re-types one of the private attributes fails the test
named after it (the compat functions fall back to defaults at run time, so the
callback itself would only degrade quietly).
"""

from __future__ import annotations

import datetime

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402

from probattr_monitor.callbacks import _lightning_compat as compat  # noqa: E402


class Regression(pl.LightningModule):
    """A 2-parameter linear regression: 4 optimizer steps per epoch, a validation loop logging ``val_loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 1, generator=gen)
        self.y = 2 * self.x

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16)


class Recorder(Logger):
    """A logger that keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict, int]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.calls.append((dict(metrics), step))


class AtHook(Callback):
    """Calls ``fn(trainer)`` in ``hook`` during ``fit`` and keeps the results."""

    def __init__(self, hook: str, fn) -> None:
        self.seen: list = []
        setattr(self, hook, lambda trainer, *args: self.seen.append(fn(trainer)))


def fit(tmp_path, callbacks, **kw) -> "pl.Trainer":
    kw = {"max_epochs": 1 if "max_steps" not in kw else 10, "logger": False, "enable_checkpointing": any(isinstance(c, ModelCheckpoint)
                                                                         for c in callbacks),
          "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
          "accelerator": "cpu", "devices": 1, "default_root_dir": tmp_path, **kw}
    trainer = pl.Trainer(callbacks=callbacks, **kw)
    trainer.fit(Regression())
    return trainer


def test_checkpoint_every_n_train_steps(tmp_path):
    steps = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3)
    fit(tmp_path, [steps], max_steps=3)
    assert compat.checkpoint_every_n_train_steps(steps) == 3
    assert compat.checkpoint_every_n_train_steps(ModelCheckpoint(dirpath=tmp_path)) == 0


def test_checkpoint_every_n_epochs(tmp_path):
    epochs = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=2)
    fit(tmp_path, [epochs], max_epochs=2)
    assert compat.checkpoint_every_n_epochs(epochs) == 2
    assert compat.checkpoint_every_n_epochs(ModelCheckpoint(dirpath=tmp_path)) == 1  # Lightning's default
    assert compat.checkpoint_every_n_epochs(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3)) == 0


def test_checkpoint_train_time_interval(tmp_path):
    interval = datetime.timedelta(hours=1)
    timed = ModelCheckpoint(dirpath=tmp_path, train_time_interval=interval)
    fit(tmp_path, [timed], max_steps=2)
    assert compat.checkpoint_train_time_interval(timed) == interval
    assert compat.checkpoint_train_time_interval(ModelCheckpoint(dirpath=tmp_path)) is None


def test_checkpoint_last_saved_step(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2)
    assert compat.checkpoint_last_saved_step(ckpt) == 0  # nothing saved yet
    trainer = fit(tmp_path, [ckpt], max_steps=6)
    assert trainer.global_step == 6
    assert compat.checkpoint_last_saved_step(ckpt) == 6


@pytest.mark.parametrize("val_check_interval, expected", [(1.0, True), (0.5, False)])
def test_checkpoint_saves_on_train_epoch_end(tmp_path, val_check_interval, expected):
    ckpt = ModelCheckpoint(dirpath=tmp_path)
    probe = AtHook("on_train_epoch_end", lambda trainer: compat.checkpoint_saves_on_train_epoch_end(ckpt, trainer))
    fit(tmp_path, [ckpt, probe], val_check_interval=val_check_interval)
    assert probe.seen == [expected]
    forced = ModelCheckpoint(dirpath=tmp_path, save_on_train_epoch_end=not expected)
    assert compat.checkpoint_saves_on_train_epoch_end(forced, None) is (not expected)


@pytest.mark.parametrize("val_check_interval, expected", [(1.0, True), (0.5, False)])
def test_early_stopping_checks_on_train_epoch_end(tmp_path, val_check_interval, expected):
    es = EarlyStopping(monitor="val_loss", patience=5)  # check_on_train_epoch_end resolved in setup
    fit(tmp_path, [es], val_check_interval=val_check_interval)
    assert compat.early_stopping_checks_on_train_epoch_end(es) is expected
    explicit = EarlyStopping(monitor="val_loss", check_on_train_epoch_end=not expected)
    assert compat.early_stopping_checks_on_train_epoch_end(explicit) is (not expected)


def test_batches_that_stepped(tmp_path):
    probe = AtHook("on_train_batch_end", lambda trainer: (trainer.global_step, compat.batches_that_stepped(trainer)))
    trainer = fit(tmp_path, [probe], max_steps=6)  # two epochs of 4 batches
    # in on_train_batch_end the optimizer has stepped but the logging step is not counted yet
    assert probe.seen == [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 5)]
    assert compat.batches_that_stepped(trainer) == trainer.global_step == 6


def test_log_metrics_now(tmp_path):
    recorder = Recorder()

    def send(trainer):
        if trainer.global_step == 2:
            compat.log_metrics_now(trainer, {"probe/value": 1.5})
        return trainer.global_step

    trainer = fit(tmp_path, [AtHook("on_train_batch_end", send)], logger=recorder, log_every_n_steps=50,
                  max_steps=4)
    sent = [(metrics, step) for metrics, step in recorder.calls if "probe/value" in metrics]
    # at once, at the step Lightning's own logging uses in this hook (batches_that_stepped), with `epoch`
    assert sent == [({"probe/value": 1.5, "epoch": 0}, 1)]
    assert trainer.logged_metrics["probe/value"] == 1.5


def test_generate_state_key():
    class Mine(Callback):
        pass

    key = compat.generate_state_key(Mine(), prefix="pa", probes="abc")
    assert key == Mine.__qualname__ + "{'prefix': 'pa', 'probes': 'abc'}"
