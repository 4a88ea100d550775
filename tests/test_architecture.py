"""The package's layering (docs/design.md section 4), read from its import statements.

Every import counts, also those inside functions: a deferred import that runs
back up a layer is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "probattr_monitor"

#: Which of our top-level modules or sub-packages each one may import (docs/design.md section 4).
ALLOWED = {
    "io_utils": set(),
    "tokenization": set(),
    "version": set(),
    "distributed": set(),
    "models": set(),
    "probes": {"io_utils", "tokenization"},
    "engine": {"io_utils", "tokenization"},
    "report": {"engine", "io_utils"},
    "scoring": {"engine", "probes", "report", "tokenization"},
    "evaluate": {"engine", "io_utils", "probes", "tokenization"},
    "monitor": {"distributed", "engine", "probes", "report", "scoring", "version"},
    "sinks": {"distributed", "io_utils", "report"},
    "callbacks": {"distributed", "engine", "monitor", "report", "scoring", "sinks", "tokenization"},
    "cli": {"distributed", "engine", "evaluate", "io_utils", "models", "monitor", "probes", "report", "scoring",
            "sinks", "version"},
}

TRAINING_FRAMEWORKS = ("lightning", "pytorch_lightning", "accelerate", "deepspeed")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path):
    """``(target module, imported names)`` of every import statement in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = _module_name(path).split(".")
    package = this if path.name == "__init__.py" else this[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield base, tuple(a.name for a in node.names)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(target: str, names) -> set[str]:
    out = set()
    for name in names or ("",):
        full = f"{target}.{name}" if name else target
        out.add(full if full in MODULES else target)
    return {m for m in out if m in MODULES}


GRAPH = {m: set().union(*[_resolve(t, n) for t, n in _imports(p)] or [set()]) - {m} for m, p in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<top>"


def test_no_import_cycle():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) != "<top>"))
def test_imports_follow_the_layers(module):
    layer = _layer(module)
    assert layer in ALLOWED, f"{module}: layer {layer!r} is not in docs/design.md section 4 (add it to ALLOWED)"
    bad = sorted(t for t in GRAPH[module] if _layer(t) != layer and _layer(t) not in ALLOWED[layer])
    assert not bad, f"{module} imports {bad}, above or beside its layer {layer!r}"


def test_no_module_imports_another_modules_private_names():
    bad = []
    for module, path in MODULES.items():
        for target, names in _imports(path):
            if not target.startswith("probattr_monitor") or target == module:
                continue
            bad += [f"{module}: from {target} import {n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, bad


def test_engine_and_report_import_no_training_framework():
    for module, path in MODULES.items():
        if _layer(module) in ("engine", "report", "probes", "scoring", "monitor"):
            frameworks = [t for t, _ in _imports(path) if t.split(".")[0] in TRAINING_FRAMEWORKS]
            assert not frameworks, f"{module} imports {frameworks}"
