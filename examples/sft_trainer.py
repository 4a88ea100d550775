"""Fine-tune with TRL's ``SFTTrainer`` and the unchanged HF callback, gated on the probes' own loss.

``SFTTrainer`` is a ``Trainer`` subclass, so ``ProbAttrTrainerCallback`` goes in
``callbacks=[...]`` as with the plain ``Trainer``: it scores the probes at every
evaluation and injects ``eval_probattr_<metric>``, and
``metric_for_best_model="probattr_mean_surprisal_prefix"`` keeps the checkpoint
whose probes' own loss is lowest.

The corpus, tokenizer and probes are those of ``examples/hf_trainer_train.py``
(generated here; nothing is downloaded); the model is a small GPT-2 trained
from scratch on the corpus as plain-text SFT data.

Run::

    python examples/sft_trainer.py                  # W&B offline, ./runs/sft_trainer
    python examples/sft_trainer.py --max-steps 40 --no-wandb
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the HF example's corpus, tokenizer and options
from _trainer_common import finish_wandb, prepare, trainer_arguments  # noqa: E402
from hf_trainer_train import PROBES, make_corpus, make_tokenizer  # noqa: E402


def main(argv=None) -> int:
    ap = trainer_arguments(__doc__, output_dir="runs/sft_trainer", max_steps=200)
    ap.add_argument("--n-train", type=int, default=8000, help="training sentences")
    ap.add_argument("--n-probes", type=int, default=len(PROBES), help="score the first N probes")
    ap.add_argument("--max-new-tokens", type=int, default=6, help="greedy response length")
    args = ap.parse_args(argv)
    out, use_wandb = prepare(args, wandb_project="probattr-sft-example")

    import datasets
    from transformers import GPT2Config, GPT2LMHeadModel, set_seed
    from trl import SFTConfig, SFTTrainer

    from probattr_monitor.callbacks import ProbAttrTrainerCallback
    from probattr_monitor.report import DEFAULT_GATE_METRIC
    from probattr_monitor.scoring import ScoringConfig

    set_seed(args.seed)
    train_texts = make_corpus(args.n_train, seed=args.seed)
    eval_texts = make_corpus(300, seed=args.seed + 1)
    tokenizer = make_tokenizer(train_texts)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=128, n_layer=2,
                                       n_head=4, bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    probes = out / "probes.jsonl"
    probes.write_text("".join(json.dumps(p) + "\n" for p in PROBES[:args.n_probes]), encoding="utf-8")
    callback = ProbAttrTrainerCallback(probes=str(probes),
                                       scoring=ScoringConfig(candidates="all", max_new_tokens=args.max_new_tokens,
                                                                     n_boot=200),
                                       wandb="auto" if use_wandb else False)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(out), max_steps=args.max_steps, per_device_train_batch_size=16,
            per_device_eval_batch_size=64, learning_rate=2e-3, warmup_steps=max(1, args.max_steps // 20),
            logging_steps=max(1, args.eval_steps // 2), eval_strategy="steps", eval_steps=args.eval_steps,
            save_strategy="steps", save_steps=args.eval_steps, save_total_limit=3,
            load_best_model_at_end=True,
            metric_for_best_model=f"probattr_{DEFAULT_GATE_METRIC}",  # HF reads eval_probattr_<metric>
            greater_is_better=False, report_to=["wandb"] if use_wandb else [], run_name="probattr-sft-example",
            use_cpu=True, dataloader_num_workers=0, seed=args.seed, disable_tqdm=True,
            max_length=32, dataset_text_field="text",
            gradient_checkpointing=False),  # SFTConfig turns it on by default; a 2-layer model does not need it
        train_dataset=datasets.Dataset.from_dict({"text": train_texts}),
        eval_dataset=datasets.Dataset.from_dict({"text": eval_texts}),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    wandb_dir = finish_wandb(use_wandb)
    if wandb_dir:
        print(f"W&B offline run: {Path(wandb_dir).parent}  (upload later with `wandb sync`)")

    gate = f"probattr/{DEFAULT_GATE_METRIC}"
    print(f"\n{'step':>6} {DEFAULT_GATE_METRIC:>22} {'95% CI':>17} {'noise_rate':>11}")
    for h in callback.history:
        s = h.scalars
        noise = s.get("probattr/noise_rate")  # absent from a gate scoring
        print(f"{h.step:>6} {s[gate]:>22.4f} [{s[gate + '_ci_low']:.3f}, {s[gate + '_ci_high']:.3f}] "
              f"{'-' if noise is None else f'{noise:.4f}':>11}")
    print(f"\nbest checkpoint by {DEFAULT_GATE_METRIC}: {trainer.state.best_model_checkpoint} "
          f"({trainer.state.best_metric:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
