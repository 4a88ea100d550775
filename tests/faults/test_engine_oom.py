"""Out of memory in the engine: let through as itself, retried at half the batch actually used.

Faults are injected by a tiny GPT-2 whose token embedding raises an
out-of-memory error for some forwards (a forward pre-hook; every path of the
engine, generation included, goes through it), so the batch sizes the model
saw are recorded exactly. What a user relies on:

- an out-of-memory error is reported as one (never as "not a causal LM"), and
  an unrelated ``RuntimeError`` of the model goes through as itself;
- a candidate batch that runs out of memory is retried at half the rows it
  had (not at half a guess), down to 1, and the scores are those of a clean run;
- when even one row runs out, the probe fails with an error that says out of
  memory, where, and the smallest batch tried; a monitor-style scoring
  (``on_error="record"``) records it and goes on with the next probe.
"""

from __future__ import annotations

import logging
import re
from typing import Callable

import numpy as np
import pytest
import torch

from helpers.models import tiny_gpt2

from probattr_monitor import attribute
from probattr_monitor.engine import Budget
from probattr_monitor.probes import Probe
from probattr_monitor.scoring import ScoringConfig, score_probes

pytestmark = pytest.mark.usefixtures("one_thread")

V = 16
PROMPT = "a b c d"
RESPONSE = "e f"


class WordIds:
    """The smallest tokenizer the scoring path needs: word ``w`` of ``a..p`` is id ``ord(w) - ord('a')``.

    Id 0 (``a``) is BOS; there is no EOS, so generation always runs ``max_new_tokens`` steps.
    """

    bos_token_id = 0
    eos_token_id = None
    all_special_ids = [0]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(w) - ord("a") for w in text.split()]}

    def decode(self, ids):
        return " ".join(chr(ord("a") + int(i)) for i in ids)


def cuda_oom() -> BaseException:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8.00 GiB total capacity)")


def cpu_oom() -> BaseException:
    return RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                        "you tried to allocate 17592186044416 bytes. Error code 12 (Cannot allocate memory)")


def mps_oom() -> BaseException:
    return RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB, other allocations: 0 bytes)")


OOMS = pytest.mark.parametrize("make_error", [cuda_oom, cpu_oom, mps_oom], ids=["cuda", "cpu", "mps"])


class Injector:
    """Records ``(rows, length)`` of every forward of ``model`` and raises ``make_error()`` where ``fails`` says."""

    def __init__(self, model: torch.nn.Module, fails: Callable[[int, int], bool],
                 make_error: Callable[[], BaseException]):
        self.seen: list[tuple[int, int]] = []
        self.failed: list[tuple[int, int]] = []
        self.fails, self.make_error = fails, make_error
        self.handle = model.get_input_embeddings().register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        rows, length = args[0].shape
        self.seen.append((int(rows), int(length)))
        if self.fails(int(rows), int(length)):
            self.failed.append((int(rows), int(length)))
            raise self.make_error()

    def rows(self, shorter_than: int) -> list[int]:
        """Rows of the forwards over fewer than ``shorter_than`` tokens (the candidate batches), in order."""
        return [r for r, n in self.seen if n < shorter_than]


def full_length() -> int:
    return len(PROMPT.split()) + len(RESPONSE.split())


def score(model, config: ScoringConfig, probes=None, on_error="record"):
    probes = probes or [Probe("p1", PROMPT, response=RESPONSE)]
    return score_probes(model, WordIds(), probes, config, on_error=on_error)


def clean_attribution(config: ScoringConfig) -> np.ndarray:
    (clean,) = score(tiny_gpt2(V, 0), config, on_error="raise")
    return clean.result.attribution


# --------------------------------------------------------------------------- the full pass


@OOMS
def test_out_of_memory_in_the_full_pass_goes_through_as_itself(make_error):
    """attribute() raises the allocator's own error, not ``TypeError: ... not a causal LM``."""
    model = tiny_gpt2(V, 0)
    injected = make_error()
    Injector(model, lambda rows, n: n == full_length(), lambda: injected)
    with pytest.raises(type(injected)) as info:
        attribute(model, [0, 1, 2, 3], [4, 5], candidates="all")
    assert info.value is injected
    assert not isinstance(info.value, TypeError)


@OOMS
def test_out_of_memory_in_the_full_pass_is_recorded_as_out_of_memory(make_error):
    """The scoring path records it as out of memory, names the full pass, and scores the next probe."""
    model = tiny_gpt2(V, 0)
    inj = Injector(model, lambda rows, n: n == full_length(), make_error)
    probes = [Probe("p1", PROMPT, response=RESPONSE), Probe("p2", "a b c", response="d")]
    first, second = score(model, ScoringConfig(candidates="all", n_boot=0), probes)
    assert first.result is None
    assert first.error.startswith("OutOfMemoryError: probe 'p1' ran out of memory in the full pass over 6 tokens")
    assert "smallest batch tried was 1" in first.error and "TypeError" not in first.error
    assert [n for _, n in inj.failed] == [6], "a single-row full pass has no smaller batch: not retried"
    assert second.error is None and second.result is not None


