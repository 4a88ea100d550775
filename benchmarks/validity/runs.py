"""Training runs of the signal-validity study, through the product.

Each run trains a small GPT-2 from scratch (or fine-tunes one) with Lightning and
the real :class:`~probattr_monitor.callbacks.ProbAttrCallback` attached, at the
monitor's default scoring (``ScoringConfig()``: 20-token greedy responses,
``Budget()``, which is exact on the synthetic languages' 41-42-token
vocabularies and budgeted on the english regime's 1,000 ids: 32 exact plus 32
sampled candidates per position), on a probe set sampled from the *general*
language. At every scoring a second callback measures what the
monitor cannot see: the checkpoint's true excess loss on a large held-out sample
of the general language (its cross-entropy minus the language's own, per
token, paired on the same sample) and its validation loss on held-out data of
its training distribution.

Regimes (:data:`REGIMES`):

``scratch``
    fresh samples of the language, from initialisation to convergence;
``overfit``
    a small fixed training set for many epochs;
``forget``
    the converged ``scratch`` model of the same seed fine-tuned on a narrow
    sub-language (validation loss on that data keeps falling while the general
    language is forgotten);
``diverge``
    a ``scratch`` run whose learning rate spikes for a while mid-run;
``english``
    real English text (:mod:`benchmarks.validity.english`) from scratch, with a
    byte-level BPE tokenizer trained on the training paragraphs only and probes
    cut from held-out paragraphs. No true distribution is known, so the ground
    truth is the cross-entropy per token on a large held-out sample (disjoint
    from the probes' and the validation paragraphs); ``excess_loss`` is NaN.

A run writes ``record.json`` (its checkpoints' ground truth) and, through the
callback's file sink, one report per scoring; a finished run is not re-run.
With ``keep_checkpoints=True`` it also saves the weights of every scored
checkpoint (``checkpoints/step-XXXXXXXX.pt``, :func:`checkpoint_path`), so
that they can be scored again with other settings
(:mod:`benchmarks.validity.response_length`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from benchmarks.validity import english
from benchmarks.validity.languages import Language, narrow_language
from benchmarks.validity.truth import word_tokenizer
from probattr_monitor.io_utils import atomic_write, atomic_write_text
from probattr_monitor.monitor.schedule import Schedule
from probattr_monitor.probes import ProbeSet

logger = logging.getLogger(__name__)

REGIMES = ("scratch", "overfit", "forget", "diverge", "english")

#: Length of training, validation and held-out sequences (BOS included).
SEQ_LEN = 48


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study."""

    language: str
    regime: str
    seed: int
    steps: int
    score_at: tuple
    num_probes: int = 40
    prompt_tokens: int = 12
    train_sequences: int = 0  # 0: a fresh sample large enough for every step
    lr: float = 3e-3
    batch_size: int = 32
    spike: tuple = ()  # (first step, last step, factor) of a learning-rate spike
    width: int = 64
    layers: int = 2
    vocab_size: int = 0  # english: the BPE vocabulary (0 for the synthetic languages' own)
    train_stride: int = 0  # english: tokens between training windows (0: SEQ_LEN - 1, no overlap)

    @property
    def name(self) -> str:
        return f"{self.language}.{self.regime}.s{self.seed}"


@dataclass
class TrainingData:
    """What a run trains and is measured on (token id tensors ``[N, SEQ_LEN]`` starting with id 0)."""

    tokenizer: Any
    vocab_size: int
    train: torch.Tensor
    val: torch.Tensor  # held-out data of the training distribution
    held_out: torch.Tensor  # the ground truth's sample
    true_seq_nll: Optional[torch.Tensor]  # per held-out sequence; None where no true distribution is known
    probes: ProbeSet


@dataclass
class Checkpoint:
    """Ground truth of one scored checkpoint."""

    step: int
    excess_loss: float  # nats/token on the general held-out sample
    excess_loss_se: float
    model_nll: float  # the ground truth of the english regime (its cross-entropy on the held-out sample)
    val_loss: float  # on held-out data of the training distribution
    train_loss: float
    model_nll_se: float = float("nan")


@dataclass
class RunRecord:
    spec: dict
    true_nll: float
    checkpoints: list = field(default_factory=list)
    seconds: float = 0.0


