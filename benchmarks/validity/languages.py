"""Languages whose true distribution is computable exactly, for the signal-validity study.

A language here is a probabilistic finite-state source (a hidden Markov model in
its Mealy form): from hidden state ``s`` it emits token ``v`` and moves to state
``s'`` with probability ``A[s, v, s']`` (``sum_{v, s'} A[s, v, s'] = 1`` for every
``s``). Every sequence starts with the start token ``BOS`` (id 0, never emitted
after that) in a state drawn from ``initial``. The forward algorithm then gives
the exact next-token distribution ``P(x_{t+1} | x_<=t)`` of every prefix, so the
language can be wrapped as a causal LM (:mod:`benchmarks.validity.truth`) that the
engine scores like any model.

Two families:

* :func:`random_hmm` - a classic HMM (``A[s, v, s'] = E[s, v] T[s, s']``) with
  Dirichlet emissions and transitions; the emission concentration sets its
  entropy level.
* :func:`grammar_language` - an English-like sentence grammar (determiners,
  optional adjectives, nouns and verbs that agree in number, relative clauses
  over which the main verb still agrees with its subject, prepositional
  objects), compiled to the same form: the rest of a sentence pins most of its
  function words down, as in real text.

Every token keeps a probability floor ``FLOOR`` in every state, so the true
model assigns every candidate a finite log-probability (the engine refuses
non-finite scores); the floor is part of the language's definition, and samples
are drawn from the floored distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

#: Id of the start token; it is only ever the first token of a sequence.
BOS_ID = 0

#: Probability mass spread over every token in every state (then renormalised).
FLOOR = 1e-6


@dataclass(frozen=True)
class Language:
    """A probabilistic finite-state language with exact next-token probabilities.

    Attributes
    ----------
    name : str
        Short name used in records and tables.
    words : tuple of str
        Token texts by id; ``words[0]`` is the start token.
    transitions : numpy.ndarray
        ``A[s, v, s']`` of shape ``[K, V, K]`` (float64), each ``A[s]`` summing to 1.
    initial : numpy.ndarray
        Distribution of the first hidden state, shape ``[K]``.
    state_names : tuple of str
        Optional names of the hidden states (the grammar's nonterminals).
    """

    name: str
    words: tuple
    transitions: np.ndarray
    initial: np.ndarray
    state_names: tuple = ()

    def __post_init__(self) -> None:
        a = self.transitions
        if a.ndim != 3 or a.shape[0] != a.shape[2] or a.shape[1] != len(self.words):
            raise ValueError(f"transitions must be [K, V, K] with V = {len(self.words)}, got {a.shape}")
        if not np.allclose(a.sum(axis=(1, 2)), 1.0, atol=1e-9):
            raise ValueError("each state's emission-and-move probabilities must sum to 1")
        if not np.isclose(self.initial.sum(), 1.0, atol=1e-9) or self.initial.shape != (a.shape[0],):
            raise ValueError("initial must be a distribution over the K states")

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, length: int, seed: int) -> np.ndarray:
        """``n`` sequences of ``length`` tokens, each ``[BOS, x_1, ..., x_{length-1}]`` (int64)."""
        rng = np.random.default_rng(seed)
        k, v = self.num_states, self.vocab_size
        flat = self.transitions.reshape(k, v * k)
        cdf = np.cumsum(flat, axis=1)
        cdf[:, -1] = 1.0
        out = np.empty((n, length), dtype=np.int64)
        out[:, 0] = BOS_ID
        state = rng.choice(k, size=n, p=self.initial)
        for t in range(1, length):
            u = rng.random(n)
            idx = np.minimum((cdf[state] < u[:, None]).sum(axis=1), v * k - 1)
            out[:, t] = idx // k
            state = idx % k
        return out

    # ------------------------------------------------------------------ exact probabilities
    def next_token_log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        """``log P(x_{t+1} = v | x_<=t)`` for every row and position, shape ``[B, T, V]`` (float64).

        Parameters
        ----------
        ids : torch.Tensor
            ``[B, T]`` token ids; column 0 must be the start token.

        Raises
        ------
        ValueError
            If a row does not start with the start token, or an id is out of range.
        """
        if ids.ndim != 2:
            raise ValueError(f"ids must be [B, T], got shape {tuple(ids.shape)}")
        if bool((ids[:, 0] != BOS_ID).any()):
            raise ValueError("every sequence must start with the start token (id 0)")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        a = torch.as_tensor(self.transitions, dtype=torch.float64)
        emit = a.sum(dim=2)  # [K, V]: P(emit v | s)
        by_token = a.permute(1, 0, 2).contiguous()  # [V, K, K]
        bsz, t_len = ids.shape
        alpha = torch.as_tensor(self.initial, dtype=torch.float64).expand(bsz, -1).clone()
        out = torch.empty(bsz, t_len, self.vocab_size, dtype=torch.float64)
        out[:, 0] = torch.log(alpha @ emit)
        for t in range(1, t_len):
            step = by_token[ids[:, t]]  # [B, K, K]
            alpha = torch.bmm(alpha.unsqueeze(1), step).squeeze(1)
            alpha = alpha / alpha.sum(dim=1, keepdim=True)
            out[:, t] = torch.log(alpha @ emit)
        return out

    def sequence_nll(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-token true negative log-likelihood of ``ids[:, 1:]``, shape ``[B, T-1]``."""
        lp = self.next_token_log_probs(ids)[:, :-1]
        return -lp.gather(2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)

    def restricted(self, states: Sequence[int | str], name: str) -> "Language":
        """The sub-language that never leaves ``states``: moves out of them are dropped, rows renormalised.

        It emits the same vocabulary with a narrower distribution (the
        fine-tuning data of the forgetting regime).
        """
        keep = np.zeros(self.num_states, dtype=bool)
        keep[[self.state_names.index(s) if isinstance(s, str) else int(s) for s in states]] = True
        a = self.transitions.copy()
        a[:, :, ~keep] = 0.0
        a[~keep] = self.transitions[~keep]  # unreachable rows stay valid
        a /= a.sum(axis=(1, 2), keepdims=True)
        initial = np.where(keep, self.initial, 0.0)
        if initial.sum() == 0:
            initial = keep / keep.sum()
        return Language(name=name, words=self.words, transitions=a, initial=initial / initial.sum(),
                        state_names=self.state_names)

    def decode(self, ids: Sequence[int]) -> str:
        """Space-joined token texts of ``ids``, without the start token."""
        return " ".join(self.words[int(i)] for i in ids if int(i) != BOS_ID)


def _floored(a: np.ndarray) -> np.ndarray:
    """Mix ``FLOOR`` of uniform mass (over tokens 1.. and every next state) into each state's row."""
    k, v, _ = a.shape
    uniform = np.zeros_like(a)
    uniform[:, 1:, :] = 1.0 / ((v - 1) * k)
    # The start token keeps a tiny share too, so every candidate has a finite score.
    uniform[:, 0, :] = FLOOR / k
    uniform /= uniform.sum(axis=(1, 2), keepdims=True)
    return (1.0 - FLOOR) * a + FLOOR * uniform


def random_hmm(
    name: str,
    *,
    num_states: int = 12,
    num_words: int = 40,
    emission_concentration: float = 0.2,
    transition_concentration: float = 0.3,
    seed: int = 0,
) -> Language:
    """A random HMM: Dirichlet emissions and transitions.

    Parameters
    ----------
    name : str
    num_states, num_words : int
        Hidden states ``K`` and emitted words (the vocabulary has one more
        token, the start token).
    emission_concentration, transition_concentration : float
        Dirichlet concentrations; smaller means sparser rows and a lower
        entropy rate.
    seed : int

    Returns
    -------
    Language
    """
    rng = np.random.default_rng(seed)
    emissions = rng.dirichlet(np.full(num_words, emission_concentration), size=num_states)
    moves = rng.dirichlet(np.full(num_states, transition_concentration), size=num_states)
    a = np.zeros((num_states, num_words + 1, num_states))
    a[:, 1:, :] = emissions[:, :, None] * moves[:, None, :]
    words = ("<s>",) + tuple(f"w{i}" for i in range(num_words))
    initial = rng.dirichlet(np.ones(num_states))
    return Language(name=name, words=words, transitions=_floored(a), initial=initial)


# ---------------------------------------------------------------------- the grammar language

_NOUNS = {"sg": ("dog", "cat", "bird", "child", "teacher", "farmer"),
          "pl": ("dogs", "cats", "birds", "children", "teachers", "farmers")}
_VERBS = {"sg": ("sees", "likes", "helps", "finds", "calls", "follows"),
          "pl": ("see", "like", "help", "find", "call", "follow")}
_DETS = {"sg": (("the", 0.5), ("a", 0.3), ("this", 0.2)),
         "pl": (("the", 0.6), ("some", 0.2), ("these", 0.2))}
_ADJS = ("big", "small", "old", "young", "happy", "quiet")
_PREPS = ("near", "with", "behind")


def _zipf(words: Sequence[str]) -> list[tuple[str, float]]:
    w = 1.0 / np.arange(1, len(words) + 1)
    w = w / w.sum()
    return list(zip(words, w.tolist()))


def grammar_language(name: str = "grammar") -> Language:
    """An English-like sentence language with number agreement and a long-range dependency.

    Sentences: ``DET [ADJ] NOUN [that VERB DET NOUN] VERB [(DET | PREP DET) NOUN] (. | and)``.
    The determiner, the noun and both verbs agree in number with the subject,
    and the main verb agrees with it across the relative clause (whose object
    has a number of its own). Word choices within a class follow a Zipf law.

    Returns
    -------
    Language
    """
    words: list[str] = ["<s>", ".", "and", "that"]
    for group in (_NOUNS["sg"], _NOUNS["pl"], _VERBS["sg"], _VERBS["pl"], _ADJS, _PREPS):
        words += list(group)
    for num in ("sg", "pl"):
        words += [w for w, _ in _DETS[num] if w not in words]
    index = {w: i for i, w in enumerate(words)}

    arcs: list[tuple[str, list[tuple[str, float]], str, float]] = []  # (src, emissions, dst, prob)

    def arc(src: str, emissions: list[tuple[str, float]], dst: str, prob: float) -> None:
        arcs.append((src, emissions, dst, prob))

    all_nouns = _zipf(_NOUNS["sg"] + _NOUNS["pl"])
    for num, p_num in (("sg", 0.6), ("pl", 0.4)):
        arc("start", [(w, p) for w, p in _DETS[num]], f"np_{num}", p_num)
        arc(f"np_{num}", _zipf(_ADJS), f"noun_{num}", 0.35)
        arc(f"np_{num}", _zipf(_NOUNS[num]), f"after_noun_{num}", 0.65)
        arc(f"noun_{num}", _zipf(_NOUNS[num]), f"after_noun_{num}", 1.0)
        arc(f"after_noun_{num}", [("that", 1.0)], f"rel_verb_{num}", 0.3)
        arc(f"after_noun_{num}", _zipf(_VERBS[num]), "after_verb", 0.7)
        arc(f"rel_verb_{num}", _zipf(_VERBS[num]), f"rel_det_{num}", 1.0)
        arc(f"rel_det_{num}", [("the", 1.0)], f"rel_noun_{num}", 1.0)
        arc(f"rel_noun_{num}", all_nouns, f"main_verb_{num}", 1.0)
        arc(f"main_verb_{num}", _zipf(_VERBS[num]), "after_verb", 1.0)
    arc("after_verb", [(".", 1.0)], "start", 0.45)
    arc("after_verb", [("the", 1.0)], "obj_noun", 0.35)
    arc("after_verb", _zipf(_PREPS), "pp_det", 0.20)
    arc("pp_det", [("the", 1.0)], "obj_noun", 1.0)
    arc("obj_noun", all_nouns, "end", 1.0)
    arc("end", [(".", 1.0)], "start", 0.8)
    arc("end", [("and", 1.0)], "start", 0.2)

    states = sorted({a[0] for a in arcs} | {a[2] for a in arcs}, key=lambda s: (s != "start", s))
    sidx = {s: i for i, s in enumerate(states)}
    a = np.zeros((len(states), len(words), len(states)))
    for src, emissions, dst, prob in arcs:
        for word, p in emissions:
            a[sidx[src], index[word], sidx[dst]] += prob * p
    initial = np.zeros(len(states))
    initial[sidx["start"]] = 1.0
    return Language(name=name, words=tuple(words), transitions=_floored(a), initial=initial,
                    state_names=tuple(states))


#: States of the grammar's narrow sub-language: singular subjects, no relative clauses.
GRAMMAR_NARROW_STATES = ("start", "np_sg", "noun_sg", "after_noun_sg", "after_verb", "obj_noun", "pp_det", "end")


def narrow_language(language: Language) -> Language:
    """The fine-tuning sub-language of the forgetting regime.

    The grammar keeps singular subjects without relative clauses; a random HMM
    keeps its three most visited states.
    """
    if language.state_names and "start" in language.state_names:
        return language.restricted(GRAMMAR_NARROW_STATES, f"{language.name}-narrow")
    moves = language.transitions.sum(axis=1)  # [K, K]
    dist = language.initial.copy()
    visits = np.zeros(language.num_states)
    for _ in range(64):
        dist = dist @ moves
        visits += dist
    keep = np.argsort(-visits)[:3]
    return language.restricted(sorted(keep.tolist()), f"{language.name}-narrow")


def hmm_levels(seed: int = 0) -> list[Language]:
    """The study's three random HMM languages, from low to high entropy rate."""
    return [
        random_hmm("hmm-low", emission_concentration=0.01, transition_concentration=0.05, seed=seed),
        random_hmm("hmm-mid", emission_concentration=0.05, transition_concentration=0.1, seed=seed),
        random_hmm("hmm-high", emission_concentration=0.3, transition_concentration=0.02, seed=seed),
    ]


def entropy_rate(language: Language, *, n: int = 2000, length: int = 64, seed: int = 12345,
                 sample: Optional[np.ndarray] = None) -> float:
    """Monte-Carlo estimate of the language's per-token entropy rate (nats), from a sample."""
    ids = torch.as_tensor(language.sample(n, length, seed) if sample is None else sample)
    return float(language.sequence_nll(ids).mean())
