"""Decoding with the sampler on the GPU: the sampled token never leaves the GPU between steps.

Step 0 samples the first new token from the prefill's logits; step j ≥ 1 decodes the token that
step j − 1 sampled (at cache position p0 + j − 1) and samples the next. Each step is recorded as

    copy position record → the step uniform │ copy the sampled id → the embedding's input
    │ decode dispatches │ sample (shaders/sample.wgsl) │ copy the id (+ flags) → a mappable buffer

so consecutive steps need nothing from the CPU: up to `per_submit` steps go into one command
buffer (1, 2, 4, ... at the start, so that the first tokens arrive soon) and `ahead` command
buffers are queued at once, while the CPU reads the ids of the oldest (4 words a step, not the
logits). Measured on an H200 (BENCHMARKS.md): 8 steps × 3 buffers and 16 × 2 beat 4 × 2 and
8 × 2 by 10-25 %, and neither of them wins everywhere; 8 × 3 wastes fewer steps at a stop. The CPU decides to stop (end-of-sequence, a stop string, max_tokens)
after the GPU has already run up to `per_submit · ahead − 1` steps more: their cache entries lie
beyond the accepted position, so the cache is rewound (`KVCache.truncate`) and they are
overwritten later; their tokens are never shown.

Position records: a buffer of (p, 0, p // block + 1, 0) for every position p, so a step's uniform
is one GPU-side copy (the decode kernel's S reads the token from word 1 and the attention blocks
from word 2; the per-op path reads only word 0).

The persistent decode kernel: every step also copies the kernel's barrier words; a step whose
barrier gave up (`DecodeKernel.barriers_held`) and every step after it are dropped, the model
switches to the phased schedule (one line on stderr) and the loop redoes that step from the last
good token and RNG counter.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np
import wgpu

from . import fastpath
from .ops.sample import OUT_WORDS, GpuSampler, check_out
from .sample import Sampler

REC_WORDS = 8  # read back per step: the sampler's out words, then the decode kernel's sync words


def position_records(model):
    """(max_seq, 4) u32 on the GPU, row p = (p, 0, attention blocks at p, 0); built once a model."""
    if getattr(model, "_pos_records", None) is None:
        block = model.kernel.block if model.kernel is not None else 1
        p = np.arange(model.max_seq, dtype=np.uint32)
        rec = np.stack([p, np.zeros_like(p), p // block + 1, np.zeros_like(p)], axis=1)
        model._pos_records = model.dev.buffer(rec, label="loop.positions")
    return model._pos_records


def default_queue(dev) -> tuple[int, int]:
    """(per_submit, ahead) by adapter: a CPU adapter runs one step at a time (each costs ~0.1 s)."""
    return (1, 1) if dev.is_cpu else (8, 3)


class TokenLoop:
    """Generation for one model and sampler with the sampler on the GPU (see the module doc).

    per_submit: decode steps per command buffer; ahead: command buffers queued at once. More of
    either keeps the GPU busier and wastes more steps when the CPU stops generation."""

    def __init__(self, model, sampler: Sampler, *, per_submit: int | None = None, ahead: int | None = None):
        self.model, self.dev = model, model.dev
        s = sampler
        self.gs = GpuSampler(self.dev, model.config.vocab_size, s.temperature, s.top_k, s.top_p, s.min_p,
                             s.repetition_penalty, s.repeat_last_n, s.seed, history_capacity=model.max_seq)
        k, a = default_queue(self.dev)
        self.k = k if per_submit is None else per_submit
        self.ahead = a if ahead is None else ahead
        if self.k < 1 or self.ahead < 1:
            raise ValueError(f"per_submit ({self.k}) and ahead ({self.ahead}) must be at least 1")
        self.rec = position_records(model)
        usage = wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST
        self._free = [self.dev.device.create_buffer(size=self.k * REC_WORDS * 4, usage=usage, label="loop.ids")
                      for _ in range(self.ahead)]

    # ---- recording ---------------------------------------------------------------------
    def _kernel(self):
        m = self.model
        return m.kernel if m.kernel is not None and m.decode_schedule != "ops" else None

    def _encode(self, first: int, n: int, p0: int, staging):
        """Steps first .. first + n − 1 in one command buffer, each one's words → staging."""
        m, gs = self.model, self.gs
        kernel = self._kernel()
        ops, raw = m._step(1, True)
        sample = gs.op(m.buf.logits)
        enc = self.dev.device.create_command_encoder()
        for i, j in enumerate(range(first, first + n)):
            if j > 0:  # decode the token step j − 1 chose, at position p0 + j − 1
                p = p0 + j - 1
                if kernel is not None:
                    enc.copy_buffer_to_buffer(self.rec, 16 * p, kernel.step, 0, 16)
                    enc.copy_buffer_to_buffer(gs.out, 0, kernel.step, 4, 4)
                    enc.clear_buffer(kernel.sync, 0, 16)
                else:
                    enc.copy_buffer_to_buffer(self.rec, 16 * p, m.step, 0, 16)
                    enc.copy_buffer_to_buffer(gs.out, 0, m.buf.ids, 0, 4)
            cpass = enc.begin_compute_pass()
            if j > 0:
                fastpath.record(cpass, ops, raw)
            sample.record(cpass)
            cpass.end()
            at = i * REC_WORDS * 4
            enc.copy_buffer_to_buffer(gs.out, 0, staging, at, OUT_WORDS * 4)
            if kernel is not None and j > 0:
                enc.copy_buffer_to_buffer(kernel.sync, 0, staging, at + OUT_WORDS * 4, 16)
        return enc.finish()

    def _read(self, staging, n: int) -> np.ndarray:
        """The n steps' words (waits for the GPU to finish that command buffer)."""
        staging.map_sync(wgpu.MapMode.READ)
        try:
            raw = staging.read_mapped(0, n * REC_WORDS * 4) if n else b""
            return np.frombuffer(raw, np.uint32).reshape(n, REC_WORDS).copy()
        finally:
            staging.unmap()
            self._free.append(staging)

    def _barrier_failed(self, j: int, words) -> bool:
        kernel = self._kernel()
        return (j > 0 and kernel is not None and self.model.decode_schedule == "persistent"
                and not kernel.barriers_held(words[OUT_WORDS:]))

    # ---- running -----------------------------------------------------------------------
    def tokens(self, history, limit: int) -> Iterator[int]:
        """After `model.prefill` (its logits in the model's logits buffer): yield up to `limit`
        new token ids. The cache holds each yielded token but the last, as `generate_step` leaves
        it (ids are added to `model.kv` only when the CPU accepts them; the GPU's speculative steps
        write beyond that position). Closing the generator early is fine."""
        m, gs = self.model, self.gs
        p0 = m.pos
        history = list(history)
        gs.set_history(history)
        inflight: deque = deque()
        self._sizes: list[int] = []  # steps in each command buffer submitted
        chosen: list[int] = []  # tokens yielded
        nxt = 0  # next step to submit
        try:
            while len(chosen) < limit:
                while len(inflight) < self.ahead and nxt < limit:
                    n = min(self.k, limit - nxt, 1 << len(self._sizes))  # 1, 2, 4, ...: the first token soon
                    self._sizes.append(n)
                    buf = self._free.pop()
                    self.dev.queue.submit([self._encode(nxt, n, p0, buf)])
                    inflight.append((nxt, n, buf))
                    nxt += n
                first, n, buf = inflight.popleft()
                words = self._read(buf, n)
                for i in range(n):
                    j = first + i
                    if self._barrier_failed(j, words[i]):
                        nxt = self._redo_from(j, inflight, history + chosen)
                        break
                    token = check_out(words[i])
                    if j > 0:  # step j decoded chosen[j - 1]: the cache now holds it
                        m.kv.ids.append(chosen[j - 1])
                    chosen.append(token)
                    yield token
        finally:
            for _, _, buf in inflight:  # steps the CPU did not need: wait for them; the cache
                self._read(buf, 0)       # entries they wrote lie beyond m.pos and are overwritten later

    def _redo_from(self, j: int, inflight: deque, history: list[int]) -> int:
        """Step j's grid barrier gave up: drop it and the steps after it, switch to the phased
        schedule, and restart at step j with its input token (history[-1]) and RNG counter (j)."""
        for _, _, buf in inflight:
            self._read(buf, 0)
        inflight.clear()
        self.model.fall_back_to_phased()
        self.gs.set_history(history)
        self.dev.write(self.gs.out, np.array([history[-1], 0, j, 0], np.uint32))
        return j