class StepListSchedule(Schedule):
    """Score after the optimizer steps listed in ``steps`` (a study-only schedule)."""

    def __init__(self, steps):
        super().__init__(every_n_steps=1, on_validation_end=False)
        object.__setattr__(self, "steps", frozenset(int(s) for s in steps))

    def due(self, event, step, epoch=None):
        if event == "train_step":
            return int(step) in self.steps
        return False


def probe_set_for(language: Language, num_probes: int, prompt_tokens: int, seed: int) -> ProbeSet:
    """``num_probes`` prompts of ``prompt_tokens`` tokens sampled from ``language`` (seeded)."""
    ids = language.sample(num_probes * 2, prompt_tokens + 1, seed=10_000 + seed)
    ids = [row for row in ids if (row[1:] != 0).all()][:num_probes]
    records = [{"id": f"{language.name}-{i:02d}", "prompt": language.decode(row)} for i, row in enumerate(ids)]
    return ProbeSet.from_records(records, name=f"{language.name}-probes-s{seed}")


def synthetic_data(spec: RunSpec, language: Language) -> TrainingData:
    """Samples of ``language`` (of its narrow sub-language for ``forget``) and its probes."""
    train_lang = narrow_language(language) if spec.regime == "forget" else language
    held_out = torch.as_tensor(language.sample(1000, SEQ_LEN, seed=900_000 + spec.seed))
    n_train = spec.train_sequences or spec.steps * spec.batch_size
    return TrainingData(
        tokenizer=word_tokenizer(language), vocab_size=language.vocab_size,
        train=torch.as_tensor(train_lang.sample(n_train, SEQ_LEN, seed=100 + spec.seed)),
        val=torch.as_tensor(train_lang.sample(400, SEQ_LEN, seed=200_000 + spec.seed)),
        held_out=held_out, true_seq_nll=language.sequence_nll(held_out).mean(dim=1),
        probes=probe_set_for(language, spec.num_probes, spec.prompt_tokens, spec.seed))


def english_data(spec: RunSpec, corpus: Optional["english.EnglishCorpus"] = None) -> TrainingData:
    """The English regime's data: tokenizer from the training paragraphs, everything else held out.

    The held-out paragraphs are split by a second hash into the probes' part
    (``spec.num_probes`` prompts of about ``spec.prompt_tokens`` tokens, seeded),
    the validation part and the truth part (the large held-out sample); the
    training windows overlap by ``SEQ_LEN - 1 - spec.train_stride`` tokens.
    """
    corpus = corpus if corpus is not None else english.build_corpus()
    tokenizer = english.train_tokenizer(corpus.train, spec.vocab_size or 1000)
    probe_part, val_part, truth_part = english.split_held_out(corpus.held_out)
    body = SEQ_LEN - 1
    prompts = english.probe_prompts(tokenizer, probe_part, spec.num_probes, spec.prompt_tokens, spec.seed)
    probes = ProbeSet.from_records([{"id": f"english-{i:02d}", "prompt": p} for i, p in enumerate(prompts)],
                                   name=f"english-probes-s{spec.seed}")
    return TrainingData(
        tokenizer=tokenizer, vocab_size=len(tokenizer),
        train=english.windows(english.token_stream(tokenizer, corpus.train), SEQ_LEN, spec.train_stride or body),
        val=english.windows(english.token_stream(tokenizer, val_part), SEQ_LEN, body),
        held_out=english.windows(english.token_stream(tokenizer, truth_part), SEQ_LEN, body),
        true_seq_nll=None, probes=probes)


