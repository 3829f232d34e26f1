"""Decode as one kernel: every layer and the head as phases of shaders/decode.wgsl.

Two schedules run the same phase code:

* ``persistent``: one dispatch per token; a grid barrier (atomic counter, bounded spin) between
  phases. Needs every workgroup resident at once, so it launches no more than a discovery run
  found resident (`resident_workgroups`), and `@coherent` storage for what crosses a barrier.
  If a barrier's spin runs out, the kernel sets an error flag and leaves; the model reruns the
  step on the phased schedule and says so once on stderr.
* ``phased``: one dispatch per phase; the dispatch boundary is the barrier. Runs on any adapter
  (lavapipe in CI), which is how the tests check the very code the persistent schedule runs.

The kernel reads the weights stacked over layers (one buffer per projection kind); the per-layer
linears that prefill and the per-op path use become views of those buffers where the adapter can
bind a layer's rows at their offset (`_share_with_layers`), so the weights are on the GPU once.
`DecodeKernel.unsupported(model)` says why a model cannot use it (then decode stays on the
per-op dispatches of `Model.decode_layer`).
"""
from __future__ import annotations

import numpy as np

from .gpu import UNIFORM
from .model import _cat_rows, _interleave32
from .ops import Op, submit
from .quant import Q4Tensor, Q8Tensor

PHASES_PER_LAYER = 5
PHASE_KINDS = ("qkv", "attention", "o", "gate/up", "down")  # phase 5·layer + k is of kind k; then the head
WG = 256
MAX_WEIGHTS = 2048  # combine weights in workgroup memory: n_heads · blocks


def phases(n_layers: int) -> int:
    """Phases of one decode step: five per layer and the head."""
    return PHASES_PER_LAYER * n_layers + 1


