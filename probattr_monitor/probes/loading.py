"""Loading probe sets: built-in names, JSON Lines and YAML files.

File formats
------------
JSON Lines (``.jsonl``)
    One JSON object per line with the fields of :class:`~probattr_monitor.probes.Probe`
    (``id`` and ``prompt`` required; ``response``, ``tags``, ``chat``, ``purpose``
    optional). Blank lines are ignored. The set is named after the file's stem.
YAML (``.yaml`` / ``.yml``)
    Either a list of probe mappings, or a mapping with ``probes`` (that list) and
    optionally ``name`` and ``description``. Parsed with PyYAML's safe loader only.

Every problem is reported as a :class:`~probattr_monitor.probes.ProbeSetError`
whose message starts with ``"<file>:<line>: "``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from probattr_monitor.probes.core import ProbeSet, ProbeSetError, probe_from_record

logger = logging.getLogger(__name__)

#: Built-in probe sets (name -> one-line description); read-only.
BUILTIN_PROBE_SETS: Mapping[str, str] = MappingProxyType({
    "paper": "The seven prompts of Table 1 of the probabilistic-attribution paper, verbatim "
             "(narrative continuation, reading comprehension, a false-premise question).",
    "reasonable-en": "Natural English prompts of 10-40 tokens written for this project "
                     "(narrative, factual, reading, instruction, dialogue), each with a purpose.",
})

PROBE_FILE_SUFFIXES: tuple[str, ...] = (".jsonl", ".yaml", ".yml")
# A probe's fields are strings, a list of strings and a boolean: nesting deep enough to exhaust
# Python's recursion limit is never a probe (and would otherwise escape as a bare RecursionError).
_TOO_DEEP = ("values nested too deeply to parse (maximum recursion depth exceeded); a probe's fields "
             "are strings, a list of strings (tags) and a boolean (chat)")
_YAML_TOP_KEYS: tuple[str, ...] = ("name", "description", "probes")


def list_probe_sets() -> dict[str, str]:
    """Names of the built-in probe sets with a one-line description of each.

    Returns
    -------
    dict of str to str
        ``{name: description}``, in a stable order. A fresh dict each call.
    """
    return dict(BUILTIN_PROBE_SETS)


def _builtin_names() -> str:
    return ", ".join(BUILTIN_PROBE_SETS)


def load_probe_set(spec: "str | os.PathLike[str] | ProbeSet", *, tokenizer: Any = None,
                   max_tokens: int | None = None) -> ProbeSet:
    """Load a probe set by built-in name, from a file, or pass one through.

    Parameters
    ----------
    spec : str, path-like or ProbeSet
        A built-in name (see :func:`list_probe_sets`: ``"paper"``,
        ``"reasonable-en"``), a path to a ``.jsonl``, ``.yaml`` or ``.yml`` file,
        or a :class:`ProbeSet` (returned as is).
    tokenizer : transformers tokenizer, optional
        With ``max_tokens``, check every prompt's length
        (:meth:`ProbeSet.validate_lengths`).
    max_tokens : int, optional
        Longest allowed prompt, in tokens of ``tokenizer``.

    Returns
    -------
    ProbeSet

    Raises
    ------
    ValueError
        ``spec`` is neither a built-in name nor an existing file, names a directory
        or a file of an unsupported type.
    FileNotFoundError
        ``spec`` looks like a file path (it has a directory part or a probe-file
        suffix) but does not exist.
    ProbeSetError
        The file cannot be read or decoded, or its content is invalid (the
        message names the file and line), or a prompt is too long.
    TypeError
        ``spec`` has an unsupported type.
    """
    if isinstance(spec, ProbeSet):
        probe_set = spec
    elif isinstance(spec, (str, os.PathLike)):
        text_spec = os.fspath(spec)
        if isinstance(spec, str) and spec in BUILTIN_PROBE_SETS:
            probe_set = _load_builtin(spec)
        else:
            probe_set = read_probe_file(_resolve_path(text_spec))
    else:
        raise TypeError(f"probe set spec must be a built-in name, a path or a ProbeSet, "
                        f"got {type(spec).__name__}")
    if max_tokens is not None:
        if tokenizer is None:
            raise ValueError("max_tokens needs a tokenizer to count tokens")
        probe_set.validate_lengths(tokenizer, max_tokens)
    logger.debug("loaded probe set %r from %s: %d probes, fingerprint %s", probe_set.name,
                 probe_set.source, len(probe_set), probe_set.fingerprint[:12])
    return probe_set


def _resolve_path(spec: str) -> Path:
    path = Path(spec)
    if path.is_dir():
        raise ValueError(f"probe set '{spec}' is a directory, not a probe file "
                         f"(.jsonl, .yaml or .yml); built-in probe sets: {_builtin_names()}")
    if path.exists():
        return path
    looks_like_path = (path.suffix.lower() in PROBE_FILE_SUFFIXES + (".json",)
                       or os.sep in spec or (os.altsep is not None and os.altsep in spec))
    if looks_like_path:
        raise FileNotFoundError(f"probe set file '{spec}' not found; "
                                f"built-in probe sets: {_builtin_names()}")
    close = difflib.get_close_matches(spec, list(BUILTIN_PROBE_SETS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"unknown probe set '{spec}': not a built-in name and no such file "
                     f"(built-in probe sets: {_builtin_names()}){hint}")


def read_probe_file(path: "str | os.PathLike[str]") -> ProbeSet:
    """Read and validate a ``.jsonl``, ``.yaml`` or ``.yml`` probe file.

    Parameters
    ----------
    path : str or path-like
        The file. Its string form is the set's ``source`` and prefixes messages.

    Returns
    -------
    ProbeSet

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Unsupported suffix.
    ProbeSetError
        Unreadable, not UTF-8, or invalid content (message names file and line).
    """
    path = Path(path)
    source = os.fspath(path)
    suffix = path.suffix.lower()
    if suffix not in PROBE_FILE_SUFFIXES:
        raise ValueError(f"unsupported probe file type '{path.suffix or '(none)'}' for '{source}': "
                         f"use .jsonl, .yaml or .yml (built-in probe sets: {_builtin_names()})")
    if not path.exists():
        raise FileNotFoundError(f"probe set file '{source}' not found; "
                                f"built-in probe sets: {_builtin_names()}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProbeSetError(f"cannot read file: {exc.strerror or exc} "
                            f"(built-in probe sets: {_builtin_names()})", source=source) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ProbeSetError(f"not valid UTF-8 text ({exc.reason} at byte {exc.start})",
                            source=source, line=line) from exc
    if suffix == ".jsonl":
        return parse_jsonl(text, source=source, name=path.stem)
    return parse_yaml(text, source=source, name=path.stem)


def _load_builtin(name: str) -> ProbeSet:
    resource = resources.files("probattr_monitor.probes").joinpath("data", f"{name}.jsonl")
    text = resource.read_text(encoding="utf-8")
    return parse_jsonl(text, source=f"builtin:{name}", name=name)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_jsonl(text: str, *, source: str, name: str) -> ProbeSet:
    """Parse JSON Lines probe text.

    Parameters
    ----------
    text : str
        The file content.
    source : str
        Used as the set's source and in messages (``"<source>:<line>: ..."``).
    name : str
        The set's name.

    Returns
    -------
    ProbeSet

    Raises
    ------
    ProbeSetError
        Malformed JSON, a line that is not an object, a duplicate key or id, an
        invalid field, values nested too deeply to parse, or no probes at all.
    """
    probes = []
    lines: list[int] = []
    for lineno, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.rstrip("\r")
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_pairs_no_duplicates)
        except _DuplicateKey as exc:
            raise ProbeSetError(f"field '{exc.key}' given twice", source=source, line=lineno) from None
        except json.JSONDecodeError as exc:
            raise ProbeSetError(f"invalid JSON: {exc.msg} (column {exc.colno})",
                                source=source, line=lineno) from None
        except RecursionError:
            raise ProbeSetError(_TOO_DEEP, source=source, line=lineno) from None
        try:
            probes.append(probe_from_record(record, source=source, line=lineno))
        except RecursionError:
            raise ProbeSetError(_TOO_DEEP, source=source, line=lineno) from None
        lines.append(lineno)
    if not probes:
        raise ProbeSetError("no probes found (empty file)", source=source)
    return ProbeSet(name=name, probes=tuple(probes), source=source, lines=tuple(lines))


def _mark_line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping_lines(node: yaml.Node, *, source: str) -> dict[str, int]:
    """Line of each key of a YAML mapping node; rejects duplicate keys."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in out:
                    raise ProbeSetError(f"field '{key_node.value}' given twice (first on line "
                                        f"{out[key_node.value]})", source=source,
                                        line=_mark_line(key_node))
                out[key_node.value] = _mark_line(value_node)
    return out


