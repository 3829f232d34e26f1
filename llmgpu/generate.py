"""The generation loop: prefill the prompt once, then decode one token at a time.

:func:`generate_step` yields token ids; :func:`stream_text` turns them into text pieces (always whole
UTF-8 characters), stops at an end-of-sequence token or a stop string, and fills a
:class:`GenerationStats`.

Context: a prompt longer than the model's context (``model.max_seq``) is an error raised before any
work. ``max_tokens`` that would run past the context are not an error: generation stops when the
context is full, with ``finish_reason == "context"`` (the last token needs no cache slot, so a prompt
of L tokens leaves room for ``max_seq - L + 1`` new ones).

Cache reuse: :func:`generate_step` can keep the first ``cached`` prompt tokens that are already in
the model's KV cache. The model's cache knows the ids it holds (``model.cached_ids``), and
:func:`cached_prefix` compares them with a new prompt, so a chat prefills only what is new since its
last turn (the last sampled token of a turn is never decoded, so it is not in the cache).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from . import checks
from .sample import Sampler
from .tokenizer import IncrementalDetokenizer

@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens of the prompt, including those reused from the cache
    cached_tokens: int = 0  # of which reused from the KV cache (not prefilled again)
    prefill_s: float = 0.0  # prefill of the new prompt tokens and the first sample
    new_tokens: int = 0  # tokens sampled (an end-of-sequence token included)
    decode_s: float = 0.0  # the decode calls and the sampling after each
    decode_calls: int = 0
    finish_reason: str = ""  # "eos" | "stop" (a stop string) | "length" (max_tokens) | "context" | "" (cut off)

    @property
    def prefill_tps(self) -> float:
        n = self.prompt_tokens - self.cached_tokens
        return n / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.decode_calls / self.decode_s if self.decode_s > 0 else 0.0

    def summary(self, device: str = "") -> str:
        """One line: adapter, prompt tokens and prefill speed, new tokens and decode speed."""
        cached = f" ({self.cached_tokens} cached)" if self.cached_tokens else ""
        head = f"{device} | " if device else ""
        return (f"{head}prompt {self.prompt_tokens} tokens{cached}, {self.prefill_tps:.1f} t/s | "
                f"generated {self.new_tokens} tokens, {self.decode_tps:.1f} t/s")


def cached_prefix(model, ids: Sequence[int]) -> int:
    """How many leading ``ids`` the model's KV cache already holds."""
    n = 0
    for a, b in zip(model.cached_ids, ids):
        if a != b:
            break
        n += 1
    return n


def check_context(model, n_prompt: int, what: str = "the prompt has",
                  fix: str = "shorten the prompt") -> None:
    """The one check that a prompt fits the model's context (before any work); `what` and `fix` let
    a caller word it for its case (a chat, an evaluation)."""
    if n_prompt == 0:
        raise ValueError("the prompt is empty; give at least one token")
    if n_prompt > model.max_seq:
        raise ValueError(f"{what} {n_prompt} tokens, more than the context of {model.max_seq}; "
                         f"{fix} or load the model with a larger context (--ctx / max_seq)")


