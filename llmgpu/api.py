"""The Python API: ``llm = llmgpu.load(); llm.generate("Why is the sky blue?")``.

``load`` builds the GPU model (:class:`llmgpu.model.Model`); :class:`LLM` wraps it with prompts as
text, sampling keywords, streaming, chats and logits. Sampling defaults are llama.cpp's (see
:mod:`llmgpu.sample`): temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, no repetition penalty;
``temperature=0`` is greedy.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .chat import Chat
from .generate import GenerationStats, forget_cache, stream_text
from .logprobs import Completion, check_k, stream_with_logprobs
from .sample import (DEFAULT_MIN_P, DEFAULT_REPEAT_LAST_N, DEFAULT_REPETITION_PENALTY, DEFAULT_TEMPERATURE,
                     DEFAULT_TOP_K, DEFAULT_TOP_P, make_sampler)
from .tokenizer import encode_prompt, render_chat

DEFAULT_MAX_TOKENS = 256


def load(model: str | None = None, *, group_size: int = 32, max_seq: int = 4096, adapter: str | None = None,
         progress: bool = True) -> LLM:
    """Load a model (a Hugging Face directory or hub id, a .gguf file, a q4gsw directory; ``None``: the
    default SmolLM2-135M-Instruct) onto the GPU with a KV cache of ``max_seq`` tokens."""
    from .model import Model
    return LLM(Model.load(model, group_size=group_size, max_seq=max_seq, adapter=adapter, progress=progress))


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
        if isinstance(prompt, str):
            if chat_template and ck.chat_template is not None:
                prompt = ([{"role": "system", "content": system}] if system is not None else []) + \
                         [{"role": "user", "content": prompt}]
            elif system is not None:
                why = "chat_template=False" if not chat_template else "the checkpoint has no chat template"
                raise ValueError(f"a system prompt needs the chat template ({why}); put it in the prompt text")
        elif system is not None:
            raise ValueError("give the system prompt as the first message of the list, not as system=")
        if isinstance(prompt, list):
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
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        k = None if logprobs is None else check_k(logprobs)
        ids = self.encode(prompt, chat_template=chat_template, system=system)
        stats = self.last_stats = GenerationStats()
        if k is not None:
            return stream_with_logprobs(self.model, ids, sampler, max_tokens, k, stop=stop, stats=stats)
        return stream_text(self.model, ids, sampler, max_tokens, stop=stop,
                           stats=stats)

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
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("logits of an empty sequence; give at least one token id")
        if len(ids) > self.model.max_seq:
            raise ValueError(f"{len(ids)} tokens are more than the context of {self.model.max_seq}; "
                             "evaluate in windows or load the model with a larger max_seq")
        vocab = self.model.config.vocab_size
        if bad := [t for t in ids if not 0 <= t < vocab]:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        forget_cache(self.model)
        return self.model.logits(ids)
