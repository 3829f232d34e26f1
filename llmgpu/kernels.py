"""Thin Python wrappers over the WGSL kernels: weights on the GPU and recorded dispatches.

The q4gsw linear is the centre: `Q4Linear` holds one weight on the GPU (split by rows where
it exceeds the adapter's storage-binding limit) and `linear()` records y = x · Wᵀ as `Op`s —
the cooperative GEMV when M == 1 (decode), the register-tiled GEMM when M > 1 (prefill).
An `Op` is a pipeline, a bind group and a grid, built once and recorded as often as needed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import fastpath
from .gpu import Device, Pipeline
from .quant import Q4Tensor, Q8Tensor


@dataclass
class Op:
    """One dispatch: built once, recorded into any number of compute passes."""

    pipe: Pipeline
    bind_group: object
    grid: tuple[int, int, int]
    keep: list = field(default_factory=list, repr=False)  # buffers the bind group uses

    @property
    def name(self) -> str:
        return self.pipe.name

    def record(self, cpass) -> None:
        cpass.set_pipeline(self.pipe.pipeline)
        cpass.set_bind_group(0, self.bind_group)
        cpass.dispatch_workgroups(*self.grid)


def encode(dev: Device, ops: list[Op], raw: list | None = None, after=None):
    """A command buffer with ops in one compute pass (raw: fastpath.compile_ops(ops), computed
    once for ops recorded often); after(encoder) may append copies behind the pass."""
    enc = dev.device.create_command_encoder()
    cpass = enc.begin_compute_pass()
    fastpath.record(cpass, ops, raw)
    cpass.end()
    if after is not None:
        after(enc)
    return enc.finish()


def submit(dev: Device, ops: list[Op], sync: bool = False, raw: list | None = None) -> None:
    """Record ops into one compute pass and submit (optionally wait for the GPU)."""
    dev.queue.submit([encode(dev, ops, raw)])
    if sync:
        dev.sync()


def act_type(dev: Device) -> str:
    return "f16" if dev.has_f16 else "f32"


# ---- the q4gsw linear --------------------------------------------------------------------

@dataclass
class _Slice:
    n0: int
    n: int
    qweight: object  # (n, K/8) u32
    scales: object  # (n, K/GS) scale_t
    offsets: object  # (n, K/GS) f32, or a 16-byte dummy
    bias: object = None  # (n,) f32, or None


class Q4Linear:
    """A q4gsw weight (N, K) resident on the GPU, split by rows to respect the binding limit."""

    def __init__(self, dev: Device, t: Q4Tensor | Q8Tensor, label: str = "linear",
                 bias: np.ndarray | None = None):
        self.dev = dev
        self.N, self.K = t.shape
        self.w8 = isinstance(t, Q8Tensor)  # int8 weights (GEMV only)
        self.group_size = t.group_size
        self.has_offsets = t.offsets is not None
        self.has_bias = bias is not None
        if bias is not None and np.shape(bias) != (self.N,):
            raise ValueError(f"{label}: bias of shape {np.shape(bias)} for a weight with {self.N} rows")
        self.label = label
        self.nbytes = t.qweight.nbytes + t.scales.size * np.dtype(dev.act_dtype).itemsize
        if t.offsets is not None:
            self.nbytes += t.offsets.nbytes
        row_bytes = max(t.qweight[0].nbytes, t.scales[0].size * 4)
        # Rows per slice: within the binding limit, and a multiple of 256 so that every slice's
        # output offset stays aligned for any adapter's storage-offset alignment.
        per = max(256, (dev.max_binding // row_bytes) // 256 * 256)
        scales = t.scales.astype(dev.act_dtype)
        self.slices: list[_Slice] = []
        for n0 in range(0, self.N, per):
            n1 = min(self.N, n0 + per)
            off = (dev.buffer(t.offsets[n0:n1], label=f"{label}.offsets[{n0}:{n1}]")
                   if t.offsets is not None else dev.buffer(size=16, label=f"{label}.no_offsets"))
            self.slices.append(_Slice(
                n0, n1 - n0,
                dev.buffer(t.qweight[n0:n1], label=f"{label}.qweight[{n0}:{n1}]"),
                dev.buffer(scales[n0:n1], label=f"{label}.scales[{n0}:{n1}]"),
                off,
                dev.buffer(np.asarray(bias[n0:n1], np.float32), label=f"{label}.bias") if bias is not None else None))


def gemv_snippets(R: int, q8: bool = False, w8: bool = False, silu: bool = False) -> dict:
    """Unrolled code for q4gsw_gemv.wgsl: R named accumulators and the chunk's activations."""
    row = lambda r: f"min(row0 + {r}u, N - 1u)"  # noqa: E731  (clamped: loads stay in bounds)
    if w8:
        body = [f"        let q{r} = w[2u * ({row(r)} * nch + c)];\n        let p{r} = w[2u * ({row(r)} * nch + c) + 1u];"
                for r in range(R)]
    else:
        body = [f"        let q{r} = w[{row(r)} * nch + c];" for r in range(R)]
    body += [f"        let gi{r} = {row(r)} * gpr + g;" for r in range(R)]
    if w8 and q8:
        body += ["        let xa = x[2u * c];", "        let xb2 = x[2u * c + 1u];", "        let dx = xd[c];"]
        body += [f"        acc{r} += f32(sc[gi{r}]) * dx.x * f32(idot32w(q{r}, p{r}, xa, xb2));" for r in range(R)]
    elif w8:
        body += [f"        let x{i} = vec4<f32>(x[xb + {i}u]);" for i in range(8)]
        for r in range(R):
            body.append(f"        acc{r} += f32(sc[gi{r}]) * ((fdot8w(q{r}.x, q{r}.y, x0, x1) + fdot8w(q{r}.z, q{r}.w, x2, x3))"
                        f" + (fdot8w(p{r}.x, p{r}.y, x4, x5) + fdot8w(p{r}.z, p{r}.w, x6, x7)));")
    elif q8:  # int8 activations: integer dot products, one float multiply per row-chunk
        body += ["        let xa = x[2u * c];", "        let xb2 = x[2u * c + 1u];", "        let dx = xd[c];"]
        for r in range(R):
            body.append(f"        acc{r} += f32(sc[gi{r}]) * dx.x * f32(idot32(q{r}, xa, xb2) - i32(dx.y));")
            body.append(f"        if (HAS_OFFSETS) {{ acc{r} += off[gi{r}] * dx.x * (dx.y / 8.0); }}")
    else:
        body += [f"        let x{i} = vec4<f32>(x[xb + {i}u]);" for i in range(8)]
        body += ["        let xs4 = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));",
                 "        let xsum = xs4.x + xs4.y + xs4.z + xs4.w;"]
        for r in range(R):
            body.append(f"        let d{r} = (dot8(q{r}.x, x0, x1) + dot8(q{r}.y, x2, x3)) + "
                        f"(dot8(q{r}.z, x4, x5) + dot8(q{r}.w, x6, x7));")
            body.append(f"        acc{r} += f32(sc[gi{r}]) * (16.0 * d{r} - 24.0 * xsum);")
            body.append(f"        if (HAS_OFFSETS) {{ acc{r} += off[gi{r}] * xsum; }}")
    out = []
    for r in range(R if silu else 0):  # the workgroup's 64 sums to workgroup memory
        out += ["        {", "            var s = 0.0;",
                f"            for (var i = 0u; i < TPR; i += step) {{ s += red[{r}u * WG + lid + i]; }}",
                f"            ys[rg * R + {r}u] = s;", "        }"]
    for r in range(0 if silu else R):
        out += [f"        if (row0 + {r}u < N) {{",
                "            var s = 0.0;",
                f"            for (var i = 0u; i < TPR; i += step) {{ s += red[{r}u * WG + lid + i]; }}",
                "//#if HAS_BIAS",
                f"            s += bias[row0 + {r}u];",
                "//#endif",
                f"            if (RESIDUAL) {{ s += f32(y[row0 + {r}u]); }}",
                f"            y[row0 + {r}u] = act_t(s);",
                "        }"]
    lines = lambda f: "\n".join(f(r) for r in range(R))  # noqa: E731
    return {
        "DECL": lines(lambda r: f"    var acc{r} = 0.0;"),
        "BODY": "\n".join(body),
        "SGADD": lines(lambda r: f"            acc{r} = subgroupAdd(acc{r});"),
        "SGXOR": lines(lambda r: f"                acc{r} += subgroupShuffleXor(acc{r}, o);"),
        "RED": lines(lambda r: f"    red[{r}u * WG + lid] = acc{r};"),
        "OUT": "\n".join(out),
    }


