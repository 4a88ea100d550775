"""Train a small GPT-style model from scratch with Lightning, gated on the probes' own loss.

What it shows:

* ``ProbAttrCallback`` scores an in-domain probe set at the end of every
  validation (the default schedule) and logs ``probattr/mean_surprisal_prefix``
  (the default gate), ``probattr/noise_rate`` and their companions through
  Lightning's own logging path;
* ``ModelCheckpoint(monitor="probattr/mean_surprisal_prefix", mode="min")`` keeps
  the checkpoints whose probes' own loss is lowest (docs/validation.md);
* W&B through Lightning's ``WandbLogger`` in offline mode (no account or server
  needed) receives the scalars, and at each scoring the per-token attribution
  table, the per-probe summary table and the figures; the run config records
  the probe-set fingerprint and the scoring settings. Without wandb (or with
  ``--no-wandb``) the tables and figures go to ``<out>/csv/version_0/probattr``.

Everything is generated here: a templated English corpus whose sentences have
learnable long-range dependencies (an animal's home and food, a job's
workplace, the weather's clothing), a word-level tokenizer trained on it with
the ``tokenizers`` library, and a 1.2M-parameter GPT-2 (6 layers, width 128).
On 2 CPU cores the default run takes a few minutes.

Run::

    python examples/lightning_train.py                   # W&B offline, ./runs/lightning
    python examples/lightning_train.py --epochs 2 --no-wandb
    wandb sync runs/lightning/wandb/offline-run-*        # later, to upload (optional)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Optional

import torch

# --------------------------------------------------------------------------- corpus

ANIMALS = {  # animal -> (home, food): the model must learn these to predict well
    "cat": ("house", "fish"), "dog": ("yard", "meat"), "cow": ("farm", "grass"), "bird": ("tree", "seeds"),
    "horse": ("stable", "hay"), "bee": ("hive", "nectar"), "owl": ("barn", "mice"), "frog": ("pond", "flies"),
}
JOBS = {"teacher": "school", "baker": "bakery", "doctor": "hospital", "farmer": "field", "pilot": "airport"}
WEATHER = {"rainy": "umbrella", "cold": "coat", "sunny": "hat", "windy": "scarf"}
NAMES = ["anna", "ben", "clara", "david", "emma", "felix", "grace", "henry"]
ADJECTIVES = ["small", "big", "old", "young", "hungry", "quiet", "brown", "lazy"]
TIMES = ["at dawn", "at noon", "at night", "in the evening"]

TEMPLATES = [
    lambda r, a: f"the {a} lives in the {ANIMALS[a][0]} and eats {ANIMALS[a][1]} .",
    lambda r, a: f"every morning the {r.choice(ADJECTIVES)} {a} goes back to the {ANIMALS[a][0]} .",
    lambda r, a: f"{r.choice(NAMES)} gave the {a} some {ANIMALS[a][1]} {r.choice(TIMES)} .",
    lambda r, a: f"{r.choice(NAMES)} saw a {r.choice(ADJECTIVES)} {a} near the {ANIMALS[a][0]} .",
    lambda r, a: (lambda j: f"{r.choice(NAMES)} is a {j} and works at the {JOBS[j]} .")(r.choice(list(JOBS))),
    lambda r, a: (lambda w: f"it was {w} , so {r.choice(NAMES)} took a {WEATHER[w]} .")(r.choice(list(WEATHER))),
]

#: Held-out style prompts in the corpus' language; responses are the model's own greedy continuations.
PROBES = [
    {"id": "home-owl", "prompt": "the owl lives in the", "tags": ["animal"]},
    {"id": "food-cow", "prompt": "the cow lives in the farm and eats", "tags": ["animal"]},
    {"id": "feed-bee", "prompt": "grace gave the bee some", "tags": ["animal"]},
    {"id": "back-frog", "prompt": "every morning the lazy frog goes back to the", "tags": ["animal"]},
    {"id": "job-pilot", "prompt": "henry is a pilot and works at the", "tags": ["job"]},
    {"id": "weather-rain", "prompt": "it was rainy , so emma took a", "tags": ["weather"]},
]


def make_corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    animals = list(ANIMALS)
    return [rng.choice(TEMPLATES)(rng, rng.choice(animals)) for _ in range(n)]


def train_tokenizer(sentences: list[str]):
    """A word-level tokenizer trained on the corpus with the ``tokenizers`` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["<bos>", "<eos>", "<pad>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def encode(sentences: list[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """``<bos> sentence <eos>``, right-padded to the longest row (no wasted compute on padding)."""
    rows = [[tokenizer.bos_token_id] + tokenizer(s, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for s in sentences]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r[:length])
    return ids, (ids != tokenizer.pad_token_id).long()


# --------------------------------------------------------------------------- model


def make_module_class():
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import GPT2Config, GPT2LMHeadModel

    class SmallGPT(pl.LightningModule):
        """GPT-2 (6 layers, width 128, ~1.2M parameters) trained from scratch on the corpus."""

        def __init__(self, tokenizer, train: tuple, val: tuple, *, lr: float = 3e-3, batch_size: int = 64,
                     n_layer: int = 6, n_embd: int = 128):
            super().__init__()
            self.tokenizer = tokenizer
            cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=4,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
            self.model = GPT2LMHeadModel(cfg)
            self.train_data, self.val_data = train, val
            self.lr, self.batch_size = lr, batch_size

        def forward(self, input_ids, **kwargs):  # the callback scores the module itself: it returns `.logits`
            return self.model(input_ids=input_ids, **kwargs)

        def _loss(self, batch):
            ids, mask = batch
            return self.model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss

        def training_step(self, batch, batch_idx):
            loss = self._loss(batch)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self._loss(batch), prog_bar=True)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr,
                                                        total_steps=self.trainer.estimated_stepping_batches)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def train_dataloader(self):
            return DataLoader(TensorDataset(*self.train_data), batch_size=self.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(0))

        def val_dataloader(self):
            return DataLoader(TensorDataset(*self.val_data), batch_size=256)

    return SmallGPT


def build(out: Path, *, n_train: int = 6_000, n_val: int = 512, seed: int = 0, **module_kw: Any):
    """Corpus, tokenizer, probe file and LightningModule (shared with benchmarks/callback_overhead.py)."""
    import lightning.pytorch as pl

    out.mkdir(parents=True, exist_ok=True)
    sentences = make_corpus(n_train + n_val, seed=seed)
    tokenizer = train_tokenizer(sentences)
    probes = out / "probes.jsonl"
    probes.write_text("".join(json.dumps(p) + "\n" for p in PROBES), encoding="utf-8")
    pl.seed_everything(seed, verbose=False)
    module = make_module_class()(tokenizer, encode(sentences[:n_train], tokenizer),
                                 encode(sentences[n_train:], tokenizer), **module_kw)
    return module, tokenizer, probes


def scoring_config():
    from probattr_monitor.scoring import ScoringConfig

    # exact over the whole (small) vocabulary; short greedy responses; a modest bootstrap
    return ScoringConfig(candidates="all", max_new_tokens=4, n_boot=200)


def make_callback(probes: Path, *, every_n_steps: Optional[int] = None, log_dir: Optional[Path] = None,
                  wandb: Any = "auto", attribution_every: Any = "auto"):
    from probattr_monitor.callbacks import ProbAttrCallback

    # default schedule: at the end of every validation (once per epoch here); the gate at every scoring,
    # the attribution tables at the first and every 10th ("auto", docs/design.md section 10)
    return ProbAttrCallback(probes=str(probes), scoring=scoring_config(), every_n_steps=every_n_steps,
                            wandb=wandb, log_dir=log_dir, attribution_every=attribution_every)


# --------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> dict:
    from probattr_monitor.report import DEFAULT_GATE_METRIC

    gate = f"probattr/{DEFAULT_GATE_METRIC}"  # the default gate: the probes' own loss (docs/validation.md)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lightning"), help="run directory")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=6_000, help="training sentences (94 steps per epoch)")
    parser.add_argument("--every-n-steps", type=int, default=None, help="also score every N optimizer steps")
    parser.add_argument("--no-wandb", action="store_true", help="CSV logger and files instead of W&B offline")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    module, tokenizer, probes = build(args.out, n_train=args.n_train)
    n_params = sum(p.numel() for p in module.model.parameters())
    print(f"corpus: {args.n_train} sentences, vocabulary {len(tokenizer)} words; "
          f"model: {n_params / 1e6:.2f}M parameters")

    loggers: list = [CSVLogger(args.out, name="csv")]
    use_wandb = not args.no_wandb
    if use_wandb:
        try:
            from lightning.pytorch.loggers import WandbLogger

            os.environ.setdefault("WANDB_MODE", "offline")
            loggers.insert(0, WandbLogger(project="probattr-lightning-example", save_dir=str(args.out), offline=True))
        except (ImportError, ModuleNotFoundError):
            print("wandb is not installed: tables and figures go to files")
            use_wandb = False

    probattr = make_callback(probes, every_n_steps=args.every_n_steps, wandb="auto" if use_wandb else False)
    best = ModelCheckpoint(dirpath=args.out / "checkpoints", monitor=gate, mode="min",
                           save_top_k=2, save_last=True, filename="{epoch}-{step}")
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=loggers,
                         callbacks=[probattr, best], log_every_n_steps=20, enable_model_summary=False,
                         enable_progress_bar=False, default_root_dir=args.out)
    started = time.perf_counter()
    trainer.fit(module)
    total = time.perf_counter() - started

    print(f"\nstep   {DEFAULT_GATE_METRIC}  (95% interval)   noise_rate  (95% interval)   probes  scoring")
    for h in probattr.history:
        s = h.scalars
        noise = (f"{s['probattr/noise_rate']:10.3f}  ({s['probattr/noise_rate_ci_low']:.3f}, "
                 f"{s['probattr/noise_rate_ci_high']:.3f})" if "probattr/noise_rate" in s else f"{'-':>26}")
        print(f"{h.step:>5}  {h.value:21.3f}  ({s[gate + '_ci_low']:.3f}, {s[gate + '_ci_high']:.3f})  "
              f"{noise}   {h.n_scored:>6}  {h.scope}")
    attributed = probattr.monitor.last_attribution_report  # gate scorings generate no response
    responses = attributed.meta.get("responses", {}) if attributed is not None else {}
    if responses:
        print(f"responses at step {attributed.step} (the last attribution scoring):")
    for pid, text in responses.items():
        print(f"  {pid:>13}: {next(p['prompt'] for p in PROBES if p['id'] == pid)!r} -> {text!r}")
    spent = sum(t["score_s"] + t["log_s"] for t in probattr.timings)
    print(f"\nbest checkpoint by {gate}: {best.best_model_path} "
          f"({float(best.best_model_score):.3f}); last: {best.last_model_path}")
    complete = [h for h in probattr.history if h.complete]
    if complete and best.best_model_score is not None:
        chosen = min(complete, key=lambda h: h.value)
        print(f"why: ModelCheckpoint(monitor={gate!r}, mode='min') keeps the lowest complete scoring; "
              f"step {chosen.step} had {chosen.value:.3f} against "
              + ", ".join(f"{h.value:.3f} at step {h.step}" for h in complete if h is not chosen))
    print(f"CSV metrics: {loggers[-1].log_dir}")
    print(f"training took {total:.0f} s, of which the callback {spent:.1f} s ({100 * spent / total:.1f}%) "
          f"in {len(probattr.timings)} scorings")
    if use_wandb:
        run_dir = Path(loggers[0].experiment.dir).parent
        loggers[0].experiment.finish()
        print(f"W&B offline run: {run_dir}  (upload later with `wandb sync {run_dir}`)")
    else:
        print(f"tables and figures: {probattr.sinks[0].directory if probattr.sinks else '-'}")
    return {"history": [(h.step, h.value) for h in probattr.history], "best": best.best_model_path,
            "seconds": total, "callback_seconds": spent}


if __name__ == "__main__":
    main()