def generate_step(model, prompt_ids: Sequence[int], sampler: Sampler, max_tokens: int, *,
                  cached: int = 0, stats: GenerationStats | None = None,
                  on_token: Callable | None = None) -> Iterator[int]:
    """Yield up to ``max_tokens`` sampled token ids that continue ``prompt_ids``.

    The first ``cached`` prompt ids are reused from the model's KV cache where it holds them (at
    most all but the last prompt token: its logits start generation); the rest of the cache is
    dropped, the remaining prompt is prefilled in one call, then each token is decoded as the
    consumer asks for the next one (the last one yielded is never decoded). Stopping early (``break``)
    is fine. ``stats`` (if given) is filled in as it goes. ``on_token(token, logits)`` (if given) is
    called with each sampled id and the logits the sampler chose it from (logprobs; it may raise to stop).
    """
    prompt = [int(t) for t in prompt_ids]
    checks.positive_int("max_tokens", max_tokens)
    check_context(model, len(prompt))
    cached = max(0, min(int(cached), cached_prefix(model, prompt), len(prompt) - 1))
    st = stats if stats is not None else GenerationStats()
    st.prompt_tokens, st.cached_tokens = len(prompt), cached
    history = list(prompt)
    t0 = time.perf_counter()
    model.truncate(cached)
    if on_token is None and getattr(model, "gpu_sampling", False):
        yield from _generate_on_gpu(model, prompt[cached:], history, sampler, max_tokens, st, t0)
        return
    logits = model.prefill(prompt[cached:])
    token = sampler(logits, history)
    st.prefill_s = time.perf_counter() - t0
    if on_token is not None:
        on_token(token, logits)
    while True:
        st.new_tokens += 1
        history.append(token)
        yield token
        if st.new_tokens >= max_tokens:
            st.finish_reason = "length"
            return
        if model.pos >= model.max_seq:
            st.finish_reason = "context"
            return
        t0 = time.perf_counter()
        logits = model.decode(token)
        token = sampler(logits, history)
        st.decode_s += time.perf_counter() - t0
        st.decode_calls += 1
        if on_token is not None:
            on_token(token, logits)


def _generate_on_gpu(model, new_ids, history, sampler, max_tokens, st, t0) -> Iterator[int]:
    """generate_step's loop with the sampler on the GPU (llmgpu/loop.py): the same stops, the same
    cache contents after it; the tokens agree with the CPU sampler's when greedy (a seeded random
    sampler draws from the same distribution, through another random generator)."""
    from .loop import TokenLoop
    model.prefill(new_ids, read=False)
    limit = min(max_tokens, model.max_seq - model.pos + 1)  # the last token needs no cache slot
    for token in TokenLoop(model, sampler, **model.loop_queue).tokens(history, limit):
        now = time.perf_counter()
        if st.new_tokens == 0:
            st.prefill_s = now - t0
        else:
            st.decode_s += now - t0
            st.decode_calls += 1
        st.new_tokens += 1
        yield token
        t0 = time.perf_counter()
    st.finish_reason = "length" if st.new_tokens >= max_tokens else "context"


def stop_index(text: str, stops: Sequence[str]) -> int:
    """Where the earliest stop string starts in ``text`` (-1 if none)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def partial_stop(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string (to hold back)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def stream_text(model, prompt_ids: Sequence[int], sampler: Sampler, max_tokens: int, *,
                stop: str | Sequence[str] | None = None, cached: int = 0, stats: GenerationStats | None = None,
                token_ids: list[int] | None = None, on_token: Callable | None = None) -> Iterator[str]:
    """Yield the text of the continuation of ``prompt_ids`` in pieces, each whole UTF-8 characters.

    Ends at an end-of-sequence token (``model.ckpt.eos_token_ids``; not shown), at the first stop
    string (the text ends just before it; text that might begin a stop string is held back until it
    is clear), or after ``max_tokens`` tokens. Sampled ids are appended to ``token_ids`` if given;
    ``on_token`` is passed to :func:`generate_step`.
    """
    stops = [s for s in ([stop] if isinstance(stop, str) else stop or ()) if s]
    eos = set(model.ckpt.eos_token_ids)
    detok = IncrementalDetokenizer(model.ckpt.tokenizer)
    st = stats if stats is not None else GenerationStats()
    pending = ""
    steps = generate_step(model, prompt_ids, sampler, max_tokens, cached=cached, stats=st, on_token=on_token)
    try:
        for token in steps:
            if token_ids is not None:
                token_ids.append(token)
            if token in eos:
                st.finish_reason = "eos"
                break
            pending += detok.add(token)
            if stops:
                i = stop_index(pending, stops)
                if i >= 0:
                    st.finish_reason = "stop"
                    if i:
                        yield pending[:i]
                    return
                hold = partial_stop(pending, stops)
                out, pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
            else:
                out, pending = pending, ""
            if out:
                yield out
        else:
            pending += detok.flush()  # only a character cut off by max_tokens (ends in U+FFFD)
        if stops and (i := stop_index(pending, stops)) >= 0:
            st.finish_reason = "stop"
            pending = pending[:i]
        if pending:
            yield pending
    finally:
        steps.close()
