"""The Python API: ``llm = llmgpu.load(); llm.generate("Why is the sky blue?")``.

``load`` builds the GPU model (:class:`llmgpu.model.Model`); :class:`LLM` wraps it with prompts as
text, sampling keywords, streaming, chats and logits. Sampling defaults are llama.cpp's (see
:mod:`llmgpu.sample`): temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, no repetition penalty;
``temperature=0`` is greedy.

Threads: a model runs one generation at a time. :class:`LLM` (and every :class:`~llmgpu.chat.Chat`
on the same model) takes the model's lock (:func:`model_lock`) for each ``generate``, ``logits`` and
chat turn, so threads sharing a model wait for one another and each gets the result it would have
got alone. A stream holds the lock from its first piece until it is exhausted or closed (``close()``,
or dropping the last reference to it), so a stream kept open blocks other threads; starting another
generation on the same model from the thread that holds an open stream raises ``RuntimeError``
(it would otherwise wait for itself). For parallel generations load one model per thread.

Arguments are checked at the call (types included) and bad ones raise ``TypeError`` or
``ValueError`` naming the argument, before any GPU work.
"""
from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator

import numpy as np

from . import checks
from .chat import Chat
from .defaults import DEFAULT_GROUP_SIZE, DEFAULT_MAX_SEQ
from .generate import GenerationStats, check_context, stream_text
from .logprobs import Completion, check_k, stream_with_logprobs
from .sample import (DEFAULT_MIN_P, DEFAULT_REPEAT_LAST_N, DEFAULT_REPETITION_PENALTY, DEFAULT_TEMPERATURE,
                     DEFAULT_TOP_K, DEFAULT_TOP_P, make_sampler)
from .tokenizer import encode_prompt, render_chat

DEFAULT_MAX_TOKENS = 256


def load(model: str | None = None, *, group_size: int = DEFAULT_GROUP_SIZE, max_seq: int = DEFAULT_MAX_SEQ,
         adapter: str | None = None, progress: bool = True, decode: str = "auto", sampling: str = "auto",
         asymmetric: bool = False, calibrate: str | os.PathLike | bool | None = None,
         requantize: bool = False) -> LLM:
    """Load a model (a Hugging Face directory or hub id, a .gguf file, a q4gsw directory; ``None``: the
    default SmolLM2-135M-Instruct) onto the GPU with a KV cache of ``max_seq`` tokens.

    How float weights become q4gsw (``llmgpu quantize``'s options; each recipe is cached apart):
    ``group_size`` 32, 64 or 128 (per tensor where it does not divide in_features); ``asymmetric=True``
    adds per-group offsets (w = s·q + o); ``calibrate`` (a UTF-8 text file, or True for the text shipped
    with llmgpu) chooses scales against each layer's output error on that text; ``requantize=True``
    dequantizes weights that arrive in 4 bits (GGUF) so that these options apply to them too.

    ``max_seq`` above the model's own context (``max_position_embeddings``) is lowered to it, with a
    warning; ``llm.model.max_seq`` is the context in use. ``decode`` (auto | ops | phased | persistent)
    and ``sampling`` (auto | gpu | cpu) are the CLI's ``--decode`` and ``--sampling``."""
    from .model import Model
    from .quant import GROUP_SIZES

    checks.model_source(model)
    max_seq = checks.positive_int("max_seq", max_seq)
    if not checks.is_int(group_size) or group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size!r}")
    checks.optional_str("adapter", adapter)
    checks.flag("progress", progress)
    quant = {k: v for k, v in (("asymmetric", checks.flag("asymmetric", asymmetric)),
                               ("calibrate", _calibration_source(calibrate)),
                               ("requantize", checks.flag("requantize", requantize))) if v}
    from .defaults import DECODE_SCHEDULES, SAMPLING_PLACES
    for name, v, ok in (("decode", decode, DECODE_SCHEDULES), ("sampling", sampling, SAMPLING_PLACES)):
        if v not in ok:
            raise ValueError(f"{name} must be one of {', '.join(ok)}, got {v!r}")
    m = Model.load(model, group_size=int(group_size), max_seq=max_seq, adapter=adapter, progress=progress,
                   decode=decode, sampling=sampling, **quant)
    if m.max_seq < max_seq:
        warnings.warn(f"max_seq {max_seq} is more than this model's context of {m.max_seq} tokens; using "
                      f"{m.max_seq}", stacklevel=2)
    return LLM(m)


