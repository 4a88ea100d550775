"""Probes and probe sets: immutable, validated, fingerprinted.

A :class:`Probe` is one prompt (plus an optional fixed response) that the monitor
scores; a :class:`ProbeSet` is an ordered, named collection of probes with unique
ids and a content :attr:`ProbeSet.fingerprint` that runs record, so results are
only compared between runs that scored the same probes.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import reprlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from probattr_monitor.io_utils import atomic_write_text
from probattr_monitor.tokenization import encode_text

logger = logging.getLogger(__name__)

#: Prefix hashed into every fingerprint; bump it if the canonical form changes.
FINGERPRINT_VERSION = "probattr-probes/v1"

#: Fields a probe record may have, in their canonical order.
PROBE_FIELDS: tuple[str, ...] = ("id", "prompt", "response", "tags", "chat", "purpose")
_REQUIRED_FIELDS: tuple[str, ...] = ("id", "prompt")


class ProbeSetError(ValueError):
    """A probe or probe set is invalid.

    The message starts with the location of the problem, ``"<source>:<line>: "``
    (for example ``"probes.jsonl:3: duplicate id 'p1' (first defined on line 1)"``),
    or ``"<source>: probe #<n>: "`` when no line number is known.

    Attributes
    ----------
    source : str or None
        File (or other source) the problem was found in.
    line : int or None
        1-based line number, when known.
    problem : str
        The message without its location prefix.
    """

    def __init__(self, problem: str, *, source: str | None = None, line: int | None = None,
                 index: int | None = None) -> None:
        self.source = source
        self.line = line
        self.problem = problem
        super().__init__(_location(source, line, index) + problem)


def _location(source: str | None, line: int | None, index: int | None = None) -> str:
    if source is None:
        return ""
    if line is not None:
        return f"{source}:{line}: "
    if index is not None:
        return f"{source}: probe #{index + 1}: "
    return f"{source}: "


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 6
_REPR.maxstring = _REPR.maxother = 80


def _shown(value: Any) -> str:
    """``repr(value)``, shortened: deeply nested or long values make messages of bounded size."""
    return _REPR.repr(value)


def _type_name(value: Any) -> str:
    return {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
            list: "list", tuple: "list", dict: "mapping"}.get(type(value), type(value).__name__)


def _field_problem(name: str, value: Any) -> tuple[type[Exception], str] | None:
    """Return ``(exception type, message)`` if ``value`` is invalid for field ``name``."""
    if name in ("id", "prompt"):
        if not isinstance(value, str):
            return TypeError, f"field '{name}' must be a string, got {_type_name(value)} {_shown(value)}"
        if not value.strip():
            return ValueError, f"empty {name}"
    elif name in ("response", "purpose"):
        if value is not None and not isinstance(value, str):
            return TypeError, f"field '{name}' must be a string or null, got {_type_name(value)} {_shown(value)}"
        if name == "response" and value is not None and not value:
            return ValueError, "empty response (omit the field or use null to have one generated)"
    elif name == "tags":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            return TypeError, f"field 'tags' must be a list of strings, got {_type_name(value)} {_shown(value)}"
        for tag in value:
            if not isinstance(tag, str):
                return TypeError, (f"field 'tags' must be a list of strings, got an element {_type_name(tag)} "
                                   f"{_shown(tag)}")
            if not tag.strip():
                return ValueError, "empty tag in field 'tags'"
    elif name == "chat":
        if not isinstance(value, bool):
            return TypeError, f"field 'chat' must be a boolean (true/false), got {_type_name(value)} {_shown(value)}"
    else:
        return ValueError, f"unknown field '{name}'"
    return None


@dataclass(frozen=True)
class Probe:
    """One probe: a prompt to score, with optional fixed response.

    Parameters
    ----------
    id : str
        Identifier, unique within its probe set; appears in every table and metric.
    prompt : str
        The prompt text, exactly as written (no stripping or normalisation).
    response : str or None
        Fixed response to score against. ``None`` means the caller generates one
        (e.g. greedily) with the model being monitored.
    tags : tuple of str
        Free-form labels (the built-in sets use the category, e.g. ``"narrative"``).
        A list is accepted and stored as a tuple.
    chat : bool
        Render the prompt through the tokenizer's chat template as a user turn
        (see :func:`probattr_monitor.probes.render`).
    purpose : str or None
        One line saying what the probe is for. Documentation only: it is not part
        of the fingerprint.

    Raises
    ------
    TypeError
        A field has the wrong type.
    ValueError
        The id or prompt is empty, or the response is an empty string.
    """

    id: str
    prompt: str
    response: str | None = None
    tags: tuple[str, ...] = ()
    chat: bool = False
    purpose: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tags, list):
            object.__setattr__(self, "tags", tuple(self.tags))
        for name in PROBE_FIELDS:
            problem = _field_problem(name, getattr(self, name))
            if problem is not None:
                exc_type, message = problem
                raise exc_type(f"probe {self.id!r}: {message}" if name != "id" else message)

    def content(self) -> dict[str, Any]:
        """The fields that define what is scored (the fingerprinted content)."""
        return {"id": self.id, "prompt": self.prompt, "response": self.response, "chat": self.chat}

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-ready record; fields left at their defaults are omitted."""
        out: dict[str, Any] = {"id": self.id, "prompt": self.prompt}
        if self.response is not None:
            out["response"] = self.response
        if self.tags:
            out["tags"] = list(self.tags)
        if self.chat:
            out["chat"] = True
        if self.purpose is not None:
            out["purpose"] = self.purpose
        return out


