"""The baseline attribution methods, from Captum, on the same prompt, response and replacement baseline.

Each method attributes ``f(x) = log P(y | x)`` of the fixed response to the
prompt tokens. Gradient methods act on the input embeddings (the per-token
score sums over the embedding dimension); perturbation methods remove a token
by putting the embedding of its replacement ``r_k`` (the operator of
:mod:`.perturbation`) in its place, so that they perturb exactly as the
metrics do. Captum 0.9 has no ReAgent; it is implemented in :mod:`.reagent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["BASELINES", "BaselineSettings", "baseline_attribution", "require_captum"]

@dataclass(frozen=True)
class BaselineSettings:
    """Sample counts of the sampling methods.

    Attributes
    ----------
    lime_samples : int
        Perturbed prompts LIME fits its surrogate on (Captum's default is 50).
    shap_samples : int
        Interpolation samples of Gradient SHAP (Captum's default is 5).
    rows : int
        Perturbed prompts per forward pass.
    seed : int
        Seed of the sampling methods' torch generator (the global RNG is restored after).
    """

    lime_samples: int = 50
    shap_samples: int = 5
    rows: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("lime_samples", "shap_samples", "rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BaselineSettings.{name} must be a positive integer, got {value!r}")


def require_captum() -> None:
    """Raise ``ImportError`` naming the install command if Captum is missing."""
    try:
        import captum  # noqa: F401
    except ImportError:
        raise ImportError("the baseline methods need Captum: pip install 'captum>=0.7' "
                          "(or run --methods as,reagent)") from None


class _Ridge:
    """LIME's weighted linear surrogate, fitted in closed form (Captum's default needs scikit-learn)."""

    def __init__(self, alpha: float = 1e-3) -> None:
        self.alpha = alpha
        self.coef: torch.Tensor = torch.empty(0)

    def fit(self, train_data: Any, **kwargs: Any) -> dict:
        xs, ys, ws = [], [], []
        for batch in train_data:
            xs.append(batch[0].double())
            ys.append(batch[1].double().reshape(-1))
            ws.append(batch[2].double().reshape(-1) if len(batch) > 2 else torch.ones(len(batch[0])))
        x, y, w = torch.cat(xs), torch.cat(ys), torch.cat(ws)
        x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        gram = x1.T @ (w[:, None] * x1) + self.alpha * torch.eye(x1.shape[1], dtype=x.dtype)
        self.coef = torch.linalg.solve(gram, x1.T @ (w * y))[:-1]
        return {}

    def representation(self) -> torch.Tensor:
        return self.coef.float()[None]


def _forward(model: Any, response: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``log P(y | prompt embeddings)`` for a batch of prompt embeddings ``[B, n, d]``."""
    embed = model.get_input_embeddings()
    m = response.shape[0]

    def forward(prompt_embeds: torch.Tensor) -> torch.Tensor:
        b, n = prompt_embeds.shape[:2]
        resp = embed(response)[None].expand(b, m, -1).to(prompt_embeds.dtype)
        out = model(inputs_embeds=torch.cat([prompt_embeds, resp], dim=1))
        logits = out.logits if hasattr(out, "logits") else out[0]
        logp = torch.log_softmax(logits[:, n - 1:n + m - 1].float(), dim=-1)
        return logp.gather(-1, response.expand(b, m).unsqueeze(-1)).squeeze(-1).sum(-1)

    return forward


def _input_x_gradient(fwd, x, base, mask, s):
    from captum.attr import InputXGradient
    return InputXGradient(fwd).attribute(x).sum(-1)


def _gradient_shap(fwd, x, base, mask, s):
    from captum.attr import GradientShap
    return GradientShap(fwd).attribute(x, baselines=base, n_samples=s.shap_samples, stdevs=0.0).sum(-1)


def _lime(fwd, x, base, mask, s):
    from captum.attr import Lime
    lime = Lime(fwd, interpretable_model=_Ridge())
    return lime.attribute(x, baselines=base, feature_mask=mask, n_samples=s.lime_samples,
                          perturbations_per_eval=s.rows)[..., 0]


def _occlusion(fwd, x, base, mask, s):
    from captum.attr import Occlusion
    d = x.shape[-1]
    return Occlusion(fwd).attribute(x, sliding_window_shapes=(1, d), strides=(1, d), baselines=base,
                                    perturbations_per_eval=s.rows).mean(-1)


#: The baseline methods by CLI name, in the paper's order.
BASELINES = {
    "input_x_gradient": _input_x_gradient,
    "gradient_shap": _gradient_shap,
    "lime": _lime,
    "occlusion": _occlusion,
}


def baseline_attribution(method: str, model: Any, prompt: torch.Tensor, response: torch.Tensor,
                         replacements: torch.Tensor, settings: BaselineSettings) -> np.ndarray:
    """One baseline's attribution of every prompt position (``[n]``, float64; position 0 included).

    Raises
    ------
    ValueError
        For a method not in :data:`BASELINES`.
    """
    if method not in BASELINES:
        raise ValueError(f"unknown baseline method {method!r}; known: {', '.join(BASELINES)}")
    embed = model.get_input_embeddings()
    with torch.no_grad():
        x = embed(prompt)[None].detach()
        base = embed(replacements)[None].detach()
    mask = torch.arange(prompt.shape[0], device=prompt.device)[None, :, None].expand_as(x)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(settings.seed)
        attr = BASELINES[method](_forward(model, response), x.clone().requires_grad_(True), base, mask, settings)
    return attr.detach()[0].double().cpu().numpy()