@dataclass
class Q8Act:
    """Activations quantized to int8 per 32 values, the Q8 GEMV's input (quantize_q8.wgsl)."""

    xq: object  # (M, K/4) u32: packed int8, even elements' bytes then odd, per 8 values
    xd: object  # (M, K/32) vec2<f32>: (scale, 8 * sum of the block's int8 values)
    K: int
    M: int = 1


def q8_act(dev: Device, K: int, M: int = 1, label: str = "q8") -> Q8Act:
    return Q8Act(dev.buffer(size=M * K, label=f"{label}.xq"),
                 dev.buffer(size=M * (K // 32) * 8, label=f"{label}.xd"), K, M)


def quantize_q8(dev: Device, x, q: Q8Act, act: str | None = None) -> Op:
    """Record x (M, K) → q (int8 per 32). x: a GPU buffer of `act` (default device) type."""
    pipe = dev.pipeline("quantize_q8", consts={"WG": 64}, types={"act_t": act or act_type(dev)})
    params = dev.uniform([q.M, q.K], label="quantize_q8.params")
    bg = dev.bind_group(pipe, [params, x, q.xq, q.xd])
    return Op(pipe, bg, dev.grid(-(-q.M * (q.K // 32) // 64)), keep=[params])


def gemv_config(dev: Device, K: int, N: int = 0) -> dict:
    """Workgroup shape of the GEMV for an (N, K) weight, from `llmgpu bench kernels --sweep`
    (BENCHMARKS.md): on a GPU, one row per row group with 32 threads for short rows and 64 for
    rows of 4096 and more; very tall weights (lm_head) 2 rows. On a CPU adapter (lavapipe),
    16 threads and 4 rows (its subgroups are 8 wide)."""
    if dev.is_cpu:
        return dict(WG=128, TPR=16, R=4)
    if N >= 65536:
        return dict(WG=128, TPR=32, R=2)
    if K >= 4096:
        return dict(WG=128, TPR=64, R=1)
    return dict(WG=256, TPR=32, R=1)


def gemm_snippets(BM: int, BN: int, TM: int, TN: int) -> dict:
    """Unrolled code for q4gsw_gemm.wgsl: TM×(TN/4) named vec4 accumulators, and the
    register-prefetch loads/stores of one 32-wide k tile (BM·8/WG activation vec4s and
    BN·4/WG weight words per invocation)."""
    WG = (BM // TM) * (BN // TN)
    na, nw = BM * 8 // WG, BN * 4 // WG
    if BM * 8 % WG or BN * 4 % WG:
        raise ValueError(f"GEMM tile {BM}x{BN} with {TM}x{TN} per thread: tiles do not split evenly")
    decl, mac, store = [], [], []
    for i in range(TM):
        for j in range(TN // 4):
            decl.append(f"    var c{i}_{j} = vec4<f32>(0.0);")
    decl += [f"    var ra{i}: vec4<f32>;" for i in range(na)]
    decl += [f"    var rw{i}: vec3<u32>;" for i in range(nw)]
    load = lambda k: [f"        ra{i} = load_a(m0, {k}, lid + {i}u * WG);" for i in range(na)] + \
        [f"        rw{i} = load_w(n0, {k}, lid + {i}u * WG);" for i in range(nw)]  # noqa: E731
    tile = [f"        store_a(lid + {i}u * WG, ra{i});" for i in range(na)] + \
        [f"        store_w(lid + {i}u * WG, rw{i});" for i in range(nw)]
    for j in range(TN // 4):
        mac.append(f"            let b{j} = Ws[bb + {j}u * TX];")
    for i4 in range(TM // 4):
        mac.append(f"            let a{i4} = As[ab + {i4}u * TY];")
        for ii, comp in enumerate("xyzw"):
            i = 4 * i4 + ii
            for j in range(TN // 4):
                mac.append(f"            c{i}_{j} = fma(vec4<f32>(a{i4}.{comp}), b{j}, c{i}_{j});")
    for i in range(TM):
        m = f"m0 + 4u * (ty + {i // 4}u * TY) + {i % 4}u"
        for j in range(TN // 4):
            n = f"n0 + 4u * (tx + {j}u * TX)"
            for jj, comp in enumerate("xyzw"):
                store.append(f"    put({m}, {n} + {jj}u, c{i}_{j}.{comp});")
    return {"DECL": "\n".join(decl), "MAC": "\n".join(mac), "STORE": "\n".join(store),
            "LOAD0": "\n".join(load("0u")), "LOADN": "\n".join(load("kn")), "STORE_TILE": "\n".join(tile)}


def gemm_config(dev: Device, M: int, N: int = 1 << 30) -> dict:
    """GEMM tile, from `llmgpu bench kernels --sweep` on an H100 (BENCHMARKS.md): 128×128 with
    8×4 per thread when that still makes 128+ tiles (21–24 TFLOP/s at M = 512 on Llama-3.1-8B's
    shapes); 128×64 with 4×8 when fewer (16.5 against 11.5 on 2048-wide outputs at M = 512);
    64×64 with 4×4 for short inputs, where large tiles would leave the GPU idle."""
    if M >= 256 and -(-M // 128) * -(-N // 128) >= 128:
        cfg = dict(BM=128, BN=128, TM=8, TN=4)
    elif M >= 128:
        cfg = dict(BM=128, BN=64, TM=4, TN=8)
    else:
        cfg = dict(BM=64, BN=64, TM=4, TN=4)
    cfg["WG"] = (cfg["BM"] // cfg["TM"]) * (cfg["BN"] // cfg["TN"])
    return cfg


def silu_gemv_config(dev: Device, K: int = 0) -> dict:
    """A GEMV shape with 64 rows per workgroup, as the fused gate/up + SiLU epilogue needs; by K,
    from the H100 sweep in BENCHMARKS.md (28672×4096: 21.9 µs, 97 % of the read bandwidth)."""
    if dev.is_cpu:
        return dict(WG=128, TPR=16, R=8)
    if K >= 4096:
        return dict(WG=512, TPR=64, R=8)
    if K >= 2048:
        return dict(WG=256, TPR=32, R=8)
    return dict(WG=256, TPR=16, R=4)


def linear(dev: Device, lin: Q4Linear, x, y, M: int, *, residual: bool = False,
           config: dict | None = None, force: str | None = None, silu: bool = False) -> list[Op]:
    """Record y(M, N) = x(M, K) · Wᵀ (+ y when residual). x, y: GPU buffers of act dtype.

    M == 1 routes to the GEMV, M > 1 to the GEMM (`force` = "gemv"/"gemm" overrides, for
    benchmarks). Returns one Op per row slice of the weight. silu: the weight is a gate/up pair
    interleaved in blocks of 32 rows and y is a Q8Act of N/2 values that receives silu(gate)·up
    (GEMV, one slice, 64 rows per workgroup).
    """
    kind = force or ("gemv" if M == 1 else "gemm")
    if kind == "gemv" and M != 1:
        raise ValueError("the GEMV computes one row of activations (M == 1)")
    config = dict(config) if config else None
    t = (config or {}).pop("ACT", None) or act_type(dev)  # activations' type (f32 always works)
    scale_t = act_type(dev)
    common = dict(GS=lin.group_size, HAS_OFFSETS=lin.has_offsets, RESIDUAL=residual, HAS_BIAS=lin.has_bias)
    ops = []
    q8 = isinstance(x, Q8Act)
    if (q8 or lin.w8) and kind != "gemv":
        raise ValueError("int8 activations and int8 weights go through the GEMV only (M == 1)")
    if silu and (kind != "gemv" or len(lin.slices) != 1 or lin.N % 64 or not isinstance(y, Q8Act)):
        raise ValueError("the fused SiLU epilogue needs the GEMV, one weight slice, N % 64 == 0, int8 output")
    for s in lin.slices:
        if kind == "gemv":
            cfg = dict(config or (silu_gemv_config(dev, lin.K) if silu else gemv_config(dev, lin.K, lin.N)))
            if silu and cfg["WG"] // cfg["TPR"] * cfg["R"] != 64:
                raise ValueError(f"the fused SiLU epilogue needs 64 rows per workgroup, not {cfg}")
            cfg["SUBGROUPS"] = dev.has_subgroups
            cfg["SILU"] = silu
            cfg["Q8"] = q8
            cfg["W8"] = lin.w8
            pipe = dev.pipeline("q4gsw_gemv", consts={**cfg, **common},
                                types={"act_t": t, "scale_t": scale_t}, snippets=gemv_snippets(cfg["R"], q8, lin.w8, silu))
            rows_per_wg = cfg["WG"] // cfg["TPR"] * cfg["R"]
            params = dev.uniform([s.n, lin.K], label=f"{lin.label}.gemv.params")
            esz = 2 if t == "f16" else 4
            if silu:
                ybind = y.xq
            else:
                ybuf, yoff = (y[0], y[1]) if isinstance(y, tuple) else (y, 0)  # (buffer, byte offset, size)
                ybind = (ybuf, yoff + s.n0 * esz, max(16, -(-s.n * esz // 4) * 4))
            grid = dev.grid(-(-s.n // rows_per_wg))
        else:
            cfg = dict(config or gemm_config(dev, M, lin.N))
            cfg.pop("BK", None)
            cfg.setdefault("WG", (cfg["BM"] // cfg["TM"]) * (cfg["BN"] // cfg["TN"]))
            pipe = dev.pipeline("q4gsw_gemm", consts={**cfg, **common},
                                types={"act_t": t, "scale_t": scale_t},
                                snippets=gemm_snippets(cfg["BM"], cfg["BN"], cfg["TM"], cfg["TN"]))
            params = dev.uniform([M, s.n, lin.K, lin.N, s.n0], label=f"{lin.label}.gemm.params")
            ybind = y  # may be (buffer, byte offset, size)
            grid = (-(-s.n // cfg["BN"]), -(-M // cfg["BM"]), 1)
            if grid[1] > dev.max_groups:
                raise ValueError(f"M={M} is too many rows for one GEMM dispatch; prefill in chunks")
        binds = {0: params, 1: x.xq if q8 else x, 2: s.qweight, 3: s.scales, 4: s.offsets, 5: ybind}
        if lin.w8:
            del binds[4]  # int8 weights have no offsets; the shader does not declare them
        if q8:
            binds[6] = x.xd
        if lin.has_bias:
            binds[7] = s.bias
        if silu:
            binds[8] = y.xd
        bg = dev.bind_group(pipe, binds)
        ops.append(Op(pipe, bg, grid, keep=[params]))
    return ops


def run_linear(dev: Device, lin: Q4Linear, x: np.ndarray, *, residual: np.ndarray | None = None,
               poison: bool = True, q8: bool = False, **kw) -> tuple[np.ndarray, list[Op]]:
    """Convenience for tests and one-off use: upload x (M, K), run, read y (M, N) back."""
    x = np.atleast_2d(np.asarray(x))
    M, K = x.shape
    if K != lin.K:
        raise ValueError(f"x has {K} columns but the weight has K={lin.K}")
    dt = dev.act_dtype
    xb = dev.buffer(x.astype(dt), label="x")
    if residual is not None:
        y0 = residual.astype(dt)
    elif poison:
        y0 = np.full((M, lin.N), np.nan, dtype=dt)
    else:
        y0 = np.zeros((M, lin.N), dtype=dt)
    yb = dev.buffer(y0, label="y")
    pre = []
    if q8:
        xq = q8_act(dev, K, M)
        pre, xb = [quantize_q8(dev, xb, xq)], xq
    ops = linear(dev, lin, xb, yb, M, residual=residual is not None, **kw)
    submit(dev, pre + ops)
    return dev.read(yb, dt, (M, lin.N)).astype(np.float32), ops
