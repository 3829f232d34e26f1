"""The model on the GPU: weights, the KV cache, and prefill / decode as lists of kernel ops.

A decode step (one token) is, per layer (`Model.decode_layer`), seven dispatches:

    rmsnorm → int8 │ QKV GEMV (+bias) │ attention_decode (q/k norm, RoPE, cache write, → int8)
    │ O GEMV (+= h) │ rmsnorm → int8 │ gate/up GEMV (→ silu·mul → int8) │ down GEMV (+= h)

(five with `fuse_norms`: each norm in the last workgroup of the residual GEMV before it), then the head:
final rmsnorm │ lm_head GEMV → logits. A prefill chunk of M tokens (`Model.prefill_layer`) runs the
same layer through the GEMM (route `Model.gemm`: f32 FMA, int8 dot products on int8 activations, or
f16 FMA; ops/linear.py), with separate rope_kv and silu_mul dispatches (a query there needs keys
that other workgroups write).

Every op is built once (llmgpu/ops: one function per WGSL entry point) and cached per step
shape; a step writes the token ids and their first position (a uniform every layer reads),
records the ops into one command buffer and submits it. The KV cache knows which token ids it
holds (`Model.kv.ids`), so generation can reuse a shared prefix.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import numpy as np
import wgpu

from . import fastpath, ops
from .config import ModelConfig, rope_inv_freq
from .defaults import DECODE_SCHEDULES, DEFAULT_CHUNK, DEFAULT_GROUP_SIZE, DEFAULT_MAX_SEQ, SAMPLING_PLACES
from .gpu import UNIFORM, Device
from .loader import Checkpoint
from .ops import Heads, Op, Q4Linear, Q8Act
from .quant import Q4Tensor, Q8Tensor, dequantize

F32 = 4


# ---- weights -----------------------------------------------------------------------------

def _interleave32(t: Q4Tensor) -> Q4Tensor:
    """Rows [gate; up] (2F rows) reordered to blocks of 32: gate 0-31, up 0-31, gate 32-63, ...
    so that one GEMV workgroup holds both halves of 32 SwiGLU outputs."""
    F = t.shape[0] // 2
    idx = np.arange(2 * F).reshape(2, F // 32, 32).transpose(1, 0, 2).reshape(-1)
    return Q4Tensor(t.qweight[idx], t.scales[idx], t.group_size, None if t.offsets is None else t.offsets[idx])


def _cat_rows(ts: list[Q4Tensor]) -> Q4Tensor:
    """Stack q4gsw weights along N (fused QKV, gate/up). Offsets are zero where a part has none."""
    gs = {t.group_size for t in ts}
    if len(gs) != 1:
        raise ValueError(f"cannot fuse weights of different group sizes {sorted(gs)}")
    off = None
    if any(t.offsets is not None for t in ts):
        off = np.concatenate([t.offsets if t.offsets is not None else np.zeros(t.scales.shape, np.float32)
                              for t in ts])
    return Q4Tensor(np.concatenate([t.qweight for t in ts]), np.concatenate([t.scales for t in ts]),
                    gs.pop(), off)


@dataclass
class Layer:
    """One transformer block's weights on the GPU."""

    attn_norm: object  # (d,) f32
    mlp_norm: object  # (d,) f32
    qkv: Q4Linear  # (q_dim + 2·kv_dim, d), biases fused
    o: Q4Linear  # (d, q_dim)
    gate_up: Q4Linear  # (2·ff, d): gate and up rows interleaved in blocks of 32
    down: Q4Linear  # (d, ff)
    q_norm: object = None  # (hd,) f32, Qwen3 only
    k_norm: object = None  # (hd,) f32, Qwen3 only


def _quantized(T: dict, name: str):
    t = T[name]
    if not isinstance(t, (Q4Tensor, Q8Tensor)):
        raise ValueError(f"{name} is not quantized; load through Model.load or quantize_checkpoint")
    return t


