"""Sampling on the GPU (shaders/sample.wgsl): one row of logits -> one token id, with the CPU
sampler's semantics (llmgpu/sample.py), written to a u32 buffer where the next step can read it.

`sample(...)` records the op; several steps can be recorded into one submission, because the
kernel reads its RNG counter from `out` and increments it there, optionally keeps a log of the
tokens it chose, and (with a repetition penalty) pushes each token onto the history ring it
reads. The token is `out[0]`: bind `(out, 0, 4)` as the embedding op's `ids` to keep it on the GPU.
A step that meets non-finite logits sets `out[1]` (and every later step does nothing) instead of
choosing; the host raises `NonFiniteLogitsError` when it reads the flag (`check_out`).

`GpuSampler` is the host wrapper for tests and one-off use: `make_sampler`'s parameters, the
buffers, and `run(logits) -> token id`.
"""
from __future__ import annotations

import math
import secrets

import numpy as np

from ..gpu import Device
from ..sample import (DEFAULT_MIN_P, DEFAULT_REPEAT_LAST_N, DEFAULT_REPETITION_PENALTY, DEFAULT_TEMPERATURE,
                      DEFAULT_TOP_K, DEFAULT_TOP_P, NonFiniteLogitsError, Sampler, make_sampler)
from .core import Op, make_op, nbytes, need, submit

OUT_WORDS = 4  # token, status, RNG counter, threshold key; the token log follows
STATUS_NONFINITE = 1


