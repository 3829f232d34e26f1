"""Choosing the next token from logits: greedy, or temperature with top-k / top-p / min-p filters.

All of it sits behind one :class:`Sampler` (``sampler(logits, history) -> token id``), so moving sampling
onto the GPU later changes this file and nothing that calls it. The GPU's version (shaders/sample.wgsl,
``llmgpu.ops.sample``) follows this file's semantics and is tested against it; where this file's choice
is arbitrary (ties at a top-k or top-p cut) it keeps every tied token, and its f32 sums may move a cut
whose prefix mass is within ~1e-6 of top_p.

Defaults are llama.cpp's: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repetition penalty 1.0
(off), repetition window the last 64 tokens. Temperature 0 is greedy (argmax; the filters and the seed do
not matter then, the repetition penalty still does).

Order, as llama.cpp's default chain: repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
The filters see the untempered distribution (softmax of the penalized logits), so temperature changes
how the survivors are weighted, never which tokens survive.

* top-k: keep the k most likely tokens (0: all).
* top-p (nucleus): keep the smallest set of most likely tokens whose probability adds up to at least p
  (1: all).
* min-p: keep tokens whose probability is at least ``min_p`` times the most likely one's (0: all).
* repetition penalty (as Hugging Face's and llama.cpp's): for every distinct token among the last
  ``repeat_last_n`` of ``history`` (``None``: all of it), a positive logit is divided by the penalty and a
  negative one multiplied by it; > 1 discourages repeats, < 1 encourages them.

Logits with a NaN or +inf anywhere (or with no finite value) raise :class:`NonFiniteLogitsError` in
every mode, greedy included, so a broken model stops with an error instead of printing garbage.
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05
DEFAULT_REPETITION_PENALTY = 1.0
DEFAULT_REPEAT_LAST_N = 64


def apply_repetition_penalty(logits: np.ndarray, history, penalty: float,
                             last_n: int | None = DEFAULT_REPEAT_LAST_N) -> np.ndarray:
    """A copy of ``logits`` (vocab,) with the tokens seen in the window penalized (see the module doc)."""
    out = np.array(logits, dtype=np.float32)
    if penalty == 1.0 or not len(history):
        return out
    window = history if last_n is None else history[-last_n:]
    seen = np.unique(np.asarray(window, dtype=np.int64))
    v = out[seen]
    out[seen] = np.where(v > 0, v / penalty, v * penalty)
    return out


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or +inf logits (or only -inf): there is nothing sound to sample from."""


def check_finite(logits: np.ndarray) -> None:
    """Raise :class:`NonFiniteLogitsError` unless the logits can be sampled from.

    -inf is allowed (a masked token) as long as one logit is finite. One max() over the vocabulary
    (NaN propagates through it) costs microseconds, next to milliseconds for the forward pass.
    """
    top = np.max(logits) if np.size(logits) else np.nan
    if not np.isfinite(top):
        what = "NaN" if np.isnan(top) else f"max {top}"
        raise NonFiniteLogitsError(
            f"the model's logits are not finite ({what}), so no token can be chosen: the weights are broken "
            "or the computation overflowed; check the checkpoint (e.g. llmgpu perplexity on a known text), "
            "re-quantize it, or report it")


class Sampler:
    """``sampler(logits, history) -> token id``. Build it with :func:`make_sampler`, which validates.

    ``history`` is the token ids the model has seen so far (prompt and generated); only the repetition
    penalty reads it. The random generator lives in the sampler: the same seed gives the same draws.
    """

    def __init__(self, temperature: float, top_k: int, top_p: float, min_p: float,
                 repetition_penalty: float, repeat_last_n: int | None, seed: int | None):
        self.temperature, self.top_k, self.top_p, self.min_p = temperature, top_k, top_p, min_p
        self.repetition_penalty, self.repeat_last_n, self.seed = repetition_penalty, repeat_last_n, seed
        self.rng = np.random.default_rng(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def __repr__(self) -> str:
        return (f"Sampler(temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, "
                f"min_p={self.min_p}, repetition_penalty={self.repetition_penalty}, "
                f"repeat_last_n={self.repeat_last_n}, seed={self.seed})")

    def candidates(self, logits: np.ndarray, history=()) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, probabilities) the next token is drawn from, most likely first."""
        x = apply_repetition_penalty(logits, history, self.repetition_penalty, self.repeat_last_n)
        check_finite(x)  # before argmax/top-k: both would quietly skip a NaN (or pick it)
        if self.greedy:
            return np.array([int(np.argmax(x))]), np.ones(1)
        k = self.top_k if 0 < self.top_k < x.size else x.size
        idx = np.argpartition(-x, k - 1)[:k] if k < x.size else np.arange(x.size)
        z = x[idx].astype(np.float64)
        top = z.max()
        norm = np.exp(z - top).sum()  # softmax over the top-k set
        if self.min_p > 0.0:  # p >= min_p * p_max, in log space; cutting first keeps the sort short
            keep = z >= top + math.log(self.min_p)
            idx, z = idx[keep], z[keep]
        order = np.argsort(-z, kind="stable")
        idx, z = idx[order], z[order]
        n = z.size
        if self.top_p < 1.0:  # smallest prefix with mass >= top_p (the 1e-9 forgives rounding in cumsum)
            n = min(n, int(np.searchsorted(np.cumsum(np.exp(z - top) / norm), self.top_p - 1e-9)) + 1)
        idx, z = idx[:n], z[:n]
        q = np.exp((z - z[0]) / self.temperature)
        return idx, q / q.sum()

    def __call__(self, logits: np.ndarray, history=()) -> int:
        idx, p = self.candidates(logits, history)
        if idx.size == 1:
            return int(idx[0])
        c = np.cumsum(p)
        return int(idx[min(int(np.searchsorted(c, self.rng.random() * c[-1], side="right")), idx.size - 1)])


def make_sampler(temperature: float = DEFAULT_TEMPERATURE, top_k: int = DEFAULT_TOP_K,
                 top_p: float = DEFAULT_TOP_P, min_p: float = DEFAULT_MIN_P,
                 repetition_penalty: float = DEFAULT_REPETITION_PENALTY,
                 repeat_last_n: int | None = DEFAULT_REPEAT_LAST_N, seed: int | None = None) -> Sampler:
    """A :class:`Sampler`; a value out of range raises ``ValueError`` naming it and its valid range."""
    def number(name, v, ok, rng):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(v) or not ok(v):
            raise ValueError(f"{name} must be {rng}, got {v!r}")
        return v

    temperature = float(number("temperature", temperature, lambda v: v >= 0, "a number >= 0 (0: greedy)"))
    top_k = number("top_k", top_k, lambda v: v >= 0 and v == int(v), "an integer >= 0 (0: off)")
    top_p = float(number("top_p", top_p, lambda v: 0 < v <= 1, "in (0, 1] (1: off)"))
    min_p = float(number("min_p", min_p, lambda v: 0 <= v <= 1, "in [0, 1] (0: off)"))
    repetition_penalty = float(number("repetition_penalty", repetition_penalty, lambda v: v > 0,
                                      "a number > 0 (1: off)"))
    if repeat_last_n is not None:
        repeat_last_n = int(number("repeat_last_n", repeat_last_n, lambda v: v >= 1 and v == int(v),
                                   "an integer >= 1, or None for the whole history"))
    if seed is not None:
        seed = int(number("seed", seed, lambda v: v >= 0 and v == int(v), "an integer >= 0, or None"))
    return Sampler(temperature, int(top_k), top_p, min_p, repetition_penalty, repeat_last_n, seed)