def _calibration_source(v) -> str | bool | None:
    """``calibrate``: None/False (off), True (the shipped text) or a path to a UTF-8 text file."""
    if v is None or isinstance(v, bool):
        return v or None
    if not isinstance(v, (str, os.PathLike)):
        raise TypeError(f"calibrate must be a path, True or None, got {type(v).__name__}")
    if not os.path.isfile(os.path.expanduser(v)):
        raise FileNotFoundError(f"calibrate={str(v)!r}: no such file; give a UTF-8 text file, or True for the "
                                "text shipped with llmgpu")
    return os.fspath(v)


class ModelLock:
    """A model's lock: one generation at a time; a second thread waits, the holding thread gets an error."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owner: int | None = None

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self):
        if self._owner == threading.get_ident():  # (only this thread writes _owner = its own id)
            raise RuntimeError("this thread is already generating on this model (an unfinished stream?); "
                               "exhaust or close() that stream first, or use one model per concurrent generation")
        self._lock.acquire()
        self._owner = threading.get_ident()
        return self

    def __exit__(self, *exc):
        self._owner = None
        self._lock.release()


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model) -> ModelLock:
    """The lock of ``model`` (one per model object, shared by every LLM and Chat on it)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = ModelLock()
        return lock


def locked_stream(model, start: Callable[[], Iterator[str]]) -> Iterator[str]:
    """Iterate ``start()`` holding the model's lock: from the first ``next`` until exhausted or closed."""
    with model_lock(model):
        it = start()
        try:
            yield from it
        finally:
            it.close()


