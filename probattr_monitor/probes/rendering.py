"""Rendering probes to the token ids the model conditions on.

Plain probes are the prompt's own tokens after one start token: the project's
single BOS policy, :func:`probattr_monitor.tokenization.prepend_bos_ids` (BOS if
the tokenizer has one, else EOS as the paper did for GPT-2), re-exported here.
Chat probes go through the tokenizer's chat template as a single user turn
followed by the generation prompt. Either way the result
carries a ``template_mask`` marking the tokens that are not part of the prompt
text (start token, system prompt, role headers, ...): they are scored and stay in
the per-token tables, but are excluded from the aggregate metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from probattr_monitor.probes.core import Probe
from probattr_monitor.tokenization import conditioning_token_id, encode_text, ids_from_encoding, prepend_bos_ids

__all__ = ["BOS_POLICIES", "RenderedPrompt", "conditioning_token_id", "prepend_bos_ids", "render"]

logger = logging.getLogger(__name__)

BOS_POLICIES: tuple[str, ...] = ("auto", "always", "never")

# Private-use code points: never produced by chat templates, kept whole by tokenizers'
# text handling, so the placeholder can be found in the rendered string.
_PLACEHOLDER = "\ue000probattr-user-content\ue001"


@dataclass(frozen=True)
class RenderedPrompt:
    """Token ids of a rendered prompt and which of them are template tokens.

    Parameters
    ----------
    ids : list of int
        The prompt exactly as the model conditions on it (start token included).
    template_mask : list of bool
        ``True`` for tokens that are not part of the prompt text (BOS/EOS start
        token, chat-template tokens); same length as ``ids``.
    """

    ids: list[int]
    template_mask: list[bool]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.template_mask):
            raise ValueError(f"ids ({len(self.ids)}) and template_mask ({len(self.template_mask)}) "
                             "must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def content_positions(self) -> list[int]:
        """Indices of the prompt-text tokens (where ``template_mask`` is false)."""
        return [i for i, t in enumerate(self.template_mask) if not t]

    @property
    def content_ids(self) -> list[int]:
        """The prompt-text tokens, in order."""
        return [self.ids[i] for i in self.content_positions]


def render(probe: Probe | str, tokenizer: Any, bos_policy: str = "auto", *,
           chat: bool | None = None) -> RenderedPrompt:
    """Render a probe to token ids with a mask of template tokens.

    Parameters
    ----------
    probe : Probe or str
        The probe (a bare string is a plain prompt).
    tokenizer : transformers tokenizer
        Used with ``add_special_tokens=False`` for plain text, and through
        ``apply_chat_template`` for chat probes.
    bos_policy : {"auto", "always", "never"}
        ``"auto"``: plain prompts get a start token from
        :func:`~probattr_monitor.tokenization.prepend_bos_ids` (BOS, else EOS;
        not doubled if the text already tokenizes to it);
        chat prompts are left as the template renders them (templates include
        their own BOS when the model uses one). ``"always"``: apply
        :func:`prepend_bos_ids` in both cases. ``"never"``: no start token is
        added (the template's own tokens are kept).
    chat : bool, optional
        Override ``probe.chat``: render through the chat template or not.

    Returns
    -------
    RenderedPrompt
        ``ids`` and ``template_mask`` (``True`` = start/template token).

    Raises
    ------
    ValueError
        Unknown ``bos_policy``; a chat rendering is requested but the tokenizer
        has no chat template, or the user content cannot be located in it.
    """
    if bos_policy not in BOS_POLICIES:
        raise ValueError(f"bos_policy must be one of {', '.join(BOS_POLICIES)}, got {bos_policy!r}")
    if isinstance(probe, str):
        prompt, use_chat, label = probe, bool(chat), "prompt"
    elif isinstance(probe, Probe):
        prompt, use_chat, label = probe.prompt, probe.chat if chat is None else chat, f"probe {probe.id!r}"
    else:
        raise TypeError(f"expected a Probe or str, got {type(probe).__name__}")

    if use_chat:
        ids, mask = _render_chat(prompt, tokenizer, label)
        add_start = bos_policy == "always"
    else:
        ids = encode_text(tokenizer, prompt)
        mask = [False] * len(ids)
        add_start = bos_policy != "never"
    if add_start:
        if conditioning_token_id(tokenizer) is None:
            logger.warning("tokenizer %s has neither a BOS nor an EOS token: no start token is prepended "
                           "to %s and its first token cannot be scored", type(tokenizer).__name__, label)
        with_start = prepend_bos_ids(tokenizer, ids)
        mask = [True] * (len(with_start) - len(ids)) + mask
        ids = with_start
    return RenderedPrompt(ids=ids, template_mask=mask)


def _apply_template(tokenizer: Any, content: str, *, tokenize: bool) -> Any:
    return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=tokenize)


def _render_chat(prompt: str, tokenizer: Any, label: str) -> tuple[list[int], list[bool]]:
    if not getattr(tokenizer, "chat_template", None) or not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError(f"cannot render {label} with the chat template: tokenizer "
                         f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} has no chat "
                         "template (render it as plain text with chat=False, or set tokenizer.chat_template)")
    ids = ids_from_encoding(_apply_template(tokenizer, prompt, tokenize=True), what="chat template ids")
    text = _apply_template(tokenizer, prompt, tokenize=False)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
    start, end = _content_span(tokenizer, text, prompt, label)
    mask = _mask_from_offsets(tokenizer, text, ids, start, end)
    if mask is None:
        mask = _mask_from_segments(tokenizer, text, ids, start, end)
    if mask is None:
        raise ValueError(f"cannot align the chat-template tokens of {label} with the user content: "
                         "the template's token ids differ from tokenizing its rendered text")
    if all(mask):
        raise ValueError(f"no user-content tokens found in the chat rendering of {label}")
    return ids, mask


def _content_span(tokenizer: Any, text: str, prompt: str, label: str) -> tuple[int, int]:
    """Character span of the user content in the rendered template ``text``."""
    rendered = _apply_template(tokenizer, _PLACEHOLDER, tokenize=False)
    i = rendered.find(_PLACEHOLDER) if isinstance(rendered, str) else -1
    if i >= 0:
        prefix, suffix = rendered[:i], rendered[i + len(_PLACEHOLDER):]
        if (len(prefix) + len(suffix) <= len(text) and text.startswith(prefix)
                and text.endswith(suffix)):
            return len(prefix), len(text) - len(suffix)
    j = text.find(prompt)
    if j >= 0 and text.find(prompt, j + 1) < 0:
        return j, j + len(prompt)
    raise ValueError(f"cannot locate the user content of {label} in its chat-template rendering")


def _mask_from_offsets(tokenizer: Any, text: str, ids: list[int], start: int, end: int
                       ) -> list[bool] | None:
    """Template mask from character offsets; ``None`` if unavailable or inconsistent."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        enc_ids = ids_from_encoding(enc["input_ids"])
    except (NotImplementedError, ValueError, TypeError, KeyError) as exc:
        logger.debug("offset mapping unavailable (%s); falling back to segment tokenization", exc)
        return None
    if hasattr(offsets, "tolist"):
        offsets = offsets.tolist()
    if len(offsets) == 1 and len(ids) != 1 and isinstance(offsets[0], (list, tuple)) \
            and offsets[0] and isinstance(offsets[0][0], (list, tuple)):
        offsets = offsets[0]
    if enc_ids != ids or len(offsets) != len(ids):
        logger.debug("re-tokenized chat text differs from apply_chat_template ids; trying segments")
        return None
    # A token is content if it overlaps the content span (a token straddling the
    # boundary carries prompt text, so it is kept in the metrics).
    return [not (e > s and e > start and s < end) for s, e in offsets]


def _mask_from_segments(tokenizer: Any, text: str, ids: list[int], start: int, end: int
                        ) -> list[bool] | None:
    """Template mask from tokenizing prefix, content and suffix separately."""
    pre, mid, post = (encode_text(tokenizer, t) for t in (text[:start], text[start:end], text[end:]))
    if pre + mid + post != ids:
        return None
    return [True] * len(pre) + [False] * len(mid) + [True] * len(post)
