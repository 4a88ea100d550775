"""``probattr probes``: list the built-in probe sets, or check a probe file."""

from __future__ import annotations

import argparse
from typing import Any

from probattr_monitor.cli.errors import EXIT_STATUS_HELP, CLIError


def add_parser(subparsers: Any, parents: list) -> argparse.ArgumentParser:
    """Register ``probes``."""
    p = subparsers.add_parser(
        "probes", parents=parents, help="list the built-in probe sets, or validate a probe file",
        description="Without SET: list the built-in probe sets. With SET (a built-in name or a\n"
                    ".jsonl/.yaml file): validate it and print its fingerprint and probes.",
        epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", metavar="SET", help="built-in name or probe file to show")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute ``probattr probes``."""
    from probattr_monitor.probes import list_probe_sets, load_probe_set

    if args.spec is None:
        sets = list_probe_sets()
        width = max(len(n) for n in sets)
        for name, desc in sets.items():
            print(f"{name:<{width}}  {len(load_probe_set(name)):>3} probes  {desc}")
        print("\nor give a .jsonl / .yaml probe file (fields: id, prompt; optional response, tags, chat, purpose)")
        return 0
    try:
        probes = load_probe_set(args.spec)
    except (ValueError, FileNotFoundError, TypeError, OSError) as exc:
        raise CLIError(f"cannot load probe set {args.spec!r}: {exc}") from None
    print(f"{probes.name}: {len(probes)} probes from {probes.source}")
    print(f"fingerprint {probes.fingerprint}")
    for probe in probes:
        text = probe.prompt.replace("\n", " ")
        print(f"  {probe.id}: {text[:70] + '...' if len(text) > 70 else text}")
    return 0