class LLM:
    """A loaded model with a text interface. ``llm.model`` is the underlying :class:`~llmgpu.model.Model`."""

    def __init__(self, model):
        self.model = model
        self.last_stats: GenerationStats | None = None

    @property
    def tokenizer(self):
        """The ``tokenizers.Tokenizer``."""
        return self.model.ckpt.tokenizer

    def __repr__(self) -> str:
        return f"LLM({self.model.ckpt.source!r}, max_seq={self.model.max_seq}, device={self.model.device_name!r})"

    def encode(self, prompt: str | list[dict], *, chat_template: bool = True, system: str | None = None) -> list[int]:
        """Token ids for a prompt. A str with ``chat_template`` (and a checkpoint that has a template) becomes
        a user message (after ``system``, if given), rendered for the assistant to answer; a list of
        ``{"role", "content"}`` messages is always rendered; otherwise the text is used as it is."""
        ck = self.model.ckpt
        checks.flag("chat_template", chat_template)
        checks.optional_str("system", system)
        if isinstance(prompt, str):
            checks.text("prompt", prompt)
            if chat_template and ck.chat_template is not None:
                prompt = ([{"role": "system", "content": system}] if system is not None else []) + \
                         [{"role": "user", "content": prompt}]
            elif system is not None:
                why = "chat_template=False" if not chat_template else "the checkpoint has no chat template"
                raise ValueError(f"a system prompt needs the chat template ({why}); put it in the prompt text")
        elif system is not None:
            raise ValueError("give the system prompt as the first message of the list, not as system=")
        if isinstance(prompt, list):
            checks.messages(prompt)
            text = render_chat(ck.chat_template, prompt, add_generation_prompt=True,
                               bos_token=ck.bos_token, eos_token=ck.eos_token)
        elif isinstance(prompt, str):
            text = prompt
        else:
            raise TypeError(f"prompt must be a str or a list of messages, got {type(prompt).__name__}")
        return encode_prompt(ck.tokenizer, text, add_bos=ck.add_bos, bos_token_id=ck.bos_token_id)

    def stream(self, prompt: str | list[dict], *, max_tokens: int = DEFAULT_MAX_TOKENS,
               temperature: float = DEFAULT_TEMPERATURE, top_k: int = DEFAULT_TOP_K, top_p: float = DEFAULT_TOP_P,
               min_p: float = DEFAULT_MIN_P, repetition_penalty: float = DEFAULT_REPETITION_PENALTY,
               repeat_last_n: int | None = DEFAULT_REPEAT_LAST_N, seed: int | None = None,
               stop: str | list[str] | None = None, chat_template: bool = True,
               system: str | None = None, logprobs: int | None = None) -> Iterator[str]:
        """Yield the answer in pieces (whole UTF-8 characters). Arguments as :meth:`generate`; with
        ``logprobs`` each piece is a :class:`~llmgpu.logprobs.Piece` (a str with ``.logprobs``)."""
        sampler = make_sampler(temperature, top_k, top_p, min_p, repetition_penalty, repeat_last_n, seed)
        max_tokens = checks.positive_int("max_tokens", max_tokens)
        stop = checks.stop_strings(stop)
        k = None if logprobs is None else check_k(logprobs)
        ids = self.encode(prompt, chat_template=chat_template, system=system)
        stats = GenerationStats()

        def start():
            self.last_stats = stats  # (under the lock: the generation now running)
            if k is not None:
                return stream_with_logprobs(self.model, ids, sampler, max_tokens, k, stop=stop, stats=stats)
            return stream_text(self.model, ids, sampler, max_tokens, stop=stop, stats=stats)
        return locked_stream(self.model, start)

    def generate(self, prompt: str | list[dict], *, max_tokens: int = DEFAULT_MAX_TOKENS,
                 temperature: float = DEFAULT_TEMPERATURE, top_k: int = DEFAULT_TOP_K, top_p: float = DEFAULT_TOP_P,
                 min_p: float = DEFAULT_MIN_P, repetition_penalty: float = DEFAULT_REPETITION_PENALTY,
                 repeat_last_n: int | None = DEFAULT_REPEAT_LAST_N, seed: int | None = None,
                 stop: str | list[str] | None = None, chat_template: bool = True, system: str | None = None,
                 logprobs: int | None = None) -> str:
        """The answer to ``prompt`` (see :meth:`encode` for how it is wrapped), up to ``max_tokens`` new tokens,
        ending at end-of-sequence or before the first ``stop`` string. Every call starts from an empty cache,
        so a ``seed`` (or ``temperature=0``) gives the same text every time. Speeds: ``last_stats``.

        ``logprobs=k`` returns a :class:`~llmgpu.logprobs.Completion`: the text (a str) with ``.logprobs``,
        each answer token's log-probability and its ``k`` most likely alternatives (see
        :mod:`llmgpu.logprobs`), and ``.finish_reason``."""
        pieces = list(self.stream(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                  top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                                  repeat_last_n=repeat_last_n, seed=seed, stop=stop,
                                  chat_template=chat_template, system=system, logprobs=logprobs))
        if logprobs is None:
            return "".join(pieces)
        return Completion("".join(pieces), [e for p in pieces for e in p.logprobs], self.last_stats.finish_reason)

    def chat(self, system: str | None = None, **kwargs) -> Chat:
        """A :class:`~llmgpu.chat.Chat` on this model (``max_tokens``, ``stop`` and sampling keywords are
        its defaults). Chats and ``generate`` may take turns on one model; each re-prefills what it needs."""
        return Chat(self.model, system, **kwargs)

    def logits(self, token_ids) -> np.ndarray:
        """Logits (len(token_ids), vocab) f32 of every position, from an empty cache."""
        ids = checks.token_ids(token_ids)
        if not ids:
            raise ValueError("logits of an empty sequence; give at least one token id")
        check_context(self.model, len(ids), "the sequence has", "evaluate in windows")
        vocab = self.model.config.vocab_size
        if bad := [t for t in ids if not 0 <= t < vocab]:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        with model_lock(self.model):
            return self.model.logits(ids)
