"""Log-probabilities of generated tokens, for the Python API (``logprobs=k``) and the server.

A token's log-probability is the log-softmax of the logits the sampler chose it from (the model's own
distribution: before the repetition penalty, top-k/top-p/min-p and temperature, as OpenAI reports
them), so ``logprob`` of the i-th generated token equals ``log_softmax(llm.logits(prompt + out[:i])[-1])``
at that token. ``top`` lists the ``k`` most likely tokens of the same distribution, most likely first.

Which tokens are reported: those whose text starts inside the returned text. An end-of-sequence
token and the tokens of a stop string (and anything after it) are not reported; a token whose text is
empty (a skipped special token, the first bytes of a split character) goes with the text after it.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .tokenizer import IncrementalDetokenizer


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str  # the token's own text (special tokens included; a partial character shows as U+FFFD)
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...]  # the k most likely tokens, most likely first
    offset: int = 0  # where the token's text starts in the answer (tokens may split a character)


class Piece(str):
    """A text piece of a stream with ``logprobs``: the :class:`TokenLogprob` of the tokens behind it."""
    logprobs: list[TokenLogprob]

    def __new__(cls, text: str, logprobs: list[TokenLogprob]):
        s = super().__new__(cls, text)
        s.logprobs = logprobs
        return s


class Completion(str):
    """``generate(..., logprobs=k)``'s answer: the text, ``logprobs`` (one per token) and ``finish_reason``."""
    logprobs: list[TokenLogprob]
    finish_reason: str

    def __new__(cls, text: str, logprobs: list[TokenLogprob], finish_reason: str):
        s = super().__new__(cls, text)
        s.logprobs, s.finish_reason = logprobs, finish_reason
        return s


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-softmax of (..., vocab) logits, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"logprobs must be an integer >= 0 (the number of alternatives per token), got {k!r}")
    return int(k)


def token_logprob(tokenizer, logits: np.ndarray, token: int, k: int, offset: int = 0) -> TokenLogprob:
    lp = log_softmax(logits)

    def text(t):
        return tokenizer.decode([int(t)], skip_special_tokens=False)

    k = min(k, lp.size)
    top = np.argpartition(-lp, k - 1)[:k] if 0 < k < lp.size else np.arange(lp.size if k else 0)
    top = top[np.argsort(-lp[top], kind="stable")]
    return TokenLogprob(int(token), text(token), float(lp[token]),
                        tuple(TopLogprob(int(t), text(t), float(lp[t])) for t in top), offset)


class LogprobTracker:
    """``on_token`` callback for :func:`~llmgpu.generate.stream_text` that records each token's logprobs
    and where its text starts, so :meth:`take` can hand them out with the text pieces they belong to.
    It decodes the same ids with the same detokenizer as ``stream_text``, so the offsets agree."""

    def __init__(self, tokenizer, eos_ids, k: int):
        self.tokenizer, self.eos, self.k = tokenizer, set(eos_ids), k
        self.detok = IncrementalDetokenizer(tokenizer)
        self.pos = 0  # length of the text decoded so far
        self.pending: list[tuple[int, TokenLogprob]] = []  # (text start, entry), not yet handed out

    def __call__(self, token: int, logits: np.ndarray) -> None:
        if token in self.eos:
            return
        self.pending.append((self.pos, token_logprob(self.tokenizer, logits, token, self.k, self.pos)))
        self.pos += len(self.detok.add(token))

    def take(self, end: int) -> list[TokenLogprob]:
        """The entries of the tokens whose text starts before offset ``end`` of the returned text."""
        n = 0
        while n < len(self.pending) and self.pending[n][0] < end:
            n += 1
        out, self.pending = [e for _, e in self.pending[:n]], self.pending[n:]
        return out


def stream_with_logprobs(model, ids, sampler, max_tokens: int, k: int, **kwargs) -> Iterator[Piece]:
    """:func:`~llmgpu.generate.stream_text` whose pieces are :class:`Piece` s carrying their logprobs.
    ``kwargs`` go to ``stream_text`` (an ``on_token`` there is called after the tracker)."""
    from .generate import stream_text

    tracker = LogprobTracker(model.ckpt.tokenizer, model.ckpt.eos_token_ids, check_k(k))
    extra = kwargs.pop("on_token", None)

    def on_token(token, logits):
        tracker(token, logits)
        if extra is not None:
            extra(token, logits)

    end = 0
    stream = stream_text(model, ids, sampler, max_tokens, on_token=on_token, **kwargs)
    try:
        for piece in stream:
            end += len(piece)
            yield Piece(piece, tracker.take(end))
    finally:
        stream.close()  # now, not at garbage collection: it records what the KV cache holds
