"""Test-only building blocks, imported as ``helpers.<module>`` (``tests`` is on pytest's ``pythonpath``).

- :mod:`helpers.models`: tiny GPT-2 / Llama / cache-less causal LMs, built from a seed;
- :mod:`helpers.word_tokenizers`: word-level fast tokenizers built offline;
- :mod:`helpers.results`: hand-built ``AttributionResult`` objects;
- :mod:`helpers.probes`: probe files and the exact scoring settings for tiny vocabularies;
- :mod:`helpers.wandb_offline`: an offline W&B run directory read back from disk;
- :mod:`helpers.hf`: corpus, datasets and ``Trainer`` of the HF Trainer tests;
- :mod:`helpers.lit`: corpus, tokenizer and ``LightningModule`` of the Lightning and sink tests;
- :mod:`helpers.lit_ddp`: the two-process Lightning DDP run (``python -m helpers.lit_ddp``).

No module holds state between tests: constants are tuples or read-only mappings.
"""
