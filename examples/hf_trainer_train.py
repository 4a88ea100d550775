"""Train a small GPT-style model from scratch with the HF Trainer, gated on the probes' own loss.

What it shows:

* ``ProbAttrTrainerCallback`` scores an in-domain probe set at every evaluation
  and injects ``eval_probattr_mean_surprisal_prefix`` (and every other metric)
  into the evaluation metrics;
* ``metric_for_best_model="probattr_mean_surprisal_prefix"`` (with
  ``greater_is_better=False``) and ``load_best_model_at_end=True`` keep the
  checkpoint whose probes' own loss is lowest (docs/validation.md), and ``EarlyStoppingCallback`` stops when it stops
  improving;
* W&B (``report_to=["wandb"]``, offline: no account or server needed) gets the
  scalars against ``probattr/step``, the per-token and per-probe tables and the
  figures at each scoring.

Everything is generated here: a templated English corpus, a word-level
tokenizer trained on it with the ``tokenizers`` library, a 1.26M-parameter
GPT-2 (4 layers, width 160). On 2 CPU cores it finishes in a few minutes.

Run::

    python examples/hf_trainer_train.py                       # W&B offline, ./runs/hf_trainer
    python examples/hf_trainer_train.py --max-steps 200 --no-wandb
    wandb sync runs/hf_trainer/wandb/offline-run-*            # later, to upload (optional)
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _trainer_common import finish_wandb, prepare, trainer_arguments  # noqa: E402  (options, offline W&B)

# --------------------------------------------------------------------------- corpus

NAMES = ["anna", "ben", "clara", "daniel", "emma", "felix", "grace", "henry", "maria", "tom"]
ANIMALS = ["cat", "dog", "bird", "horse", "rabbit", "fox"]
FOODS = ["bread", "soup", "apples", "cheese", "rice", "cake", "tea", "coffee"]
PLACES = ["the park", "the market", "the river", "the library", "the garden", "the station", "the beach", "school"]
TIMES = ["in the morning", "in the evening", "on monday", "on sunday", "after lunch", "before dinner", "at night"]
WEATHER = [("rainy", "an umbrella"), ("cold", "a warm coat"), ("sunny", "a hat"), ("windy", "a scarf")]
JOBS = [("teacher", "school"), ("baker", "the bakery"), ("doctor", "the hospital"), ("farmer", "the farm")]
FEELINGS = [("tired", "went to bed early"), ("hungry", "made some soup"), ("happy", "sang a song"),
            ("bored", "read a book")]

TEMPLATES = [
    lambda r: f"{r.choice(NAMES)} walked to {r.choice(PLACES)} {r.choice(TIMES)} .",
    lambda r: f"{r.choice(NAMES)} and {r.choice(NAMES)} ate {r.choice(FOODS)} at {r.choice(PLACES)} .",
    lambda r: "the {0} saw a {1} near {2} and ran away .".format(r.choice(ANIMALS), r.choice(ANIMALS),
                                                                 r.choice(PLACES)),
    lambda r: (lambda w: f"it was {w[0]} , so {r.choice(NAMES)} took {w[1]} .")(r.choice(WEATHER)),
    lambda r: (lambda j: f"{r.choice(NAMES)} is a {j[0]} and works at {j[1]} every day .")(r.choice(JOBS)),
    lambda r: (lambda f: f"{r.choice(NAMES)} was {f[0]} , so she {f[1]} .")(r.choice(FEELINGS)),
    lambda r: f"{r.choice(NAMES)} bought {r.choice(FOODS)} and {r.choice(FOODS)} at the market {r.choice(TIMES)} .",
    lambda r: f"every day the {r.choice(ANIMALS)} waits for {r.choice(NAMES)} at {r.choice(PLACES)} .",
]

#: In-domain probes: prompts whose continuation the corpus makes predictable.
PROBES = [
    {"id": "weather-rain", "prompt": "it was rainy , so anna took", "tags": ["cause"]},
    {"id": "weather-cold", "prompt": "it was cold , so tom took", "tags": ["cause"]},
    {"id": "job-baker", "prompt": "clara is a baker and works at", "tags": ["world"]},
    {"id": "job-doctor", "prompt": "henry is a doctor and works at", "tags": ["world"]},
    {"id": "feeling", "prompt": "emma was hungry , so she", "tags": ["cause"]},
    {"id": "animal", "prompt": "the fox saw a rabbit near the river and", "tags": ["narrative"]},
    {"id": "market", "prompt": "ben bought bread and cheese at the market", "tags": ["narrative"]},
    {"id": "walk", "prompt": "maria walked to the library", "tags": ["narrative"]},
]


def make_corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(TEMPLATES)(rng) for _ in range(n)]


def make_tokenizer(texts: list[str]):
    """Word-level tokenizer trained on ``texts`` (the vocabulary is every word of the templates)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[BOS]", "[EOS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="[BOS]", eos_token="[EOS]")


class Blocks(torch.utils.data.Dataset):
    """Sentences joined by EOS and cut into fixed-length blocks for causal LM training."""

    def __init__(self, tokenizer, texts: list[str], block: int) -> None:
        ids: list[int] = []
        for t in texts:
            ids += [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"]
            ids.append(tokenizer.eos_token_id)
        n = len(ids) // block
        self.data = torch.tensor(ids[: n * block]).view(n, block)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        x = self.data[i]
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}


# --------------------------------------------------------------------------- model and Trainer

BLOCK = 64


