"""A conversation with a model: the message list, rendered through the chat template each turn.

The KV cache carries over between turns: each turn renders the whole conversation, keeps the part of
the cache that matches it (:func:`~llmgpu.generate.cached_prefix`) and prefills only the rest, which
is usually the new user message. Retokenizing an answer can differ from the ids that were sampled;
the cache is then kept up to the first difference.
"""
from __future__ import annotations

from collections.abc import Iterator

from . import checks
from .generate import GenerationStats, cached_prefix, check_context, stream_text
from .sample import Sampler, make_sampler
from .tokenizer import encode_prompt, render_chat

DEFAULT_MAX_TOKENS = 512


class Chat:
    """``Chat(model, system=None, max_tokens=512, stop=None, temperature=..., seed=..., ...)``.

    The sampling keywords (those of :func:`~llmgpu.sample.make_sampler`, or a ready ``sampler=``) and
    ``max_tokens`` / ``stop`` are defaults for every turn; :meth:`send` and :meth:`stream` take the same
    keywords for one turn.
    With a ``seed`` the whole conversation is reproducible.
    """

    def __init__(self, model, system: str | None = None, *, max_tokens: int = DEFAULT_MAX_TOKENS,
                 stop=None, sampler: Sampler | None = None, **sampling):
        if sampler is not None and sampling:
            raise ValueError("give either a sampler or sampling keywords, not both")
        if system is not None:
            checks.text("system", system)
        self.model = model
        self.system = system
        self.max_tokens, self.stop = checks.positive_int("max_tokens", max_tokens), checks.stop_strings(stop)
        self.sampler = sampler if sampler is not None else make_sampler(**sampling)
        self.sampling = sampling if sampler is None else dict(
            temperature=sampler.temperature, top_k=sampler.top_k, top_p=sampler.top_p, min_p=sampler.min_p,
            repetition_penalty=sampler.repetition_penalty, repeat_last_n=sampler.repeat_last_n)
        self.messages: list[dict] = []
        self.last_stats: GenerationStats | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays). The next turn reuses the KV cache
        only as far as its tokens match what the cache holds (the system prompt, say)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system is not None else []

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        ck = self.model.ckpt
        text = render_chat(ck.chat_template, messages, add_generation_prompt=True,
                           bos_token=ck.bos_token, eos_token=ck.eos_token)
        return encode_prompt(ck.tokenizer, text, add_bos=ck.add_bos, bos_token_id=ck.bos_token_id)

    def stream(self, text: str, *, max_tokens: int | None = None, stop=None, **sampling) -> Iterator[str]:
        """Send a user message; yield the answer in pieces. The turn is recorded when the stream ends
        (also when it is closed early: the partial answer is kept)."""
        checks.text("a chat message", text)
        max_tokens = self.max_tokens if max_tokens is None else checks.positive_int("max_tokens", max_tokens)
        stop = self.stop if stop is None else checks.stop_strings(stop)
        sampler = self.sampler
        if sampling:  # a one-turn sampler; without its own seed it draws one from the chat's generator
            seed = sampling.pop("seed", None)
            if seed is None and self.sampler.seed is not None:
                seed = int(self.sampler.rng.integers(2**63))
            sampler = make_sampler(**{**self.sampling, **sampling, "seed": seed})
        messages = self.messages + [{"role": "user", "content": text}]
        ids = self.prompt_ids(messages)
        check_context(self.model, len(ids), "the conversation has grown to",
                      "start over with reset() (/reset in the chat)")
        return self._turn(messages, ids, sampler, max_tokens, stop)

    def _turn(self, messages, ids, sampler, max_tokens, stop) -> Iterator[str]:
        from .api import model_lock  # (api imports this module)

        with model_lock(self.model):  # held from the first piece until the turn ends (see llmgpu.api)
            yield from self._turn_locked(messages, ids, sampler, max_tokens, stop)

    def _turn_locked(self, messages, ids, sampler, max_tokens, stop) -> Iterator[str]:
        stats = GenerationStats()
        pieces: list[str] = []
        started = False
        try:
            for piece in stream_text(self.model, ids, sampler, max_tokens, stop=stop,
                                     cached=cached_prefix(self.model, ids), stats=stats):
                started = True
                pieces.append(piece)
                yield piece
            started = True
        finally:
            self.last_stats = stats
            if started:
                self.messages = messages + [{"role": "assistant", "content": "".join(pieces)}]

    def send(self, text: str, **kwargs) -> str:
        """Send a user message; return the whole answer."""
        return "".join(self.stream(text, **kwargs))