def _tiny_gpt2(vocab: int, spec: RunSpec):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(spec.seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=spec.width, n_layer=spec.layers, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


@torch.no_grad()
def mean_nll(model: torch.nn.Module, ids: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """Per-sequence mean next-token NLL of ``model`` on ``ids`` (float64, in eval mode, mode restored)."""
    was = model.training
    model.eval()
    out = []
    for start in range(0, len(ids), batch):
        x = ids[start:start + batch]
        logits = model(input_ids=x).logits.double()
        lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, x[:, 1:].unsqueeze(-1)).squeeze(-1)
        out.append(-lp.mean(dim=1))
    model.train(was)
    return torch.cat(out)


def checkpoint_path(out_dir: Path, step: int) -> Path:
    """Where :func:`run_one` with ``keep_checkpoints=True`` saves the weights scored at ``step``."""
    return Path(out_dir) / "checkpoints" / f"step-{int(step):08d}.pt"


def checkpoint_model(spec: RunSpec, vocab_size: int, path: Path) -> torch.nn.Module:
    """The run's GPT-2 with the weights saved at ``path``, in eval mode (the global RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        model = _tiny_gpt2(vocab_size, spec)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def run_one(spec: RunSpec, language: Optional[Language], out_dir: Path, *,
            pretrained: Optional[Path] = None, keep_checkpoints: bool = False) -> RunRecord:
    """Train one run with the callback attached; return (and write) its record.

    Parameters
    ----------
    spec : RunSpec
        The run.
    language : Language or None
        The synthetic language of the run (None for ``english``).
    out_dir : Path
        The run's directory: ``record.json``, ``reports/``, ``final.pt``.
    pretrained : Path, optional
        Weights to start from (the ``forget`` regime).
    keep_checkpoints : bool
        Also save a CPU copy of the weights at every scored step, at
        :func:`checkpoint_path`, taken at the same point as the step's ground
        truth (after its optimizer step). Off by default; the record and the
        reports are the same either way.
    """
    import time

    import lightning.pytorch as pl

    from probattr_monitor.callbacks import ProbAttrCallback
    from probattr_monitor.monitor import ProbAttrMonitor

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = english_data(spec) if spec.regime == "english" else synthetic_data(spec, language)
    held_out, true_seq_nll, train, val = data.held_out, data.true_seq_nll, data.train, data.val

    model = _tiny_gpt2(data.vocab_size, spec)
    if pretrained is not None:
        model.load_state_dict(torch.load(pretrained, weights_only=True))

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.last_loss = float("nan")

        def training_step(self, batch, _):
            x = batch[0]
            loss = self.model(input_ids=x, labels=x).loss
            self.last_loss = float(loss.detach())
            return loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=spec.lr, weight_decay=0.0)
            if not spec.spike:
                return opt
            first, last, factor = spec.spike
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: factor if first <= s <= last else 1.0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    record = RunRecord(spec=asdict(spec),
                       true_nll=float("nan") if true_seq_nll is None else float(true_seq_nll.mean()))

    class Truth(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = trainer.global_step
            if step not in spec.score_at:
                return
            nll = mean_nll(pl_module.model, held_out)
            diff = (nll - true_seq_nll).numpy() if true_seq_nll is not None else np.full(len(nll), np.nan)
            record.checkpoints.append(asdict(Checkpoint(
                step=int(step), excess_loss=float(diff.mean()), excess_loss_se=_se(diff),
                model_nll=float(nll.mean()), val_loss=float(mean_nll(pl_module.model, val).mean()),
                train_loss=pl_module.last_loss, model_nll_se=_se(nll.numpy()))))
            if keep_checkpoints:
                state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
                atomic_write(checkpoint_path(out_dir, step), lambda p: torch.save(state, p))

    # every scoring attributes: the study compares every metric, not only the gate's, with the truth
    monitor = ProbAttrMonitor(data.probes, tokenizer=data.tokenizer, schedule=StepListSchedule(spec.score_at),
                              attribution_every=1)
    callback = ProbAttrCallback(monitor, wandb=False, log_dir=out_dir / "reports", log_plots=False,
                                file_formats=("json",))
    generator = torch.Generator().manual_seed(spec.seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train), batch_size=spec.batch_size,
                                         shuffle=True, generator=generator, drop_last=True)
    torch.manual_seed(spec.seed)
    trainer = pl.Trainer(max_steps=spec.steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[callback, Truth()], deterministic=True)
    trainer.fit(Module(), loader)
    torch.save(model.state_dict(), out_dir / "final.pt")
    record.seconds = time.perf_counter() - started
    atomic_write_text(out_dir / "record.json", json.dumps(asdict(record), indent=1))
    return record


def _se(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / math.sqrt(len(x)))


def load_record(out_dir: Path) -> Optional[RunRecord]:
    path = out_dir / "record.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return RunRecord(**data)
