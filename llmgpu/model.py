"""The model on the GPU: weights, KV cache, and prefill / decode as recorded dispatches.

One layer of decode (M = 1), as the GPU sees it: seven dispatches

    rmsnorm → int8 │ QKV GEMV (+bias) │ attention (q/k norm, RoPE, cache write, → int8)
    │ O GEMV (+= h) │ rmsnorm → int8 │ gate/up GEMV (→ silu·mul → int8) │ down GEMV (+= h)

then final rmsnorm │ lm_head GEMV → logits. Prefill (M > 1) runs the GEMM on f32 inputs with
separate rope_kv and silu_mul dispatches (a query there needs keys that other workgroups write).
Every buffer, pipeline and bind group exists before the first token; a step writes the token id
and its position (a uniform shared by every layer), records the dispatches into one command
buffer and submits it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import wgpu

from .config import rope_inv_freq
from . import fastpath
from .gpu import UNIFORM, Device
from .kernels import Op, Q4Linear, encode, linear, q8_act, quantize_q8, submit
from .loader import Checkpoint
from .quant import Q4Tensor, Q8Tensor, dequantize

F32 = 4


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
    attn_norm: object  # (d,) f32
    mlp_norm: object  # (d,) f32
    qkv: Q4Linear  # (q_dim + 2·kv_dim, d), biases fused
    o: Q4Linear  # (d, q_dim)
    gate_up: Q4Linear  # (2·ff, d): gate and up rows interleaved in blocks of 32
    down: Q4Linear  # (d, ff)
    q_norm: object  # (hd,) f32 or a dummy
    k_norm: object
    kc: object  # (max_seq, n_kv, hd) cache dtype
    vc: object  # (max_seq, n_kv, hd) cache dtype


class Model:
    """A decoder-only transformer (llama / mistral / qwen2 / qwen3) resident on one GPU device."""

    def __init__(self, ckpt: Checkpoint, *, dev: Device | None = None, max_seq: int = 4096,
                 chunk: int = 256, q8: bool = True, head_q8: bool = False):
        """q8: decode's layer GEMVs take int8 activations (fast; ~1 % logit noise).
        head_q8: so does lm_head. Off by default: greedy picks between near-tied logits (on
        SmolLM2, 25.25 vs 25.33 for the first answer token) and int8 noise flips them."""
        self.ckpt = ckpt
        self.config = cfg = ckpt.config
        self.dev = dev = dev or Device()
        self.device_name = dev.name
        self.q8 = q8
        self.head_q8 = q8 and head_q8
        if cfg.sliding_window and max_seq > cfg.sliding_window:
            raise ValueError(f"context {max_seq} exceeds this model's sliding window {cfg.sliding_window} "
                             f"(llmgpu implements full attention only); use a context of at most "
                             f"{cfg.sliding_window}")
        self.max_seq = max_seq = min(max_seq, cfg.max_position_embeddings)
        self.pos = 0
        d, hd, nh, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        if d % 32 or cfg.intermediate_size % 32 or hd % 4:
            raise ValueError(f"unsupported dimensions: hidden_size {d} and intermediate_size "
                             f"{cfg.intermediate_size} must be multiples of 32, head_dim {hd} of 4")
        if hd > 256:
            raise ValueError(f"head_dim {hd} > 256 is not supported")
        # Prefill chunk: bounded so that the attention scratch fits one storage binding.
        self.chunk = max(1, min(chunk, dev.max_binding // (nh * max_seq * F32)))
        self.cache_t = "f16" if dev.has_f16 else "f32"
        cache_np = np.float16 if dev.has_f16 else np.float32
        T = ckpt.tensors

        def f32(name):
            return dev.buffer(np.asarray(T[name], np.float32), label=name)

        def q4(name):
            t = T[name]
            if not isinstance(t, (Q4Tensor, Q8Tensor)):
                raise ValueError(f"{name} is not quantized; load through Model.load or quantize_checkpoint")
            return t

        dummy = dev.buffer(size=16, label="dummy")
        self.layers: list[Layer] = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv_bias = None
            if a + "q_proj.bias" in T:
                qkv_bias = np.concatenate([np.asarray(T[a + n + ".bias"], np.float32)
                                           for n in ("q_proj", "k_proj", "v_proj")])
            kv_bytes = max_seq * nkv * hd * np.dtype(cache_np).itemsize
            self.layers.append(Layer(
                attn_norm=f32(p + "input_layernorm.weight"),
                mlp_norm=f32(p + "post_attention_layernorm.weight"),
                qkv=Q4Linear(dev, _cat_rows([q4(a + "q_proj.weight"), q4(a + "k_proj.weight"),
                                             q4(a + "v_proj.weight")]), label=f"L{i}.qkv", bias=qkv_bias),
                o=Q4Linear(dev, q4(a + "o_proj.weight"), label=f"L{i}.o",
                           bias=np.asarray(T[a + "o_proj.bias"], np.float32) if a + "o_proj.bias" in T else None),
                gate_up=Q4Linear(dev, _interleave32(_cat_rows([q4(p + "mlp.gate_proj.weight"),
                                                               q4(p + "mlp.up_proj.weight")])),
                                 label=f"L{i}.gate_up"),
                down=Q4Linear(dev, q4(p + "mlp.down_proj.weight"), label=f"L{i}.down"),
                q_norm=f32(a + "q_norm.weight") if cfg.qk_norm else dummy,
                k_norm=f32(a + "k_norm.weight") if cfg.qk_norm else dummy,
                kc=dev.buffer(size=kv_bytes, label=f"L{i}.k_cache"),
                vc=dev.buffer(size=kv_bytes, label=f"L{i}.v_cache")))
        self.norm = f32("model.norm.weight")
        self.lm_head = Q4Linear(dev, q4("lm_head.weight"), label="lm_head")
        self._init_embedding(np.asarray(T["model.embed_tokens.weight"]) if "model.embed_tokens.weight" in T
                             else dequantize(T["lm_head.weight"]))
        inv = rope_inv_freq(cfg)
        ang = np.arange(max_seq, dtype=np.float64)[:, None] * inv[None, :]
        self.rope = dev.buffer(np.stack([np.cos(ang), np.sin(ang)], axis=-1).astype(np.float32), label="rope")

        C, V = self.chunk, cfg.vocab_size
        qkv_dim = (nh + 2 * nkv) * hd
        ff = cfg.intermediate_size
        buf = lambda n, label: dev.buffer(size=n * F32, label=label)  # noqa: E731
        self.ids = dev.buffer(size=C * 4, label="ids")  # (C,) u32
        self.h = buf(C * d, "h")  # (C, d) residual stream
        self.xn = buf(C * d, "xn")  # (C, d) normed
        self.qkv = buf(C * qkv_dim, "qkv")  # (C, qkv_dim)
        self.q = buf(C * nh * hd, "q")  # (C, n_heads·hd) rotated queries
        self.att = buf(C * nh * hd, "att")  # (C, n_heads·hd) attention output
        self.gu = buf(C * 2 * ff, "gu")  # (C, 2·ff)
        self.act = buf(C * ff, "act")  # (C, ff)
        self.scores = buf(C * nh * max_seq, "scores")  # (C·n_heads, max_seq) attention scratch
        self.logits_rows = max(1, min(C, dev.max_binding // (V * F32)))
        self.logits_buf = buf(self.logits_rows * V, "logits")  # (rows, V)
        self.x8, self.att8, self.act8 = q8_act(dev, d, label="x8"), q8_act(dev, nh * hd, label="att8"), \
            q8_act(dev, ff, label="act8")
        self.step = dev.buffer(np.zeros(4, np.uint32), usage=UNIFORM, label="step", binding=False)
        self._ops: dict = {}  # (M, head) -> the step's ops
        self._row_ops: dict = {}  # (row, out_row) -> final norm + lm_head of one row
        self._next_decode = None  # a decode step's command buffer, recorded ahead
        self.staging = dev.device.create_buffer(size=V * F32, usage=wgpu.BufferUsage.MAP_READ |
                                                wgpu.BufferUsage.COPY_DST, label="logits.staging")  # (V,) f32

    @classmethod
    def load(cls, source=None, *, group_size: int = 32, max_seq: int = 4096, adapter: str | None = None,
             progress: bool = True, **kw) -> "Model":
        """Load a checkpoint (default: the offline SmolLM2-135M-Instruct GGUF), quantize every
        linear to q4gsw (cached on disk), and put it on the GPU."""
        from .loader import load_cached_or_quantize
        if source is None:
            from .defaults import default_model_path
            source = default_model_path()
        ckpt = load_cached_or_quantize(source, group_size, progress=progress)
        dev = Device(adapter)
        return cls(ckpt, dev=dev, max_seq=max_seq, **kw)

    # ---- embedding ------------------------------------------------------------------------
    def _init_embedding(self, table: np.ndarray) -> None:
        dev = self.dev
        et = np.float16 if dev.has_f16 else np.float32
        table = np.ascontiguousarray(table, dtype=et)
        V, d = table.shape
        row = d * table.itemsize
        rows0 = min(V, dev.max_binding // row)
        if (V - rows0) * row > dev.max_binding:
            raise ValueError(f"the embedding table ({V}×{d}) needs more than two storage bindings on "
                             f"{dev.name}; use an adapter with a larger max storage binding")
        self.emb_t = "f16" if et == np.float16 else "f32"
        self.emb_rows0 = rows0
        self.emb = (dev.buffer(table[:rows0], label="embed[0]"),
                    dev.buffer(table[rows0:], label="embed[1]") if rows0 < V else dev.buffer(size=16))

    # ---- recorded dispatches --------------------------------------------------------------
    def _op(self, shader, consts, types, binds, grid, params):
        dev = self.dev
        pipe = dev.pipeline(shader, consts=consts, types=types)
        u = dev.uniform(params, label=f"{shader}.params")
        return Op(pipe, dev.bind_group(pipe, {0: u, **binds}), grid, keep=[u])

    def _norm(self, x, w, M, out, row=0) -> Op:
        """RMSNorm of rows row .. row+M of x into out (f32 rows from 0, or int8 blocks)."""
        cfg = self.config
        params = [M, cfg.hidden_size, float(cfg.rms_norm_eps), row]
        consts = {"WG": 128, "SUBGROUPS": self.dev.has_subgroups, "Q8OUT": hasattr(out, "xq")}
        binds = {1: x, 2: w, 3: out.xq, 4: out.xd} if hasattr(out, "xq") else {1: x, 2: w, 3: out}
        return self._op("norm", consts, {}, binds, (M, 1, 1), params)

    def _linear(self, lin, x, y, M, residual=False) -> list[Op]:
        return linear(self.dev, lin, x, y, M, residual=residual, config=self._lin_config(lin, M))

    def _lin_config(self, lin, M):
        from .kernels import gemm_config, gemv_config
        cfg = gemv_config(self.dev, lin.K, lin.N) if M == 1 else gemm_config(self.dev, M, lin.N)
        return {**cfg, "ACT": "f32"}

    def _layer_ops(self, L: Layer, M: int) -> list[Op]:
        cfg, dev = self.config, self.dev
        nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        dec = M == 1 and self.q8
        x_in, att_in, act_in = (self.x8, self.att8, self.act8) if dec else (self.xn, self.att, self.act)
        ops = [self._norm(self.h, L.attn_norm, M, x_in)]
        ops += self._linear(L.qkv, x_in, self.qkv, M)
        fuse8 = dec and hd % 32 == 0  # attention writes int8 blocks itself (blocks within a head)
        out = {6: self.att8.xq, 7: self.att8.xd} if fuse8 else {6: self.att}
        consts = {"WG": 256, "D4": hd // 4, "SUBGROUPS": dev.has_subgroups, "Q8OUT": fuse8,
                  "ROPE": M == 1, "QK_NORM": cfg.qk_norm}
        params = [M, nh, nkv, hd, self.max_seq, float(hd ** -0.5), float(cfg.rms_norm_eps)]
        if M == 1:  # decode: attention does rope_kv's work itself (no cross-workgroup dependency)
            binds = {1: self.step, 2: self.qkv, 3: L.kc, 4: L.vc, 5: self.scores, 8: self.rope,
                     9: L.q_norm, 10: L.k_norm, **out}  # q/k norms: dummies without QK_NORM
        else:
            ops.append(self._op("rope_kv", {"WG": 64, "QK_NORM": cfg.qk_norm}, {"cache_t": self.cache_t},
                                {1: self.step, 2: self.qkv, 3: self.rope, 4: L.q_norm, 5: L.k_norm, 6: self.q,
                                 7: L.kc, 8: L.vc},
                                (nh + 2 * nkv, M, 1), [M, nh, nkv, hd, float(cfg.rms_norm_eps)]))
            binds = {1: self.step, 2: self.q, 3: L.kc, 4: L.vc, 5: self.scores, **out}
        ops.append(self._op("attention", consts, {"cache_t": self.cache_t}, binds, (nh, M, 1), params))
        if dec and not fuse8:
            ops.append(quantize_q8(dev, self.att, self.att8, act="f32"))
        ops += self._linear(L.o, att_in, self.h, M, residual=True)
        ops.append(self._norm(self.h, L.mlp_norm, M, x_in))
        ff = cfg.intermediate_size
        if dec and len(L.gate_up.slices) == 1:  # gate/up GEMV writes silu(gate)·up as int8 itself
            ops += linear(dev, L.gate_up, x_in, act_in, 1, silu=True)
        else:
            ops += self._linear(L.gate_up, x_in, self.gu, M)
            out = {2: act_in.xq, 3: act_in.xd} if dec else {2: act_in}
            ops.append(self._op("silu_mul", {"WG": 64, "Q8OUT": dec}, {}, {1: self.gu, **out},
                                dev.grid(-(-M * (ff // 32) // 64)), [M, ff]))
        ops += self._linear(L.down, act_in, self.h, M, residual=True)
        return ops

    def _embed_op(self, M: int) -> Op:
        d = self.config.hidden_size
        return self._op("embed", {"WG": 64}, {"emb_t": self.emb_t},
                        {1: self.ids, 2: self.emb[0], 3: self.emb[1], 4: self.h},
                        self.dev.grid(-(-M * d // 4 // 64)), [M, d, self.emb_rows0])

    def _head_ops(self, row: int, out_row: int = 0) -> list[Op]:
        """Final norm of row `row` of h and lm_head → row `out_row` of the logits buffer."""
        V = self.config.vocab_size
        x = self.x8 if self.head_q8 else self.xn
        return [self._norm(self.h, self.norm, 1, x, row)] + \
            self._linear(self.lm_head, x, (self.logits_buf, out_row * V * F32, V * F32), 1)

    def ops(self, M: int, head: bool = True) -> list[Op]:
        """All dispatches of a step over M new tokens (cached per M)."""
        key = (M, head)
        if key not in self._ops:
            ops = [self._embed_op(M)]
            for L in self.layers:
                ops += self._layer_ops(L, M)
            if head:
                ops += self._head_ops(M - 1)
            if len(self._ops) > 8:  # prefill remainders: keep the cache small
                self._ops.pop(next(k for k in self._ops if k[0] != 1))
            self._ops[key] = (ops, fastpath.compile_ops(ops))
        return self._ops[key][0]

    # ---- the interface used by generation -------------------------------------------------
    def reset(self) -> None:
        self.pos = 0

    def truncate(self, pos: int) -> None:
        if not 0 <= pos <= self.pos:
            raise ValueError(f"cannot truncate the cache to {pos} tokens (it holds {self.pos})")
        self.pos = pos

    def _check_room(self, n: int) -> None:
        if self.pos + n > self.max_seq:
            raise ValueError(f"prompt plus new tokens ({self.pos + n}) exceed the context of {self.max_seq} "
                             f"tokens; start a new conversation or load with a larger context (--ctx)")

    def _record(self, M: int, head: bool):
        ops = self.ops(M, head)

        def copy_logits(enc):  # the logits row goes straight to a mappable buffer, same submission
            enc.copy_buffer_to_buffer(self.logits_buf, 0, self.staging, 0, self.config.vocab_size * F32)
        return encode(self.dev, ops, self._ops[(M, head)][1], copy_logits if head else None)

    def _run(self, ids, head: bool) -> None:
        M = len(ids)
        self.dev.write(self.ids, np.asarray(ids, np.uint32))
        self.dev.write(self.step, np.array([self.pos, 0, 0, 0], np.uint32))
        decode = M == 1 and head
        cmd = self._next_decode if decode and self._next_decode is not None else self._record(M, head)
        self.dev.queue.submit([cmd])
        self._next_decode = None
        if decode:  # record the next step's dispatches while the GPU runs this one
            self._next_decode = self._record(1, True)
        self.pos += M

    def _read_staged(self) -> np.ndarray:
        """The logits (V,) that the last step with head=True copied into self.staging."""
        V = self.config.vocab_size
        self.staging.map_sync(wgpu.MapMode.READ)
        try:
            return np.frombuffer(self.staging.read_mapped(0, V * F32), np.float32).copy()
        finally:
            self.staging.unmap()

    def _read_logits(self, rows: int) -> np.ndarray:
        return self.dev.read(self.logits_buf, np.float32, (rows, self.config.vocab_size))

    def prefill(self, ids) -> np.ndarray:
        """Append ids to the cache (in chunks); return the last token's logits (vocab,) f32."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("prefill needs at least one token")
        self._check_room(len(ids))
        self._validate(ids)
        for s in range(0, len(ids), self.chunk):
            part = ids[s:s + self.chunk]
            self._run(part, head=s + self.chunk >= len(ids))
        return self._read_staged()

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; return its logits (vocab,) f32."""
        self._check_room(1)
        self._validate([token_id])
        self._run([int(token_id)], head=True)
        return self._read_staged()

    def logits(self, ids) -> np.ndarray:
        """From an empty cache, the logits of every position (len(ids), vocab) f32."""
        ids = [int(i) for i in ids]
        self.reset()
        self._check_room(len(ids))
        self._validate(ids)
        out = np.empty((len(ids), self.config.vocab_size), np.float32)
        for s in range(0, len(ids), self.chunk):
            part = ids[s:s + self.chunk]
            self._run(part, head=False)
            for r0 in range(0, len(part), self.logits_rows):
                r1 = min(len(part), r0 + self.logits_rows)
                ops = []
                for r in range(r0, r1):  # each row through the same path as decode's head
                    ops += self._row_head_ops(r, r - r0)
                submit(self.dev, ops)
                out[s + r0:s + r1] = self._read_logits(r1 - r0)
        return out

    def _row_head_ops(self, row: int, out_row: int) -> list[Op]:
        key = (row, out_row)
        if key not in self._row_ops:
            self._row_ops[key] = self._head_ops(row, out_row)
        return self._row_ops[key]

    def _validate(self, ids) -> None:
        V = self.config.vocab_size
        bad = [i for i in ids if not 0 <= i < V]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {V})")