def parse_yaml(text: str, *, source: str, name: str) -> ProbeSet:
    """Parse YAML probe text with the safe loader.

    The document is either a list of probe mappings, or a mapping with a
    ``probes`` list and optional ``name`` (overrides ``name``) and ``description``.

    Parameters
    ----------
    text : str
        The file content.
    source : str
        Used as the set's source and in messages (``"<source>:<line>: ..."``).
    name : str
        The set's name unless the document gives one.

    Returns
    -------
    ProbeSet

    Raises
    ------
    ProbeSetError
        YAML syntax errors, several documents, an unexpected structure, a
        duplicate key or id, an invalid field, values nested too deeply to
        parse, or no probes at all.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise ProbeSetError(f"invalid YAML: {problem}", source=source,
                            line=mark.line + 1 if mark is not None else None) from None
    except yaml.YAMLError as exc:
        raise ProbeSetError(f"invalid YAML: {exc}", source=source) from None
    except RecursionError:
        raise ProbeSetError(_TOO_DEEP, source=source, line=loader.get_mark().line + 1) from None
    finally:
        loader.dispose()

    if root is None or data is None:
        raise ProbeSetError("no probes found (empty file)", source=source)
    if isinstance(root, yaml.MappingNode) and isinstance(data, Mapping):
        top_lines = _mapping_lines(root, source=source)
        for key in data:
            if key not in _YAML_TOP_KEYS:
                raise ProbeSetError(f"unknown top-level key {key!r} (allowed: {', '.join(_YAML_TOP_KEYS)}; "
                                    "or make the file a list of probes)", source=source,
                                    line=top_lines.get(str(key), _mark_line(root)))
        if "probes" not in data:
            raise ProbeSetError("missing 'probes' list", source=source, line=_mark_line(root))
        if "name" in data:
            if not isinstance(data["name"], str) or not data["name"].strip():
                raise ProbeSetError(f"'name' must be a non-empty string, got {data['name']!r}",
                                    source=source, line=top_lines.get("name"))
            name = data["name"]
        if "description" in data and data["description"] is not None and not isinstance(data["description"], str):
            raise ProbeSetError("'description' must be a string", source=source,
                                line=top_lines.get("description"))
        seq_node = next(v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "probes")
        items = data["probes"]
    else:
        seq_node, items = root, data
    if not isinstance(items, list) or not isinstance(seq_node, yaml.SequenceNode):
        raise ProbeSetError(f"expected a list of probes, got {type(items).__name__}", source=source,
                            line=_mark_line(seq_node))
    if not items:
        raise ProbeSetError("no probes found (empty list)", source=source, line=_mark_line(seq_node))
    probes = []
    lines: list[int] = []
    for item, node in zip(items, seq_node.value):
        line = _mark_line(node)
        try:
            probes.append(probe_from_record(item, source=source, line=line,
                                            field_lines=_mapping_lines(node, source=source)))
        except RecursionError:
            raise ProbeSetError(_TOO_DEEP, source=source, line=line) from None
        lines.append(line)
    return ProbeSet(name=name, probes=tuple(probes), source=source, lines=tuple(lines))