def _block(max_seq: int, n_heads: int) -> int:
    """Attention positions per unit: 128, or more where n_heads · blocks would not fit."""
    b = 128
    while n_heads * -(-max_seq // b) > MAX_WEIGHTS:
        b *= 2
    return b


def workgroup_bytes(cfg, max_seq: int, wg: int = WG) -> int:
    """Workgroup memory of decode.wgsl for a model (its WSM4 and the small arrays beside it)."""
    widest = max(cfg.hidden_size, cfg.intermediate_size, cfg.q_dim)
    block = _block(max_seq, cfg.num_attention_heads)
    weights = cfg.num_attention_heads * -(-max_seq // block)
    gemv = widest // 16 + -(-widest // 32 // 2) + -(-weights // 4)
    attention = wg + cfg.head_dim + block // 4
    return 16 * max(gemv, cfg.hidden_size // 4, attention) + 4 * wg + 4 * 64 + 16 * 8 + 16


def _batches(n: int, unroll: int) -> int:
    """Load batches a lane runs for n chunks of a row (dot_K in decode_gemv.wgsl: batches of 8
    (UNROLL 8), then 4 while they fit, then single chunks)."""
    b = 0
    for size in (8, 4):
        if unroll >= size:
            b += n // size
            n %= size
    return b + n


def row_split(rows: int, chunks: int, workgroups: int, max_tpr: int, unroll: int = 8,
              min_tpr: int = 1, wg: int = WG) -> int:
    """Threads per row for one weight (rows × chunks of 32 values) spread over `workgroups`
    workgroups of `wg` lanes: the fewest dependent load round trips a workgroup runs (passes over
    its rows × load batches per pass), ties to more threads a row (the rows then spread over
    more workgroups). E.g. the 1B's gate/up (16384 × 64) at 132 workgroups, 8-load batches:
    8 threads a row, 4 passes of one batch (4 threads tie: 2 passes of two batches), where 16
    threads a row took 8 passes of one 4-load batch.
    On the H200 the split gave the 1B 812-852 t/s against 796 (the head's phase 282 → 121 µs)
    and the 8B 287 against 284 (BENCHMARKS.md)."""
    best, best_cost = max_tpr, None
    t = 1
    while t <= max_tpr:
        if t >= min_tpr:
            units = -(-rows * t // wg)
            cost = -(-units // workgroups) * _batches(-(-chunks // t), unroll)
            if best_cost is None or cost <= best_cost:
                best, best_cost = t, cost
        t *= 2
    return best


def _stack(T: dict, names: list[list[str]], fuse=None) -> Q4Tensor:
    """Each layer's weight (rows of several tensors fused, optionally reordered) stacked along rows."""
    parts = []
    for group in names:
        t = _cat_rows([T[n] for n in group])
        parts.append(fuse(t) if fuse else t)
    return _cat_rows(parts)


class DecodeKernel:
    """decode.wgsl for one model: its stacked weights, scratch, pipelines and recorded ops."""

    @staticmethod
    def unsupported(model) -> str | None:
        """Why this model cannot use the decode kernel (None: it can)."""
        cfg, dev, T = model.config, model.dev, model.ckpt.tensors
        if not model.q8:
            return "the decode kernel takes int8 activations (q8=True)"
        if not model.kv.stacked:
            return "the KV cache does not fit one storage binding"
        if model.embedding.t1 is not None:
            return "the embedding table does not fit one storage binding"
        if cfg.num_attention_heads * cfg.head_dim % 32 or cfg.head_dim > 256 or cfg.head_dim % 4:
            return "the attention width is not a multiple of 32 (or head_dim > 256)"
        if not isinstance(T["lm_head.weight"], (Q4Tensor, Q8Tensor)):
            return "lm_head is not quantized"
        sizes = {t.group_size for n, t in T.items() if isinstance(t, Q4Tensor) and n != "lm_head.weight"}
        if len(sizes) != 1:
            return f"the layers' weights use several group sizes {sorted(sizes)}"
        need = 2 * cfg.num_hidden_layers * cfg.intermediate_size * cfg.hidden_size // 2
        if need > dev.max_binding:
            return "the stacked gate/up weights exceed one storage binding"
        if workgroup_bytes(cfg, model.max_seq) > dev.max_workgroup_storage:
            return "its activations do not fit the adapter's workgroup memory"
        return None

    def __init__(self, model, workgroups: int | None = None):
        why = self.unsupported(model)
        if why:
            raise ValueError(f"the decode kernel cannot run this model: {why}")
        self.model, self.dev = model, model.dev
        cfg = model.config
        self.n_phases = phases(cfg.num_hidden_layers)
        self.block = _block(model.max_seq, cfg.num_attention_heads)
        self._upload_weights()
        self._allocate_scratch()
        self.step = self.dev.buffer(np.zeros(4, np.uint32), usage=UNIFORM, label="decode.step", binding=False)
        # Workgroups per dispatch (None: by schedule). Phased: a CPU adapter runs them one after
        # another, each at a fixed cost (~0.5 ms on lavapipe), so 4; a GPU 264. Persistent: half
        # of what the adapter keeps resident (launch_workgroups; measured once).
        self.workgroups = workgroups
        self.spin = 200_000  # iterations a grid barrier waits before it gives up (0: at once, for tests)
        # kernel shape overrides for sweeps: WG (workgroup size), TPR (threads a row, every weight
        # alike), TPR_qkv .. TPR_hd (one weight's), UNROLL (4, 8), SPLIT=False (TPR for all)
        self.config: dict = {}
        self._grid = 0
        self._ops: dict = {}

    # ---- buffers ------------------------------------------------------------------------
    def _upload_weights(self) -> None:
        T, cfg, dev = self.model.ckpt.tensors, self.model.config, self.dev
        L = cfg.num_hidden_layers
        a = [f"model.layers.{i}.self_attn." for i in range(L)]
        m = [f"model.layers.{i}.mlp." for i in range(L)]
        kinds = {"qkv": _stack(T, [[p + "q_proj.weight", p + "k_proj.weight", p + "v_proj.weight"] for p in a]),
                 "o": _stack(T, [[p + "o_proj.weight"] for p in a]),
                 "gu": _stack(T, [[p + "gate_proj.weight", p + "up_proj.weight"] for p in m], _interleave32),
                 "dn": _stack(T, [[p + "down_proj.weight"] for p in m])}
        self.group_size = kinds["qkv"].group_size
        self.has_offsets = any(t.offsets is not None for t in kinds.values())
        self.w: dict = {}
        for k, t in kinds.items():
            self.w[f"w_{k}"] = dev.buffer(t.qweight, label=f"decode.w_{k}")
            self.w[f"s_{k}"] = dev.buffer(t.scales.astype(dev.act_dtype), label=f"decode.s_{k}")
            if self.has_offsets:
                off = t.offsets if t.offsets is not None else np.zeros(t.scales.shape, np.float32)
                self.w[f"o_{k}"] = dev.buffer(off, label=f"decode.o_{k}")
        self.shared_layers = self._share_with_layers()
        self._upload_biases(T, a)
        head = T["lm_head.weight"]
        self.head_w8 = isinstance(head, Q8Tensor)
        self.head_offsets = not self.head_w8 and head.offsets is not None
        lm = self.model.lm_head
        if len(lm.slices) == 1:  # the model's own lm_head buffers (the same data), not a second copy
            sl = lm.slices[0]
            self.w["w_hd"], self.w["s_hd"] = sl.qweight, sl.scales
            if self.head_offsets:
                self.w["o_hd"] = sl.offsets
        else:
            self.w["w_hd"] = dev.buffer(head.qweight, label="decode.w_hd")
            self.w["s_hd"] = dev.buffer(head.scales.astype(dev.act_dtype), label="decode.s_hd")
            if self.head_offsets:
                self.w["o_hd"] = dev.buffer(head.offsets, label="decode.o_hd")
        if not self.head_w8 and head.group_size != self.group_size:
            raise ValueError("the decode kernel needs lm_head in the layers' group size")
        norms = [T[f"model.layers.{i}.input_layernorm.weight"] for i in range(L)]
        norms += [T[f"model.layers.{i}.post_attention_layernorm.weight"] for i in range(L)]
        norms += [T["model.norm.weight"]]
        if cfg.qk_norm:
            norms += [T[p + "q_norm.weight"] for p in a] + [T[p + "k_norm.weight"] for p in a]
        self.w["nrm"] = dev.buffer(np.concatenate([np.asarray(n, np.float32).ravel() for n in norms]),
                                   label="decode.norms")

    def _share_with_layers(self) -> int:
        """Point the per-layer linears (prefill, the per-op path) at their rows of the stacked
        buffers and free their own copies, so the weights are on the GPU once. A layer's weight
        stays separate where its rows do not start at an offset the adapter can bind (a multiple
        of its min-storage-buffer-offset-alignment) or it is split over several buffers.
        -> weights shared."""
        dev, align, shared = self.dev, self.dev.storage_align, 0
        for k, attr in (("qkv", "qkv"), ("o", "o"), ("gu", "gate_up"), ("dn", "down")):
            for i, layer in enumerate(self.model.layers):
                lin = getattr(layer, attr)
                if len(lin.slices) != 1 or isinstance(lin.slices[0].qweight, tuple):
                    continue
                sl = lin.slices[0]
                rows, groups = lin.N, lin.K // lin.group_size
                views = {"qweight": (self.w[f"w_{k}"], i * rows * lin.K // 2, rows * lin.K // 2),
                         "scales": (self.w[f"s_{k}"], i * rows * groups * np.dtype(dev.act_dtype).itemsize,
                                    rows * groups * np.dtype(dev.act_dtype).itemsize)}
                if sl.offsets is not None:
                    views["offsets"] = (self.w[f"o_{k}"], i * rows * groups * 4, rows * groups * 4)
                if any(off % align for _, off, _ in views.values()):
                    continue
                for name, view in views.items():
                    getattr(sl, name).destroy()
                    setattr(sl, name, view)
                shared += 1
        return shared

    def _upload_biases(self, T: dict, a: list[str]) -> None:
        cfg, dev = self.model.config, self.dev
        kv, q = cfg.kv_dim, cfg.q_dim

        def stacked(names, sizes):
            return np.concatenate([np.asarray(T[n], np.float32) if n in T else np.zeros(s, np.float32)
                                   for n, s in zip(names, sizes)])
        self.qkv_bias = any(p + "q_proj.bias" in T for p in a)
        self.o_bias = any(p + "o_proj.bias" in T for p in a)
        if self.qkv_bias:
            names = [p + n + ".bias" for p in a for n in ("q_proj", "k_proj", "v_proj")]
            self.w["b_qkv"] = dev.buffer(stacked(names, [q, kv, kv] * len(a)), label="decode.b_qkv")
        if self.o_bias:
            self.w["b_o"] = dev.buffer(stacked([p + "o_proj.bias" for p in a], [cfg.hidden_size] * len(a)),
                                       label="decode.b_o")

    def _allocate_scratch(self) -> None:
        cfg, dev, m = self.model.config, self.dev, self.model
        nb_max = -(-m.max_seq // self.block)
        f32 = lambda n, label: dev.buffer(size=4 * n, label=label)  # noqa: E731
        self.scratch = {
            "h": f32(cfg.hidden_size, "decode.h"),  # (d,) the residual stream
            "qkv": f32(m.heads.qkv_dim, "decode.qkv"),  # (qkv_dim,)
            "part": f32(cfg.num_attention_heads * nb_max * (cfg.head_dim + 2), "decode.part"),  # (heads, blocks, hd+2)
            "aq": dev.buffer(size=cfg.intermediate_size, label="decode.aq"),  # (ff,) int8
            "ad": dev.buffer(size=cfg.intermediate_size // 32 * 8, label="decode.ad"),  # (ff/32,) vec2<f32>
        }
        self.sync = dev.buffer(size=16, label="decode.sync")  # counter, error flag, discovery words

    # ---- pipelines and ops --------------------------------------------------------------
    def row_threads(self) -> tuple[int, bool]:
        """Threads per weight row, and whether a row's threads share a subgroup (then the row sums
        need no workgroup barrier): 16 (H200: 1B 526 vs 474 t/s, 8B 205 vs 189 at 32), at most a
        subgroup."""
        dev = self.dev
        tpr = 16
        if dev.has_subgroups:
            return min(tpr, dev.subgroup_size), True
        return tpr, False

    def consts(self, persistent: bool, workgroups: int = 256) -> dict:
        cfg, m, dev = self.model.config, self.model, self.dev
        widest = max(cfg.hidden_size, cfg.intermediate_size, cfg.q_dim)
        tpr, sg_rows = self.row_threads()
        tpr = self.config.get("TPR", tpr)
        if dev.has_subgroups and tpr > dev.subgroup_size:
            raise ValueError(f"TPR {tpr} exceeds the subgroup size {dev.subgroup_size}")
        wg = self.config.get("WG", WG)
        # 8 loads in flight per lane on GPUs (H200: a 16-load batch, since removed, was slower on
        # the 8B, 267 vs 287 t/s, and level on the 1B); 4 on CPU adapters, where the longer loops
        # make lavapipe compile the kernel 2x longer (tiny shape: 11 s at 4, 24 s at 8)
        unroll = self.config.get("UNROLL", 4 if dev.is_cpu else 8)
        split = {}
        if self.config.get("SPLIT", True) and "TPR" not in self.config:
            # per weight: (rows, chunks of 32 along K, fewest threads a row: a gate/up pass covers
            # at most one block of 64 rows)
            d, ff, qd = cfg.hidden_size, cfg.intermediate_size, cfg.q_dim
            shapes = {"qkv": (m.heads.qkv_dim, d // 32, 1), "o": (d, qd // 32, 1), "gu": (2 * ff, d // 32, wg // 64),
                      "dn": (d, ff // 32, 1), "hd": (cfg.vocab_size, d // 32, 1)}
            for k, (rows, chunks, lo) in shapes.items():
                split[f"TPR_{k}"] = row_split(rows, chunks, workgroups, tpr, unroll, min(lo, tpr), wg)
        return {**dict(WG=wg, TPR=tpr, SG_ROWS=sg_rows, D=cfg.hidden_size, FF=cfg.intermediate_size, NH=cfg.num_attention_heads,
                    NKV=cfg.num_key_value_heads, HD=cfg.head_dim, V=cfg.vocab_size, NL=cfg.num_hidden_layers,
                    MAXSEQ=m.max_seq, GS=self.group_size, EPS=float(cfg.rms_norm_eps), BLOCK=self.block,
                    CSTRIDE=m.kv.stride // (4 * np.dtype(dev.act_dtype).itemsize), XS4=widest // 16, XD=widest // 32,
                    PERSISTENT=persistent, COHERENT=dev.has_coherent, SUBGROUPS=dev.has_subgroups,
                    HAS_OFFSETS=self.has_offsets, QKV_BIAS=self.qkv_bias, O_BIAS=self.o_bias, QK_NORM=cfg.qk_norm,
                    HEAD_W8=self.head_w8, HEAD_OFFSETS=self.head_offsets, SPIN=self.spin, UNROLL=unroll),
                **split, **{k: v for k, v in self.config.items() if k not in ("WG", "TPR", "SPLIT")}}

    def _op(self, persistent: bool, first: int, last: int, workgroups: int, split_for: int | None = None) -> Op:
        """split_for: the workgroup count the rows are split for (default: workgroups)."""
        m, dev = self.model, self.dev
        pipe = dev.pipeline("decode", consts=self.consts(persistent, split_for or workgroups),
                            types={"act_t": dev.act_type, "cache_t": dev.act_type, "emb_t": m.embedding.dtype})
        rng = dev.uniform([first, last], label="decode.range")
        binds = {**self.w, **self.scratch, "S": self.step, "emb": m.embedding.t0, "cs": m.rope,
                 "kc": m.kv.k[0][0], "vc": m.kv.v[0][0], "logits": m.buf.logits, "sync": self.sync}
        op = Op(pipe, dev.bind_group(pipe, {"R": rng, **binds}), (workgroups, 1, 1), keep=[rng])
        return op

    def ops(self, schedule: str) -> list[Op]:
        """The dispatches of one step: one (persistent) or one per phase (phased)."""
        if schedule not in self._ops:
            if schedule == "persistent":
                if self.workgroups is None:
                    self.workgroups = self.launch_workgroups()
                self._grid = self.workgroups
                self._ops[schedule] = [self._op(True, 0, self.n_phases, self.workgroups)]
            elif schedule == "phased":
                n = self.workgroups or (4 if self.dev.is_cpu else 264)
                self._ops[schedule] = [self._op(False, p, p + 1, n) for p in range(self.n_phases)]
            else:
                raise ValueError(f"unknown decode schedule {schedule!r}")
        return self._ops[schedule]

    def launch_workgroups(self) -> int:
        """Workgroups of a persistent launch: half of what the discovery counts resident, at most
        256. On an H200 (BENCHMARKS.md) a launch of the full count timed out its barrier (1B: 528,
        135M: 792), and 528 sometimes did even where 1056 were counted; 264 and fewer always
        held. tg128 by workgroups: 1B 707 / 626 t/s at 132 / 264, 8B 246 / 232 / 183 at 132 / 264
        / 66, 135M 755 / 725 / 747 at 132 / 264 / 396 (discovered: 528, 264, 792)."""
        return max(1, min(256, self.resident_workgroups() // 2))

    def resident_workgroups(self, launch: int = 4096) -> int:
        """How many workgroups of the persistent pipeline run at once on this adapter (discover()
        in decode.wgsl): a persistent launch must not exceed it."""
        op = self._op(True, 0xFFFFFFFF, 0, launch, split_for=256)
        self.dev.write(self.sync, np.zeros(4, np.uint32))
        submit(self.dev, [op])
        n = int(self.dev.read(self.sync, np.uint32, (4,))[3])
        self.dev.write(self.sync, np.zeros(4, np.uint32))  # the next step's barriers count from 0
        return max(1, n)

    def phase_profile(self, reps: int = 5) -> list[tuple[str, float, int]]:
        """GPU time of each kind of phase inside the persistent dispatch: the dispatch over phases
        [0, p) timed for p = 1 .. 10 and the whole step (timestamps, median of reps); a phase's time
        is the difference, so it includes its grid barrier and excludes the launch. -> (kind,
        seconds per token over all layers, phases per token), as bench's profile rows."""
        import wgpu
        dev = self.dev
        if self.workgroups is None:
            self.workgroups = self.launch_workgroups()
        ends = sorted({*range(1, min(self.n_phases, 2 * PHASES_PER_LAYER) + 1), self.n_phases - 1, self.n_phases})
        qs = dev.device.create_query_set(type=wgpu.QueryType.timestamp, count=2)
        res = dev.buffer(size=16, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC,
                         binding=False, label="timestamps")
        t = {}
        for p in ends:
            op, runs = self._op(True, 0, p, self.workgroups), []
            for _ in range(reps):
                enc = dev.device.create_command_encoder()
                enc.clear_buffer(self.sync, 0, 16)
                cpass = enc.begin_compute_pass(timestamp_writes={
                    "query_set": qs, "beginning_of_pass_write_index": 0, "end_of_pass_write_index": 1})
                op.record(cpass)
                cpass.end()
                enc.resolve_query_set(qs, 0, 2, res, 0)
                dev.queue.submit([enc.finish()])
                a, b = dev.read(res, np.uint64, (2,)).astype(np.float64)
                runs.append(max(b - a, 0) * 1e-9)
            t[p] = float(np.median(runs))
        L = self.model.config.num_hidden_layers
        per = {k: [] for k in PHASE_KINDS}
        for p in ends:
            if p - 1 in t and p < self.n_phases and p <= 2 * PHASES_PER_LAYER:
                per[PHASE_KINDS[(p - 1) % PHASES_PER_LAYER]].append(t[p] - t[p - 1])
        rows = [(f"phase {k}", L * float(np.mean(v)), L) for k, v in per.items() if v]
        rows.append(("phase head", t[self.n_phases] - t[self.n_phases - 1], 1))
        rows.append(("phase 0 + launch", t[1], 1))
        return sorted(rows, key=lambda r: -r[1])

    def barriers_held(self, sync: np.ndarray) -> bool:
        """After a persistent step: no spin ran out, and every workgroup passed every barrier (the
        counter is exact; on lavapipe a spin was seen to end early without either)."""
        return sync[1] == 0 and sync[0] == (self.n_phases - 1) * self._grid

    def prepare(self, pos: int, token: int) -> None:
        """Before a step: this token, its position, the attention blocks, and a zeroed barrier counter."""
        nb = pos // self.block + 1
        self.dev.write(self.step, np.array([pos, token, nb, 0], np.uint32))
        self.dev.write(self.sync, np.zeros(4, np.uint32))