def load_layer(dev: Device, T: dict, cfg: ModelConfig, i: int) -> Layer:
    """Layer i's weights from Hugging Face tensor names, fused and uploaded."""
    p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
    f32 = lambda name: dev.buffer(np.asarray(T[name], np.float32), label=name)  # noqa: E731
    bias = lambda name: np.asarray(T[name], np.float32) if name in T else None  # noqa: E731
    qkv_bias = None
    if a + "q_proj.bias" in T:
        qkv_bias = np.concatenate([bias(a + n + ".bias") for n in ("q_proj", "k_proj", "v_proj")])
    qkv = _cat_rows([_quantized(T, a + n + ".weight") for n in ("q_proj", "k_proj", "v_proj")])
    gate_up = _interleave32(_cat_rows([_quantized(T, p + "mlp.gate_proj.weight"), _quantized(T, p + "mlp.up_proj.weight")]))
    return Layer(
        attn_norm=f32(p + "input_layernorm.weight"), mlp_norm=f32(p + "post_attention_layernorm.weight"),
        qkv=Q4Linear(dev, qkv, label=f"L{i}.qkv", bias=qkv_bias),
        o=Q4Linear(dev, _quantized(T, a + "o_proj.weight"), label=f"L{i}.o", bias=bias(a + "o_proj.bias")),
        gate_up=Q4Linear(dev, gate_up, label=f"L{i}.gate_up"),
        down=Q4Linear(dev, _quantized(T, p + "mlp.down_proj.weight"), label=f"L{i}.down"),
        q_norm=f32(a + "q_norm.weight") if cfg.qk_norm else None,
        k_norm=f32(a + "k_norm.weight") if cfg.qk_norm else None)


def rope_table(dev: Device, cfg: ModelConfig, max_seq: int):
    """(cos, sin) of pos · inv_freq[i]: (max_seq, head_dim/2, 2) f32 on the GPU."""
    ang = np.arange(max_seq, dtype=np.float64)[:, None] * rope_inv_freq(cfg)[None, :]
    return dev.buffer(np.stack([np.cos(ang), np.sin(ang)], axis=-1).astype(np.float32), label="rope")


def check_dims(cfg: ModelConfig) -> None:
    d, ff, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    if d % 32 or ff % 32 or hd % 4:
        raise ValueError(f"unsupported dimensions: hidden_size {d} and intermediate_size {ff} must be "
                         f"multiples of 32, head_dim {hd} of 4")
    if hd > 256:
        raise ValueError(f"head_dim {hd} > 256 is not supported")


def context_size(cfg: ModelConfig, max_seq) -> int:
    """The KV cache's length: max_seq, capped by the model's max_position_embeddings."""
    if isinstance(max_seq, bool) or not isinstance(max_seq, (int, np.integer)) or max_seq < 1:
        raise ValueError(f"the context (max_seq / --ctx) must be a whole number of tokens >= 1, got {max_seq!r}")
    if cfg.sliding_window and max_seq > cfg.sliding_window:
        raise ValueError(f"context {max_seq} exceeds this model's sliding window {cfg.sliding_window} "
                         f"(llmgpu implements full attention only); use a context of at most "
                         f"{cfg.sliding_window}")
    return min(int(max_seq), cfg.max_position_embeddings)


# ---- the KV cache and the activations ----------------------------------------------------