def probe_from_record(record: Any, *, source: str, line: int | None = None, index: int | None = None,
                      field_lines: Mapping[str, int] | None = None) -> Probe:
    """Validate one raw record (a parsed JSON object / YAML mapping) into a :class:`Probe`.

    Parameters
    ----------
    record : Any
        The parsed record; must be a mapping with string keys.
    source : str
        Where it came from (a path or ``"builtin:<name>"``), used in messages.
    line : int, optional
        1-based line of the record, used in messages.
    index : int, optional
        0-based position of the record, used in messages when ``line`` is unknown.
    field_lines : mapping, optional
        1-based line of each field (YAML), so that a bad field is reported at its own line.

    Returns
    -------
    Probe

    Raises
    ------
    ProbeSetError
        With the location and the problem: not a mapping, unknown or missing field,
        wrong type, empty id or prompt.
    """
    field_lines = field_lines or {}

    def fail(problem: str, at: str | None = None) -> ProbeSetError:
        return ProbeSetError(problem, source=source, line=field_lines.get(at, line) if at else line,
                             index=index)

    if not isinstance(record, Mapping):
        raise fail(f"expected a probe object with fields {', '.join(PROBE_FIELDS)}, "
                   f"got {_type_name(record)}")
    for key in record:
        if not isinstance(key, str):
            raise fail(f"field names must be strings, got {_type_name(key)} {_shown(key)}")
        if key not in PROBE_FIELDS:
            close = difflib.get_close_matches(key, PROBE_FIELDS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise fail(f"unknown field '{key}' (allowed: {', '.join(PROBE_FIELDS)}){hint}", key)
    for key in _REQUIRED_FIELDS:
        if key not in record:
            raise fail(f"missing required field '{key}'")
    for key, value in record.items():
        problem = _field_problem(key, value)
        if problem is not None:
            message = problem[1]
            if key != "id" and isinstance(record.get("id"), str):
                message = f"probe '{record['id']}': {message}"
            raise fail(message, key)
    return Probe(**{k: (tuple(v) if k == "tags" else v) for k, v in record.items()})


def fingerprint_probes(probes: Iterable[Probe]) -> str:
    """SHA-256 hex digest of the probes' content (id, prompt, response, chat flag).

    The canonical form is compact, key-sorted UTF-8 JSON of the probes sorted by
    id, prefixed with :data:`FINGERPRINT_VERSION`. Names, sources, tags, purposes
    and the order of the probes do not enter it, so renaming or reordering a file
    keeps the fingerprint while editing any prompt changes it.
    """
    content = sorted((p.content() for p in probes), key=lambda c: c["id"])
    payload = json.dumps({"version": FINGERPRINT_VERSION, "probes": content}, sort_keys=True,
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ProbeSet:
    """An ordered, named set of probes with unique ids.

    Parameters
    ----------
    name : str
        Display name (a built-in name or the file's stem / YAML ``name``).
    probes : tuple of Probe
        The probes, in scoring order. A list is accepted and stored as a tuple.
    source : str
        Where the set came from: a file path as given, ``"builtin:<name>"``, or
        ``"<memory>"``.
    lines : tuple of (int or None), optional
        Source line of each probe, used in error messages. Not compared.

    Raises
    ------
    ProbeSetError
        Two probes share an id, or an element is not a :class:`Probe`.

    Notes
    -----
    Iterating yields the probes; ``len`` is their number; ``set[i]`` is the i-th
    probe and ``set["id"]`` the probe with that id.
    """

    name: str
    probes: tuple[Probe, ...]
    source: str = "<memory>"
    lines: tuple[int | None, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "probes", tuple(self.probes))
        if self.lines is not None:
            object.__setattr__(self, "lines", tuple(self.lines))
            if len(self.lines) != len(self.probes):
                raise ValueError(f"lines has {len(self.lines)} entries for {len(self.probes)} probes")
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"probe set name must be a non-empty string, got {self.name!r}")
        first: dict[str, int] = {}
        for i, probe in enumerate(self.probes):
            if not isinstance(probe, Probe):
                raise ProbeSetError(f"expected a Probe, got {type(probe).__name__}",
                                    source=self.source, line=self._line(i), index=i)
            if probe.id in first:
                j = first[probe.id]
                where = f"line {self._line(j)}" if self._line(j) is not None else f"probe #{j + 1}"
                raise ProbeSetError(f"duplicate id '{probe.id}' (first defined on {where})",
                                    source=self.source, line=self._line(i), index=i)
            first[probe.id] = i

    def _line(self, i: int) -> int | None:
        return self.lines[i] if self.lines is not None else None

    @classmethod
    def from_records(cls, records: Iterable[Any], *, name: str, source: str = "<memory>") -> "ProbeSet":
        """Build a validated set from raw mappings (e.g. parsed JSON objects).

        Parameters
        ----------
        records : iterable of mapping
            One mapping per probe with the fields of :class:`Probe`.
        name : str
            Name of the set.
        source : str
            Used in error messages (``"<source>: probe #<n>: ..."``).

        Returns
        -------
        ProbeSet
        """
        probes = [probe_from_record(r, source=source, index=i) for i, r in enumerate(records)]
        return cls(name=name, probes=tuple(probes), source=source)

    # -- container protocol -------------------------------------------------
    def __len__(self) -> int:
        return len(self.probes)

    def __iter__(self) -> Iterator[Probe]:
        return iter(self.probes)

    def __getitem__(self, key: int | str) -> Probe:
        if isinstance(key, str):
            for probe in self.probes:
                if probe.id == key:
                    return probe
            raise KeyError(f"no probe with id {key!r} in probe set {self.name!r}")
        return self.probes[key]

    @property
    def ids(self) -> tuple[str, ...]:
        """The probe ids, in order."""
        return tuple(p.id for p in self.probes)

    # -- identity -----------------------------------------------------------
    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of the probes' content; see :func:`fingerprint_probes`."""
        return fingerprint_probes(self.probes)

    def manifest(self) -> dict[str, Any]:
        """What a run records about its probes: name, source, fingerprint, count and ids."""
        return {"name": self.name, "source": self.source, "fingerprint": self.fingerprint,
                "num_probes": len(self), "ids": list(self.ids)}

    # -- distribution -------------------------------------------------------
    def shard(self, rank: int, world_size: int) -> "ProbeSet":
        """The probes a given rank scores: a deterministic round-robin split.

        Rank ``r`` gets probes ``r, r + world_size, r + 2 * world_size, ...``; the
        shards of all ranks cover every probe exactly once. Shard sizes differ by
        at most one, so under FSDP/ZeRO-3 (where every rank must run the same
        number of forward passes) the caller pads the shorter shards.

        Parameters
        ----------
        rank : int
            This process's rank, ``0 <= rank < world_size``.
        world_size : int
            Number of processes, ``>= 1``.

        Returns
        -------
        ProbeSet
            Same name and source, with this rank's probes (possibly none).
        """
        for label, value in (("rank", rank), ("world_size", world_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{label} must be an int, got {type(value).__name__}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size - 1}], got {rank}")
        idx = range(rank, len(self.probes), world_size)
        return ProbeSet(name=self.name, probes=tuple(self.probes[i] for i in idx), source=self.source,
                        lines=None if self.lines is None else tuple(self.lines[i] for i in idx))

    # -- validation ---------------------------------------------------------
    def token_lengths(self, tokenizer: Any) -> dict[str, int]:
        """Number of tokens of each prompt (no special or template tokens), by probe id."""
        return {p.id: len(encode_text(tokenizer, p.prompt)) for p in self.probes}

    def validate_lengths(self, tokenizer: Any, max_tokens: int, *, min_tokens: int | None = None
                         ) -> dict[str, int]:
        """Check every prompt's length in tokens.

        Lengths count the prompt text's own tokens, without BOS or chat-template
        tokens.

        Parameters
        ----------
        tokenizer : transformers tokenizer
            Called as ``tokenizer(text, add_special_tokens=False)``.
        max_tokens : int
            Longest allowed prompt.
        min_tokens : int, optional
            Shortest allowed prompt.

        Returns
        -------
        dict of str to int
            Token count of each prompt, by probe id.

        Raises
        ------
        ProbeSetError
            Naming the source line, probe id and token count of each offending
            probe (one per message line; the first line starts with the location).
        """
        lengths = self.token_lengths(tokenizer)
        bad: list[tuple[int, str]] = []
        for i, probe in enumerate(self.probes):
            n = lengths[probe.id]
            if n > max_tokens:
                bad.append((i, f"probe '{probe.id}' prompt is {n} tokens, longer than the limit of {max_tokens}"))
            elif min_tokens is not None and n < min_tokens:
                bad.append((i, f"probe '{probe.id}' prompt is {n} tokens, "
                               f"shorter than the minimum of {min_tokens}"))
        if bad:
            (i0, first), rest = bad[0], bad[1:]
            more = "".join(f"\n{_location(self.source, self._line(i), i)}{msg}" for i, msg in rest)
            raise ProbeSetError(first + more, source=self.source, line=self._line(i0), index=i0)
        return lengths

    # -- serialisation ------------------------------------------------------
    def to_records(self) -> list[dict[str, Any]]:
        """The probes as JSON/YAML-ready mappings (see :meth:`Probe.to_dict`)."""
        return [p.to_dict() for p in self.probes]

    def to_jsonl(self, path: str | Path) -> Path:
        """Write the probes as JSON Lines (UTF-8, one object per line), atomically.

        The file's stem becomes the name when it is loaded again; the fingerprint
        is unchanged by the round trip.

        Returns
        -------
        Path
            The written path.
        """
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.to_records())
        return atomic_write_text(path, text)

    def to_yaml(self, path: str | Path) -> Path:
        """Write the set as YAML (a mapping with ``name`` and ``probes``), atomically.

        Returns
        -------
        Path
            The written path.
        """
        import yaml

        text = yaml.safe_dump({"name": self.name, "probes": self.to_records()}, allow_unicode=True,
                              sort_keys=False, width=1_000_000)
        return atomic_write_text(path, text)