def build(out: Path, seed: int = 0) -> tuple:
    """Corpus, tokenizer, datasets, the model and the probe file (shared with benchmarks/callback_overhead.py).

    Returns ``(model, tokenizer, train, val, probes_path)``; ``probes_path`` is
    the in-domain probes above, written to ``out/probes.jsonl``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, set_seed

    set_seed(seed)
    train_texts = make_corpus(20_000, seed=seed)
    eval_texts = make_corpus(500, seed=seed + 1)
    tokenizer = make_tokenizer(train_texts)
    train, val = Blocks(tokenizer, train_texts, BLOCK), Blocks(tokenizer, eval_texts, BLOCK)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=BLOCK, n_embd=160, n_layer=4, n_head=4,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    probes = out / "probes.jsonl"
    probes.write_text("".join(json.dumps(p) + "\n" for p in PROBES), encoding="utf-8")
    return model, tokenizer, train, val, probes


def make_callback(probes: Path | str, wandb: object = "auto", attribution_every: object = "auto"):
    """The probattr callback as this example attaches it (default schedule: at every evaluation).

    The gate at every evaluation; the attribution tables at the first and every 10th ("auto",
    docs/design.md section 10).
    """
    from probattr_monitor.callbacks import ProbAttrTrainerCallback
    from probattr_monitor.scoring import ScoringConfig

    # exact attribution over the whole vocabulary; short greedy responses
    return ProbAttrTrainerCallback(probes=str(probes), scoring=ScoringConfig(candidates="all", max_new_tokens=6,
                                                                              n_boot=200), wandb=wandb,
                                   attribution_every=attribution_every)


def training_arguments(out: Path, *, max_steps: int, eval_steps: int, batch_size: int, seed: int, use_wandb: bool,
                       gate: bool = True):
    """The example's ``TrainingArguments``; ``gate=False`` keeps every checkpoint decision off the probattr metric."""
    from transformers import TrainingArguments

    from probattr_monitor.report import DEFAULT_GATE_METRIC

    gating = {"load_best_model_at_end": True,
              "metric_for_best_model": f"probattr_{DEFAULT_GATE_METRIC}",  # HF reads eval_probattr_<metric>
              "greater_is_better": False} if gate else {}  # lower is better (HF would default to True)
    return TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, max_steps // 20),
        weight_decay=0.01,
        logging_steps=max(1, eval_steps // 2),
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=3,
        report_to=["wandb"] if use_wandb else [],
        run_name="probattr-hf-example",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=seed,
        disable_tqdm=True,
        **gating,
    )


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = trainer_arguments(__doc__, output_dir="runs/hf_trainer", max_steps=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patience", type=int, default=3, help="EarlyStoppingCallback patience (evaluations)")
    ap.add_argument("--probes", default=None, help="probe set (name or file); default: the in-domain probes above")
    args = ap.parse_args(argv)
    out, use_wandb = prepare(args, wandb_project="probattr-hf-example")

    from transformers import EarlyStoppingCallback, Trainer

    from probattr_monitor.report import DEFAULT_GATE_METRIC

    model, tokenizer, train, val, probes = build(out, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    monitor_cb = make_callback(args.probes or probes)
    trainer = Trainer(
        model=model,
        args=training_arguments(out, max_steps=args.max_steps, eval_steps=args.eval_steps,
                                batch_size=args.batch_size, seed=args.seed, use_wandb=use_wandb),
        train_dataset=train,
        eval_dataset=val,
        processing_class=tokenizer,
        # the probattr callback first: EarlyStoppingCallback reads the metric it injects
        callbacks=[monitor_cb, EarlyStoppingCallback(early_stopping_patience=args.patience)],
    )
    print(f"model: GPT-2 {n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}, "
          f"{len(train)} training blocks of {BLOCK} tokens; probes: {len(monitor_cb.monitor.probe_set)}")
    started = time.time()
    trainer.train()
    seconds = time.time() - started

    wandb_dir = finish_wandb(use_wandb)

    spent = sum(t["score_s"] + t["log_s"] for t in monitor_cb.timings)
    print(f"\ntrained {trainer.state.global_step} steps in {seconds:.0f} s, of which the callback {spent:.1f} s "
          f"({100 * spent / seconds:.1f}%) in {len(monitor_cb.timings)} scorings")
    evals = {r["step"]: r for r in trainer.state.log_history if "eval_loss" in r}
    gate = f"probattr/{DEFAULT_GATE_METRIC}"
    print(f"{'step':>6} {'eval_loss':>10} {DEFAULT_GATE_METRIC:>22} {'95% CI':>17} {'noise_rate':>11} "
          f"{'scoring s':>10}")
    for h in monitor_cb.history:
        s = h.scalars
        loss = evals.get(h.step, {}).get("eval_loss", float("nan"))
        noise = s.get("probattr/noise_rate")  # absent from a gate scoring
        print(f"{h.step:>6} {loss:>10.4f} {s[gate]:>22.4f} [{s[gate + '_ci_low']:.3f}, {s[gate + '_ci_high']:.3f}] "
              f"{'-' if noise is None else f'{noise:.4f}':>11} {h.seconds:>10.1f}")
    print(f"\nbest checkpoint by {DEFAULT_GATE_METRIC}: {trainer.state.best_model_checkpoint} "
          f"({trainer.state.best_metric:.4f}, step {trainer.state.best_global_step})")
    if monitor_cb.failures:
        print(f"scoring failures: {monitor_cb.failures}")
    if wandb_dir:
        print(f"W&B offline run: {Path(wandb_dir).parent}  (upload later with `wandb sync`)")
    else:
        print(f"reports: {out / 'probattr'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