def sample_config(dev: Device, vocab: int) -> dict:
    """WG and CAP for a vocabulary: about 16 logits per invocation, 64 to 1024 invocations; as
    many candidates in workgroup memory as fit beside the reductions' arrays (up to 4096)."""
    wg = 64
    while wg < min(1024, dev.max_invocations) and wg * 16 < vocab:
        wg *= 2
    room = dev.max_workgroup_storage - 8 * wg - 256  # reduce.wgsl's red and sample.wgsl's part, seg
    cap = 1 << min(12, (room // 8).bit_length() - 1)
    return {"WG": wg, "CAP": cap}


def sample_params(s: Sampler, vocab: int, window: int, append: bool, log: int) -> list:
    """The uniform `P` of sample.wgsl for sampler `s` (seed None: a fresh random one)."""
    seed = s.seed if s.seed is not None else secrets.randbits(64)
    return [vocab, int(s.greedy), s.top_k if s.top_k < vocab else 0,
            float(s.top_p - 1e-9) if s.top_p < 1.0 else 1.0,  # the CPU's slack for rounding
            float(math.log(s.min_p)) if s.min_p > 0 else float("-inf"),
            float(1.0 / s.temperature) if s.temperature > 0 else 0.0,
            float(s.repetition_penalty), window, seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF,
            int(append), log]


def sample(dev: Device, logits, history, out, *, vocab: int, sampler: Sampler, append: bool = True,
           log: int = 0, config: dict | None = None) -> Op:
    """Choose a token from `logits` ((vocab,) f32) as `sampler` (make_sampler's parameters) would.

    out: (4 + log,) u32 — [0] the token, [1] status (non-zero: non-finite logits), [2] the RNG
    counter (the kernel reads it and writes it + 1), [3] the final threshold's order key, then a
    log of `log` slots (`out[4 + counter % log]` = that step's token).
    history: None without a repetition penalty; else (1 + window,) u32 — [0] the number of tokens
    pushed so far, then a ring of `window` slots (window = repeat_last_n, or the buffer's size for
    repeat_last_n None: the whole history then needs to fit); with `append` each step pushes its token.
    config: {"WG", "CAP"} (sample_config's by default; a small CAP forces the path without
    workgroup-memory candidates).
    """
    if not 0 < vocab < 1 << 24:  # the kernel counts in f32
        raise ValueError(f"sample: vocab {vocab} is outside 1 .. 2**24 - 1")
    need("sample", "logits", logits, vocab * 4)
    need("sample", "out", out, (OUT_WORDS + log) * 4)
    penalty = sampler.repetition_penalty != 1.0
    if penalty and history is None:
        raise ValueError("sample: a repetition penalty needs a history buffer")
    window = 0
    binds = {"logits": logits, "out": out}
    scratch = None
    if penalty:
        window = sampler.repeat_last_n or (nbytes(history) // 4 - 1)
        need("sample", "history", history, (1 + window) * 4)
        scratch = dev.buffer(size=vocab * 4, label="sample.xs")
        binds.update(hist=history, xs=scratch)
    cfg = config or sample_config(dev, vocab)
    if cfg["WG"] not in (32, 64, 128, 256, 512, 1024) or cfg["CAP"] < 1:  # the prefix sum's segments
        raise ValueError(f"sample: config {cfg} needs WG a power of two in 32 .. 1024 and CAP >= 1")
    pipe = dev.pipeline("sample", consts={**cfg, "PENALTY": penalty, "SUBGROUPS": dev.has_subgroups})
    op = make_op(dev, pipe, binds, (1, 1, 1), sample_params(sampler, vocab, window, append, log))
    if scratch is not None:
        op.keep.append(scratch)
    return op


def check_out(words) -> int:
    """The token from `out`'s first words read back; raises NonFiniteLogitsError on the flag."""
    if int(words[1]) & STATUS_NONFINITE:
        raise NonFiniteLogitsError(
            "the model's logits are not finite (a NaN or +inf, or no finite value), so no token can be "
            "chosen: the weights are broken or the computation overflowed; check the checkpoint (e.g. "
            "llmgpu perplexity on a known text), re-quantize it, or report it")
    return int(words[0])


class GpuSampler:
    """`make_sampler`'s parameters on the GPU: `run(logits_buffer, history=None) -> token id`.

    The parameters are uploaded once; the RNG counter and (with a repetition penalty) the token
    history stay on the GPU between runs: `run` pushes each chosen token, `set_history` replaces it.
    `history_capacity` is the ring's size when repeat_last_n is None (the whole history).
    """

    def __init__(self, dev: Device, vocab: int, temperature: float = DEFAULT_TEMPERATURE,
                 top_k: int = DEFAULT_TOP_K, top_p: float = DEFAULT_TOP_P, min_p: float = DEFAULT_MIN_P,
                 repetition_penalty: float = DEFAULT_REPETITION_PENALTY,
                 repeat_last_n: int | None = DEFAULT_REPEAT_LAST_N, seed: int | None = None, *,
                 history_capacity: int = 4096, config: dict | None = None):
        self.dev, self.vocab, self.config = dev, vocab, config
        self.sampler = make_sampler(temperature, top_k, top_p, min_p, repetition_penalty, repeat_last_n, seed)
        if self.sampler.seed is None:  # one seed for the sampler's life, as the CPU sampler's generator
            self.sampler.seed = secrets.randbits(64)
        self.window = repeat_last_n or history_capacity
        self.out = dev.buffer(np.zeros(OUT_WORDS, np.uint32), label="sample.out")
        self.history = None
        if repetition_penalty != 1.0:
            self.history = dev.buffer(np.zeros(1 + self.window, np.uint32), label="sample.hist")
        self._op = (None, None)

    def op(self, logits) -> Op:
        """The op for this logits buffer (the last one is kept)."""
        if self._op[0] is not logits:
            self._op = (logits, sample(self.dev, logits, self.history, self.out, vocab=self.vocab,
                                       sampler=self.sampler, config=self.config))
        return self._op[1]

    def set_history(self, tokens) -> None:
        """The tokens seen so far (only the last window matter); a no-op without a penalty."""
        if self.history is None:
            return
        t = np.asarray(tokens, np.int64)
        if self.sampler.repeat_last_n is None and t.size > self.window:
            raise ValueError(f"the history ({t.size} tokens) exceeds history_capacity ({self.window})")
        ring = np.zeros(self.window, np.uint32)
        idx = np.arange(max(0, t.size - self.window), t.size)
        ring[idx % self.window] = t[idx]
        self.dev.write(self.history, np.concatenate([[t.size], ring]).astype(np.uint32))

    @property
    def counter(self) -> int:
        return int(self.dev.read(self.out, np.uint32, count=3)[2])

    @counter.setter
    def counter(self, c: int) -> None:
        self.dev.write(self.out, np.array([c & 0xFFFFFFFF], np.uint32), offset=8)

    def run(self, logits, history=None) -> int:
        """Sample from `logits` ((vocab,) f32 on the GPU); `history` replaces the GPU's first."""
        if history is not None:
            self.set_history(history)
        submit(self.dev, [self.op(logits)])
        words = self.dev.read(self.out, np.uint32, count=OUT_WORDS)
        if words[1]:
            self.dev.write(self.out, np.zeros(1, np.uint32), offset=4)  # clear the flag for the next run
        return check_out(words)