def check_same_probes(a: "ProbeSet | Mapping[str, Any] | str", b: "ProbeSet | Mapping[str, Any] | str",
                      *, allow_mismatch: bool = False) -> bool:
    """Check that two runs used the same probes before comparing them.

    Parameters
    ----------
    a, b : ProbeSet, mapping or str
        A probe set, a run's recorded :meth:`ProbeSet.manifest` (any mapping with
        a ``"fingerprint"`` key) or a fingerprint string.
    allow_mismatch : bool
        If true, a mismatch is logged as a warning and ``False`` returned instead
        of raising.

    Returns
    -------
    bool
        Whether the fingerprints are equal.

    Raises
    ------
    ValueError
        The fingerprints differ and ``allow_mismatch`` is false.
    """
    def fp(x: Any) -> str:
        if isinstance(x, ProbeSet):
            return x.fingerprint
        if isinstance(x, Mapping):
            if "fingerprint" not in x:
                raise ValueError("probe manifest has no 'fingerprint' key")
            return str(x["fingerprint"])
        if isinstance(x, str):
            return x
        raise TypeError(f"expected a ProbeSet, manifest mapping or fingerprint string, got {type(x).__name__}")

    fa, fb = fp(a), fp(b)
    if fa == fb:
        return True
    message = (f"the runs used different probe sets (fingerprint {fa[:12]}… vs {fb[:12]}…); "
               "their probe-level results are not comparable")
    if not allow_mismatch:
        raise ValueError(message)
    logger.warning(message)
    return False

