"""Probe sets: the fixed, reasonable prompts the monitor scores.

Load a set by built-in name or from a file, render each probe to token ids, and
record the set's fingerprint with every run::

    from probattr_monitor.probes import load_probe_set, render

    probes = load_probe_set("reasonable-en")          # or "paper", or "my_probes.jsonl"
    for probe in probes.shard(rank, world_size):
        rendered = render(probe, tokenizer)            # ids + template_mask
    run_metadata["probes"] = probes.manifest()        # includes probes.fingerprint

Built-in sets: ``paper`` (the seven prompts of the paper's Table 1, verbatim) and
``reasonable-en`` (at least 32 natural English prompts of 10-40 tokens in five
categories: narrative, factual, reading, instruction, dialogue).
"""

from probattr_monitor.probes.core import (
    FINGERPRINT_VERSION,
    PROBE_FIELDS,
    Probe,
    ProbeSet,
    ProbeSetError,
    check_same_probes,
    fingerprint_probes,
)
from probattr_monitor.probes.loading import (
    BUILTIN_PROBE_SETS,
    list_probe_sets,
    load_probe_set,
    parse_jsonl,
    parse_yaml,
    read_probe_file,
)
from probattr_monitor.probes.rendering import (
    BOS_POLICIES,
    RenderedPrompt,
    conditioning_token_id,
    prepend_bos_ids,
    render,
)

__all__ = [
    "BOS_POLICIES",
    "BUILTIN_PROBE_SETS",
    "FINGERPRINT_VERSION",
    "PROBE_FIELDS",
    "Probe",
    "ProbeSet",
    "ProbeSetError",
    "RenderedPrompt",
    "check_same_probes",
    "conditioning_token_id",
    "fingerprint_probes",
    "list_probe_sets",
    "load_probe_set",
    "parse_jsonl",
    "parse_yaml",
    "prepend_bos_ids",
    "read_probe_file",
    "render",
]
