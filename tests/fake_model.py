"""A deterministic stand-in for llmgpu.model.Model: NumPy logits over a small byte-level BPE tokenizer.

Logits depend on the whole cached sequence (a bigram table of the last token plus a table indexed by a
position-weighted sum of all cached ids), so a wrong KV-cache reuse changes what greedy decoding says.
``say(text)`` makes the model answer ``text`` and then its end-of-sequence token, whatever the prompt.
It records every prefill and decode for the tests to count.
"""
from __future__ import annotations

import functools
import sys
import types

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmgpu.config import ModelConfig
from llmgpu.loader import Checkpoint

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world! How are you today?",
          "Once upon a time there was a little model that answered questions.",
          "def f(x):\n    return x * 2\n", "café naïve résumé"] * 20
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
EOS = 2


@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    # CJK and emoji are absent from the corpus, so they stay split into single-byte tokens.
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return t.to_str()


def make_tokenizer() -> Tokenizer:
    return Tokenizer.from_str(_tokenizer_json())


def make_checkpoint(chat_template: str | None = CHATML, add_bos: bool = False) -> Checkpoint:
    tok = make_tokenizer()
    cfg = ModelConfig(model_type="llama", vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, bos_token_id=1,
                      eos_token_id=EOS)
    return Checkpoint(cfg, {}, tok, chat_template, "<|im_start|>", "<|im_end|>", (EOS,), add_bos, source="fake")


class FakeModel:
    device_name = "fake adapter"
    dev = types.SimpleNamespace(pipelines_compiled=3, compile_seconds=0.25)  # what start-up reports read
    loads: list[dict] = []  # every load() call's arguments, for the CLI tests
    instances: list = []  # every model load() made

    def __init__(self, ckpt: Checkpoint | None = None, max_seq: int = 256, seed: int = 0, flat: bool = False):
        self.ckpt = ckpt or make_checkpoint()
        self.config = self.ckpt.config
        self.max_seq = max_seq
        V = self.config.vocab_size
        g = np.random.default_rng(seed)
        self.flat = flat  # all logits zero: every token equally likely (perplexity == vocab size)
        self.bigram = (3 * g.standard_normal((V, V))).astype(np.float32)  # (last token, next) f32
        self.context = (3 * g.standard_normal((V, V))).astype(np.float32)  # (sum of i*id mod V, next) f32
        self.ids: list[int] = []
        self.prefills: list[int] = []  # tokens per prefill call
        self.decodes = 0
        self.script: list[int] | None = None
        self._k = 0

    @classmethod
    def load(cls, source=None, *, group_size=32, max_seq=4096, adapter=None, progress=True, dump_wgsl=None,
             decode="auto", sampling="auto", gemm="auto", startup=None, **quant):
        cls.loads.append(dict(source=source, group_size=group_size, max_seq=max_seq, adapter=adapter,
                              progress=progress, decode=decode, sampling=sampling, **quant))
        if source not in (None, "fake", "fake-no-template", "fake-flat"):
            raise FileNotFoundError(f"{source}: no such file or directory, and not a Hugging Face hub id (org/name)")
        ck = make_checkpoint(chat_template=None if source == "fake-no-template" else CHATML)
        m = cls(ck, max_seq=max_seq, flat=source == "fake-flat")
        if cls.default_script is not None:
            m.say(cls.default_script)
        cls.instances.append(m)
        return m

    default_script: str | None = None

    def say(self, text: str) -> None:
        """Answer ``text`` then EOS to every prompt (the first answer token comes from the prefill)."""
        self.script = self.ckpt.tokenizer.encode(text, add_special_tokens=False).ids + [EOS]

    @property
    def pos(self) -> int:
        return len(self.ids)

    @property
    def cached_ids(self) -> list[int]:
        return list(self.ids)

    def _logits_at(self, n: int) -> np.ndarray:
        """Logits (vocab,) f32 after the first n cached ids."""
        V = self.config.vocab_size
        if self.flat:
            return np.zeros(V, np.float32)
        h = sum((i + 1) * t for i, t in enumerate(self.ids[:n])) % V
        return self.bigram[self.ids[n - 1]] + self.context[h]

    def _next(self) -> np.ndarray:
        x = self._logits_at(self.pos).copy()
        if self.script is not None:
            x[self.script[min(self._k, len(self.script) - 1)]] += 1000.0
            self._k += 1
        return x

    def _append(self, ids) -> None:
        ids = [int(t) for t in ids]
        if self.pos + len(ids) > self.max_seq:
            raise ValueError(f"prompt plus new tokens beyond the context: {self.pos} + {len(ids)} > {self.max_seq}")
        if any(not 0 <= t < self.config.vocab_size for t in ids):
            raise ValueError(f"token id out of range in {ids}")
        self.ids += ids

    def reset(self) -> None:
        self.ids = []

    def truncate(self, pos: int) -> None:
        assert 0 <= pos <= self.pos, (pos, self.pos)
        del self.ids[pos:]

    def prefill(self, ids) -> np.ndarray:
        assert len(ids) > 0
        self._append(ids)
        self.prefills.append(len(ids))
        self._k = 0
        return self._next()

    def decode(self, token_id: int) -> np.ndarray:
        self._append([token_id])
        self.decodes += 1
        return self._next()

    def logits(self, ids) -> np.ndarray:
        self.reset()
        self._append(ids)
        return np.stack([self._logits_at(n) for n in range(1, len(ids) + 1)])


def install(monkeypatch, script: str | None = None) -> type[FakeModel]:
    """Make ``from llmgpu.model import Model`` give a fresh FakeModel class (with its own load log)."""
    cls = type("FakeModel", (FakeModel,), {"loads": [], "instances": [], "default_script": script})
    mod = types.ModuleType("llmgpu.model")
    mod.Model = cls
    monkeypatch.setitem(sys.modules, "llmgpu.model", mod)
    return cls
