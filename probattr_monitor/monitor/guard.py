"""Leave training exactly as it was: RNG states, module modes, grad mode, autocast, TF32."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch

from probattr_monitor.engine.modes import preserved_module_modes


@contextlib.contextmanager
def training_state_guard(model: torch.nn.Module) -> Iterator[None]:
    """Snapshot everything scoring could disturb and restore it on exit.

    Restored: the python, numpy, torch CPU and every CUDA device's RNG state;
    each submodule's train/eval flag; grad mode (scoring runs under
    ``torch.no_grad``, never ``inference_mode``, whose tensors break a later
    backward); autocast is disabled inside (scores are computed in the model's
    own precision) and restored; the TF32 flags are restored.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    grad = torch.is_grad_enabled()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(preserved_module_modes(model))
            for dt in device_types:
                stack.enter_context(torch.autocast(device_type=dt, enabled=False))
            stack.enter_context(torch.no_grad())
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.set_grad_enabled(grad)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
