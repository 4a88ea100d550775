"""Probe sets: the fixed, reasonable prompts the monitor scores.

Load a set by built-in name or from a file, render each probe to token ids, and
record the set's fingerprint with every run::

    from probattr_monitor.probes import load_probe_set, render

    probes = load_probe_set("reasonable-en")          # or "paper", or "my_probes.jsonl"
    rendered = render(probes[0], tokenizer)            # ids + template_mask
    run_metadata["probes"] = probes.manifest()        # includes probes.fingerprint

Built-in sets: ``paper`` (the seven prompts of the paper's Table 1, verbatim) and
``reasonable-en`` (natural English prompts in five categories).
"""

from probattr_monitor.probes.core import Probe, ProbeSet, ProbeSetError, check_same_probes
from probattr_monitor.probes.loading import BUILTIN_PROBE_SETS, list_probe_sets, load_probe_set
from probattr_monitor.probes.rendering import RenderedPrompt, prepend_bos_ids, render

__all__ = [
    "BUILTIN_PROBE_SETS",
    "Probe",
    "ProbeSet",
    "ProbeSetError",
    "RenderedPrompt",
    "check_same_probes",
    "list_probe_sets",
    "load_probe_set",
    "prepend_bos_ids",
    "render",
]