class KVCache:
    """Keys and values of every layer on the GPU, and the token ids whose keys and values they
    hold (positions 0 .. len(ids) - 1; generate.cached_prefix compares them with a new prompt).
    The only place the context limit is checked."""

    def __init__(self, dev: Device, n_layers: int, heads: Heads):
        self.heads = heads
        self.max_seq = heads.max_seq
        size = heads.cache_bytes(dev.act_type)
        # Layers stacked in one buffer each for keys and values where that fits one binding (the
        # decode kernel reads every layer's cache in one dispatch), each layer at a 256-byte aligned
        # stride so the ops can bind it alone; else one buffer per layer.
        self.stride = -(-size // 256) * 256
        self.stacked = n_layers * self.stride <= dev.max_binding
        if self.stacked:
            kb = dev.buffer(size=n_layers * self.stride, label="k_cache")  # (layers, stride) of (max_seq, n_kv, hd)
            vb = dev.buffer(size=n_layers * self.stride, label="v_cache")
            self.k = [(kb, i * self.stride, size) for i in range(n_layers)]
            self.v = [(vb, i * self.stride, size) for i in range(n_layers)]
        else:
            self.k = [dev.buffer(size=size, label=f"L{i}.k_cache") for i in range(n_layers)]  # (max_seq, n_kv, hd)
            self.v = [dev.buffer(size=size, label=f"L{i}.v_cache") for i in range(n_layers)]
        self.ids: list[int] = []

    @property
    def pos(self) -> int:
        """Positions filled: the next token goes here."""
        return len(self.ids)

    def check_room(self, n: int) -> None:
        if self.pos + n > self.max_seq:
            raise ValueError(f"the prompt plus new tokens ({self.pos + n}) exceed the context of {self.max_seq} "
                             f"tokens; start a new conversation or load with a larger context (--ctx)")

    def truncate(self, n: int) -> None:
        """Keep the first n positions (what follows is overwritten by the next step)."""
        if not 0 <= n <= self.pos:
            raise ValueError(f"cannot truncate the cache to {n} tokens (it holds {self.pos})")
        del self.ids[n:]



@dataclass
class Scratch:
    """Activation buffers, sized for a prefill chunk of C rows (decode uses row 0)."""

    ids: object  # (C,) u32
    h: object  # (C, d) f32, the residual stream
    xn: object  # (C, d) f32, normed
    qkv: object  # (C, qkv_dim) f32
    q: object  # (C, q_dim) f32, rotated queries (prefill)
    att: object  # (C, q_dim) f32, attention output
    gu: object  # (C, 2·ff) f32
    act: object  # (C, ff) f32
    scores: object  # (n_heads, max_seq) f32, decode attention's scratch (prefill's flash attention has none)
    logits: object  # (logit_rows, logit_stride) f32: the first V of each row
    x8: Q8Act  # (d,) int8 blocks: decode's normed input
    att8: Q8Act  # (q_dim,) int8 blocks: decode's attention output
    act8: Q8Act  # (ff,) int8 blocks: decode's silu(gate)·up
    x8m: Q8Act  # (C, d) int8 blocks: the same three for a prefill chunk (the int8 GEMM route)
    att8m: Q8Act  # (C, q_dim)
    act8m: Q8Act  # (C, ff)
    logit_rows: int
    logit_stride: int  # floats from one logits row to the next (V, padded to the binding alignment)

    @classmethod
    def allocate(cls, dev: Device, cfg: ModelConfig, heads: Heads, C: int) -> "Scratch":
        d, ff, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
        f32 = lambda n, label: dev.buffer(size=n * F32, label=label)  # noqa: E731
        # logits rows padded to the adapter's binding-offset alignment: the head binds one row of them
        stride = -(-V * F32 // dev.storage_align) * dev.storage_align // F32
        rows = max(1, min(C, dev.max_binding // (stride * F32)))
        return cls(ids=dev.buffer(size=C * 4, label="ids"), h=f32(C * d, "h"), xn=f32(C * d, "xn"),
                   qkv=f32(C * heads.qkv_dim, "qkv"), q=f32(C * heads.q_dim, "q"), att=f32(C * heads.q_dim, "att"),
                   gu=f32(C * 2 * ff, "gu"), act=f32(C * ff, "act"),
                   scores=f32(heads.n_heads * heads.max_seq, "scores"), logits=f32(rows * stride, "logits"),
                   x8=ops.q8_act(dev, d, label="x8"), att8=ops.q8_act(dev, heads.q_dim, label="att8"),
                   act8=ops.q8_act(dev, ff, label="act8"), x8m=ops.q8_act(dev, d, C, label="x8m"),
                   att8m=ops.q8_act(dev, heads.q_dim, C, label="att8m"), act8m=ops.q8_act(dev, ff, C, label="act8m"),
                   logit_rows=rows, logit_stride=stride)


# ---- the model ---------------------------------------------------------------------------

class Model:
    """A decoder-only transformer (llama / mistral / qwen2 / qwen3) resident on one GPU device."""

    def __init__(self, ckpt: Checkpoint, *, dev: Device | None = None, max_seq: int = DEFAULT_MAX_SEQ,
                 chunk: int = DEFAULT_CHUNK, q8: bool = True, head_q8: bool = False, decode: str = "auto",
                 sampling: str = "auto", gemm: str = "auto"):
        """q8: decode's layer GEMVs take int8 activations (fast; ~1 % logit noise).
        head_q8: so does lm_head. Off by default: greedy picks between near-tied logits (on
        SmolLM2, 25.25 vs 25.33 for the first answer token) and int8 noise flips them.
        decode: how a decode step runs (DECODE_SCHEDULES): "ops" (one dispatch per op, this file),
        "phased" / "persistent" (the decode kernel, llmgpu/decode.py: one dispatch per phase, or one
        per token with grid barriers), "auto" (ops, until the decode kernel is the faster one).
        sampling: where generation (llmgpu/generate.py) samples: "gpu" (llmgpu/loop.py: the token
        stays on the GPU, steps are queued ahead), "cpu" (logits read back each step), "auto" (gpu
        except on CPU adapters, where a step costs ~100 ms and a speculative step is not free).
        gemm: the prefill GEMM route (ops.GEMM_ROUTES: f32, i8 on int8 activations, f16), or
        "auto" (the adapter class's measured best, ops/linear.py; f32 in place of i8 when q8 is
        off, so that q8=False means float activations everywhere)."""
        if sampling not in SAMPLING_PLACES:
            raise ValueError(f"sampling {sampling!r} is not one of {', '.join(SAMPLING_PLACES)}")
        self.ckpt = ckpt
        self.config = cfg = ckpt.config
        check_dims(cfg)
        self.max_seq = context_size(cfg, max_seq)
        self.dev = dev = dev or Device()
        self.device_name = dev.name
        self.q8, self.head_q8 = q8, q8 and head_q8
        self.gemm = ops.gemm_route(dev, gemm)
        if gemm == "auto" and self.gemm == "i8" and not q8:  # no int8 activations: the float route
            self.gemm = "f32"
        self.heads = Heads(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, self.max_seq)
        self.chunk = max(1, chunk)  # prefill rows per step, whatever the context (flash attention)
        T = ckpt.tensors
        self.layers = [load_layer(dev, T, cfg, i) for i in range(cfg.num_hidden_layers)]
        self.norm = dev.buffer(np.asarray(T["model.norm.weight"], np.float32), label="model.norm")  # (d,) f32
        self.lm_head = Q4Linear(dev, _quantized(T, "lm_head.weight"), label="lm_head")
        table = T["model.embed_tokens.weight"] if "model.embed_tokens.weight" in T else dequantize(T["lm_head.weight"])
        self.embedding = ops.EmbeddingTable.upload(dev, np.asarray(table))
        self.rope = rope_table(dev, cfg, self.max_seq)
        self.kv = KVCache(dev, cfg.num_hidden_layers, self.heads)
        self.buf = Scratch.allocate(dev, cfg, self.heads, self.chunk)
        self.step = dev.buffer(np.zeros(4, np.uint32), usage=UNIFORM, label="step", binding=False)  # pos0
        self.staging = dev.device.create_buffer(size=cfg.vocab_size * F32 + 16, label="logits.staging",  # (V,) f32 + flags
                                                usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST)
        self._steps: dict = {}  # (M, head) -> (ops, raw handles)
        self._row_heads: dict = {}  # (row, out_row) -> final norm + lm_head of one row
        self._next_decode = None  # a decode step's command buffer, recorded ahead
        self.kernel = None  # the decode kernel (llmgpu/decode.py), when the schedule uses it
        self.decode_schedule = self._choose_schedule(decode)
        self.gpu_sampling = sampling == "gpu" or (sampling == "auto" and not dev.is_cpu)
        self._pos_records = None  # loop.position_records
        self.loop_queue: dict = {}  # TokenLoop's per_submit / ahead (empty: its defaults for the adapter)
        self.fuse_norms = False  # decode_layer: norms in the residual GEMVs' last workgroup (slower on an H200)

    @classmethod
    def load(cls, source=None, *, group_size: int = DEFAULT_GROUP_SIZE, max_seq: int = DEFAULT_MAX_SEQ,
             adapter: str | None = None, progress: bool = True, dump_wgsl: str | None = None, startup=None,
             asymmetric: bool = False, calibrate: str | bool | None = None, requantize: bool = False,
             **kw) -> "Model":
        """Load a checkpoint (default: the offline SmolLM2-135M-Instruct GGUF), quantize every
        linear to q4gsw (cached on disk), and put it on the GPU. startup: a startup.Startup that
        receives the time of each of the three steps. asymmetric, calibrate, requantize: how float
        weights are quantized (loader.load_cached_or_quantize; ``llmgpu quantize``'s options)."""
        import time

        from .loader import load_cached_or_quantize
        if source is None:
            from .defaults import default_model_path
            source = default_model_path()
        t = [time.perf_counter()]
        ckpt = load_cached_or_quantize(source, group_size, progress=progress, asymmetric=asymmetric,
                                       calibrate=calibrate, requantize=requantize)
        t.append(time.perf_counter())
        dev = Device(adapter, dump_wgsl=dump_wgsl)
        t.append(time.perf_counter())
        model = cls(ckpt, dev=dev, max_seq=max_seq, **kw)
        t.append(time.perf_counter())
        if startup is not None:
            startup.load_s, startup.device_s, startup.upload_s = (b - a for a, b in zip(t, t[1:]))
        return model

    @property
    def pos(self) -> int:
        return self.kv.pos

    @property
    def cached_ids(self) -> list[int]:
        """The token ids whose keys and values the cache holds, in order."""
        return list(self.kv.ids)

    # ---- one layer, as the GPU runs it ----------------------------------------------------
    def decode_layer(self, i: int) -> list[Op]:
        """Layer i for one token (row 0 of h). With int8 activations and `fuse_norms`, the MLP norm
        runs in the last workgroup of the O projection and the next layer's attention norm in
        that of the down projection (ops.gemv's norm_after; a norm op where the GEMV cannot).
        Off by default: on an H200 it made decode slower (BENCHMARKS.md)."""
        L, b, dev, cfg = self.layers[i], self.buf, self.dev, self.config
        x, att, act = (b.x8, b.att8, b.act8) if self.q8 else (b.xn, b.att, b.act)
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        if isinstance(att, Q8Act) and self.heads.head_dim % 32:
            att_ops = [self._attention_decode(i, b.att), ops.quantize_q8(dev, b.att, att, act="f32")]
        else:
            att_ops = [self._attention_decode(i, att)]
        if not (self.q8 and self.fuse_norms):
            return [ops.rmsnorm(dev, b.h, L.attn_norm, x, rows=1, dim=d, eps=eps),
                    *ops.gemv(dev, L.qkv, x, b.qkv, act="f32"), *att_ops,
                    *ops.gemv(dev, L.o, att, b.h, residual=True, act="f32"),
                    ops.rmsnorm(dev, b.h, L.mlp_norm, x, rows=1, dim=d, eps=eps),
                    *self._swiglu_decode(L, x, act),
                    *ops.gemv(dev, L.down, act, b.h, residual=True, act="f32")]
        nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
        down_norm = dict(norm_after=(nxt.attn_norm, x, eps)) if nxt is not None else {}
        return [*([ops.rmsnorm(dev, b.h, L.attn_norm, x, rows=1, dim=d, eps=eps)] if i == 0 else []),
                *ops.gemv(dev, L.qkv, x, b.qkv, act="f32"),
                *att_ops,
                *ops.gemv(dev, L.o, att, b.h, residual=True, act="f32", norm_after=(L.mlp_norm, x, eps)),
                *self._swiglu_decode(L, x, act),
                *ops.gemv(dev, L.down, act, b.h, residual=True, act="f32", **down_norm)]

    def prefill_layer(self, i: int, M: int) -> list[Op]:
        """Layer i for M tokens (rows 0 .. M-1 of h) at cache positions pos0 .. pos0 + M - 1.
        The GEMMs take the route self.gemm; on the int8 route the norms and silu_mul write int8
        blocks and one more dispatch quantizes the attention output."""
        L, b, dev, cfg = self.layers[i], self.buf, self.dev, self.config
        d, ff, eps = cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps
        q8 = self.gemm == "i8"
        x, att, act = (replace(a, M=M) for a in (b.x8m, b.att8m, b.act8m)) if q8 else (b.xn, b.att, b.act)
        mm = lambda lin, x, y, **kw: ops.gemm(dev, lin, x, y, rows=M, act="f32", route=self.gemm, **kw)  # noqa: E731
        return [ops.rmsnorm(dev, b.h, L.attn_norm, x, rows=M, dim=d, eps=eps),
                *mm(L.qkv, x, b.qkv),
                ops.rope_kv(dev, self.step, b.qkv, self.rope, b.q, self.kv.k[i], self.kv.v[i], rows=M,
                            shape=self.heads, eps=eps, q_norm=L.q_norm, k_norm=L.k_norm),
                ops.attention_prefill(dev, self.step, b.q, self.kv.k[i], self.kv.v[i], b.att, rows=M, shape=self.heads),
                *([ops.quantize_q8(dev, b.att, att, act="f32")] if q8 else []),
                *mm(L.o, att, b.h, residual=True),
                ops.rmsnorm(dev, b.h, L.mlp_norm, x, rows=M, dim=d, eps=eps),
                *mm(L.gate_up, x, b.gu),
                ops.silu_mul(dev, b.gu, act, rows=M, ff=ff),
                *mm(L.down, act, b.h, residual=True)]

    def use_gemm(self, route: str) -> None:
        """Switch the prefill GEMM route (benchmarks compare them on one model); prefill steps are
        recorded again."""
        self.gemm = ops.gemm_route(self.dev, route)
        self._steps = {k: v for k, v in self._steps.items() if k[0] in (1, "kernel")}

    def _attention_decode(self, i: int, out) -> Op:
        L = self.layers[i]
        return ops.attention_decode(self.dev, self.step, self.buf.qkv, self.rope, self.kv.k[i], self.kv.v[i],
                                    self.buf.scores, out, shape=self.heads, eps=self.config.rms_norm_eps,
                                    q_norm=L.q_norm, k_norm=L.k_norm)

    def _swiglu_decode(self, L: Layer, x, act) -> list[Op]:
        """gate/up GEMV and silu·mul: fused into one GEMV where the weight is one slice and the
        output int8, else the GEMV then silu_mul."""
        if isinstance(act, Q8Act) and len(L.gate_up.slices) == 1:
            return ops.gemv(self.dev, L.gate_up, x, act, silu=True, act="f32")
        return [*ops.gemv(self.dev, L.gate_up, x, self.buf.gu, act="f32"),
                ops.silu_mul(self.dev, self.buf.gu, act, rows=1, ff=self.config.intermediate_size)]

    def head(self, row: int, out_row: int = 0) -> list[Op]:
        """Final norm of row `row` of h and lm_head → row `out_row` of the logits buffer."""
        b, cfg = self.buf, self.config
        V = cfg.vocab_size
        x = b.x8 if self.head_q8 else b.xn
        return [ops.rmsnorm(self.dev, b.h, self.norm, x, rows=1, dim=cfg.hidden_size, eps=cfg.rms_norm_eps, row0=row),
                *ops.gemv(self.dev, self.lm_head, x, (b.logits, out_row * b.logit_stride * F32, V * F32), act="f32")]

    def step_ops(self, M: int, head: bool = True) -> list[Op]:
        """Every dispatch of a step over M new tokens: embedding, layers, and (head) the logits
        of the last one. Built once per (M, head)."""
        return self._step(M, head)[0]

    def _step(self, M: int, head: bool):
        if M == 1 and head and self.kernel is not None:  # the decode kernel's dispatches, raw handles once
            key = ("kernel", self.decode_schedule)
            if key not in self._steps:
                step = self.kernel.ops(self.decode_schedule)
                self._steps[key] = (step, fastpath.compile_ops(step))
            return self._steps[key]
        key = (M, head)
        if key not in self._steps:
            layer = self.decode_layer if M == 1 else lambda i: self.prefill_layer(i, M)
            step = [ops.embed(self.dev, self.buf.ids, self.embedding, self.buf.h, rows=M)]
            for i in range(len(self.layers)):
                step += layer(i)
            if head:
                step += self.head(M - 1)
            if len(self._steps) > 8:  # prefill remainders: keep the cache small
                self._steps.pop(next(k for k in self._steps if k[0] not in (1, "kernel")))
            self._steps[key] = (step, fastpath.compile_ops(step))
        return self._steps[key]

    def _choose_schedule(self, decode: str) -> str:
        from .decode import DecodeKernel
        if decode not in DECODE_SCHEDULES:
            raise ValueError(f"decode schedule {decode!r} is not one of {', '.join(DECODE_SCHEDULES)}")
        if decode == "auto":  # the decode kernel is slower than the per-op path so far (BENCHMARKS.md)
            decode = "ops"
        if decode == "ops":
            return decode
        why = DecodeKernel.unsupported(self)
        if why:
            raise ValueError(f"--decode {decode}: {why}; use --decode ops")
        if decode == "persistent" and not self.dev.has_coherent:
            raise ValueError(f"--decode persistent needs the memory-decoration-coherent feature, which "
                             f"{self.dev.name} lacks; use --decode phased")
        if decode == "persistent" and self.dev.is_cpu:  # seen on lavapipe: spins that pass early
            raise ValueError(f"--decode persistent needs workgroups that run at the same time, which a CPU "
                             f"adapter ({self.dev.name}) does not give; use --decode phased")
        self.kernel = DecodeKernel(self)
        return decode

    # ---- running steps --------------------------------------------------------------------
    def reset(self) -> None:
        self.kv.truncate(0)

    def truncate(self, pos: int) -> None:
        self.kv.truncate(pos)

    def _record(self, M: int, head: bool):
        step, raw = self._step(M, head)
        V = self.config.vocab_size

        def copy_logits(enc):  # the logits row goes straight to a mappable buffer, same submission
            enc.copy_buffer_to_buffer(self.buf.logits, 0, self.staging, 0, V * F32)
            if M == 1 and self.kernel is not None:  # and the decode kernel's flags
                enc.copy_buffer_to_buffer(self.kernel.sync, 0, self.staging, V * F32, 16)
        return ops.encode(self.dev, step, raw, copy_logits if head else None)

    def _run(self, ids: list[int], head: bool) -> None:
        M = len(ids)
        self.dev.write(self.buf.ids, np.asarray(ids, np.uint32))
        self.dev.write(self.step, np.array([self.kv.pos, 0, 0, 0], np.uint32))
        decode = M == 1 and head
        cmd = self._next_decode if decode and self._next_decode is not None else self._record(M, head)
        if decode and self.kernel is not None:  # (after recording: that may run a discovery dispatch)
            self.kernel.prepare(self.kv.pos, ids[0])
        self.dev.queue.submit([cmd])
        self._next_decode = None
        self.kv.ids += ids
        if decode:  # record the next step's dispatches while the GPU runs this one
            self._next_decode = self._record(1, True)

    def _read_staged(self) -> np.ndarray:
        """The logits (V,) that the last step with head=True copied into self.staging. If that step
        ran the persistent decode kernel and one of its grid barriers gave up (workgroups that were
        not resident together), the step runs again on the phased schedule, which every later step
        keeps; one line on stderr says so."""
        V = self.config.vocab_size
        self.staging.map_sync(wgpu.MapMode.READ)
        try:
            raw = self.staging.read_mapped(0, V * F32 + 16)
            logits = np.frombuffer(raw, np.float32, V).copy()
            sync = np.frombuffer(raw, np.uint32, 4, V * F32)
        finally:
            self.staging.unmap()
        if self.decode_schedule == "persistent" and not self.kernel.barriers_held(sync):
            self.fall_back_to_phased()
            token = self.kv.ids[-1]
            self.kv.truncate(self.kv.pos - 1)
            self._run([token], head=True)
            return self._read_staged()
        return logits

    def fall_back_to_phased(self) -> None:
        """A persistent step's grid barrier gave up: every later step runs phased (said once)."""
        print(f"llmgpu: the persistent decode kernel's grid barrier timed out on {self.dev.name}; "
              f"decoding on the phased schedule from now on", file=sys.stderr)
        self.decode_schedule, self._next_decode = "phased", None

    def _checked(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("prefill needs at least one token")
        self.kv.check_room(len(ids))
        V = self.config.vocab_size
        bad = [i for i in ids if not 0 <= i < V]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {V})")
        return ids

    def prefill(self, ids, read: bool = True) -> np.ndarray | None:
        """Append ids to the cache (in chunks); return the last token's logits (vocab,) f32 (read:
        else they stay in the logits buffer, for the GPU sampler). Waits for the GPU between
        chunks, so that Ctrl-C takes effect within one chunk."""
        ids = self._checked(ids)
        for s in range(0, len(ids), self.chunk):
            if s:
                self.dev.sync()
            self._run(ids[s:s + self.chunk], head=s + self.chunk >= len(ids))
        return self._read_staged() if read else None

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; return its logits (vocab,) f32."""
        self._run(self._checked([token_id]), head=True)
        return self._read_staged()

    def logits(self, ids) -> np.ndarray:
        """From an empty cache, the logits of every position (len(ids), vocab) f32."""
        self.reset()
        ids = self._checked(ids)
        out = np.empty((len(ids), self.config.vocab_size), np.float32)
        rows = self.buf.logit_rows
        for s in range(0, len(ids), self.chunk):
            part = ids[s:s + self.chunk]
            self._run(part, head=False)
            for r0 in range(0, len(part), rows):
                r1 = min(len(part), r0 + rows)
                heads = [op for r in range(r0, r1) for op in self._row_head(r, r - r0)]
                ops.submit(self.dev, heads)  # each row through the same path as decode's head
                got = self.dev.read(self.buf.logits, np.float32, (r1 - r0, self.buf.logit_stride))
                out[s + r0:s + r1] = got[:, :self.config.vocab_size]
        return out

    def _row_head(self, row: int, out_row: int) -> list[Op]:
        key = (row, out_row)
        if key not in self._row_heads:
            self._row_heads[key] = self.head(row, out_row)
        return self._row_heads[key]