def test_out_of_memory_in_the_full_pass_raises_out_of_memory():
    model = tiny_gpt2(V, 0)
    Injector(model, lambda rows, n: n == full_length(), cuda_oom)
    with pytest.raises(torch.OutOfMemoryError, match=r"probe 'p1' ran out of memory in the full pass"):
        score(model, ScoringConfig(candidates="all", n_boot=0), on_error="raise")


def test_unrelated_runtime_error_goes_through_unchanged():
    """A model's own RuntimeError is neither called "not a causal LM" nor retried."""
    model = tiny_gpt2(V, 0)
    inj = Injector(model, lambda rows, n: True, lambda: RuntimeError("custom kernel failed: bad launch"))
    with pytest.raises(RuntimeError, match=r"^custom kernel failed: bad launch$") as info:
        attribute(model, [0, 1, 2, 3], [4, 5])
    assert type(info.value) is RuntimeError
    (rec,) = score(model, ScoringConfig(candidates="all", n_boot=0))
    assert rec.error == "RuntimeError: custom kernel failed: bad launch"
    assert len(inj.seen) == 2, "one forward per call: nothing retried"


# --------------------------------------------------------------------------- candidate batches


@OOMS
def test_candidate_batch_retried_at_half_the_automatic_batch(make_error, caplog):
    """The automatic batch holds all 16 candidates; above 2 rows the model runs out: 16 -> 8 -> 4 -> 2."""
    model = tiny_gpt2(V, 0)
    inj = Injector(model, lambda rows, n: rows > 2, make_error)
    config = ScoringConfig(candidates="all", n_boot=0)
    with caplog.at_level(logging.WARNING, logger="probattr_monitor.scoring"):
        (rec,) = score(model, config, on_error="raise")
    assert [r for r, _ in inj.failed] == [16, 8, 4]
    assert sorted(set(inj.rows(full_length())), reverse=True) == [16, 8, 4, 2]
    retries = [int(m) for m in re.findall(r"retrying with batch_size=(\d+)", caplog.text)]
    assert retries == [8, 4, 2]
    np.testing.assert_allclose(rec.result.attribution, clean_attribution(config), rtol=0, atol=1e-9)


def test_candidate_batch_retried_at_half_the_rows_used_not_the_setting():
    """batch_size=64 over 16 candidates forwards 16 rows: the retry is at 8, not 32."""
    model = tiny_gpt2(V, 0)
    inj = Injector(model, lambda rows, n: rows > 2, cuda_oom)
    (rec,) = score(model, ScoringConfig(candidates="all", batch_size=64, n_boot=0), on_error="raise")
    assert [r for r, _ in inj.failed] == [16, 8, 4]
    assert rec.result.info["largest_batch_rows"] == 2, "the result says which batch finally ran"


def test_budgeted_candidate_batch_retried_at_half():
    """The budgeted path (screen, exact set, tail) is retried the same way, each time at half the failed rows."""
    model = tiny_gpt2(V, 0)
    inj = Injector(model, lambda rows, n: rows > 3, cuda_oom)
    config = ScoringConfig(candidates=Budget(), n_boot=0)
    (rec,) = score(model, config, on_error="raise")
    failed = [r for r, _ in inj.failed]
    assert failed and all(r > 3 for r in failed)
    assert all(b <= a // 2 for a, b in zip(failed, failed[1:])), failed
    np.testing.assert_allclose(rec.result.attribution, clean_attribution(config), rtol=0, atol=1e-9)


@OOMS
def test_candidate_batch_of_one_row_out_of_memory_gives_up_naming_the_smallest_batch(make_error):
    """Every candidate forward runs out: 16 -> 8 -> 4 -> 2 -> 1, then the probe fails as out of memory."""
    model = tiny_gpt2(V, 0)
    inj = Injector(model, lambda rows, n: n < full_length(), make_error)
    probes = [Probe("p1", PROMPT, response=RESPONSE), Probe("p2", "a b c", response="d")]
    first, second = score(model, ScoringConfig(candidates="all", n_boot=0), probes)
    assert [r for r, _ in inj.failed][:5] == [16, 8, 4, 2, 1]
    assert first.result is None
    assert first.error.startswith("OutOfMemoryError: probe 'p1' ran out of memory in a candidate batch of 1 row")
    assert "16 -> 8 -> 4 -> 2 -> 1" in first.error and "smallest batch tried was 1" in first.error
    assert second.result is None and "probe 'p2' ran out of memory" in second.error
    with pytest.raises(torch.OutOfMemoryError, match=r"smallest batch tried was 1"):
        score(model, ScoringConfig(candidates="all", n_boot=0), on_error="raise")


def test_out_of_memory_in_generation_is_named_and_not_retried():
    """Generation forwards num_samples rows whatever the batch size: no pointless retries."""
    model = tiny_gpt2(V, 0)
    inj = Injector(model, lambda rows, n: rows == 4, cuda_oom)
    config = ScoringConfig(candidates="all", decoding="top-p", num_samples=4, max_new_tokens=2, n_boot=0)
    (rec,) = score(model, config, [Probe("p1", PROMPT)])
    assert rec.error.startswith("OutOfMemoryError: probe 'p1' ran out of memory in response generation (4 rows")
    assert len(inj.failed) == 1
